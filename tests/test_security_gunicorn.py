"""Authentication under the production server (``cds-service serve``: gunicorn, several worker processes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from support.hookcalls import SERVICE_IDS, hook_request
from support.live import free_port, serve
from support.tokens import JsonServer, Scenario, jwks, make_key

pytestmark = pytest.mark.slow

ISS = "https://ehr.example.org"
PUBLIC = "https://cds.example.org"
URL = f"{PUBLIC}/cds-services/{SERVICE_IDS['patient-view']}"


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[JsonServer]:
    server = JsonServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, jwks_server: JsonServer) -> Iterator[tuple[str, Scenario]]:
    key = make_key("RS384")
    jwks_server.documents["/jwks.json"] = jwks(key)
    jku = jwks_server.url("/jwks.json")
    env = {
        "CDS_TRUSTED_ISSUERS": json.dumps([{"iss": ISS, "jku_allowlist": [jku]}]),
        "CDS_PUBLIC_BASE_URL": PUBLIC,
    }
    with serve(tmp_path_factory.mktemp("gunicorn-auth"), env=env, workers=3) as base:
        yield base, Scenario(ISS, URL, jku, jku, key, key)


def post(base: str, authorization: str) -> int:
    url = f"{base}/cds-services/{SERVICE_IDS['patient-view']}"
    headers = {"Authorization": authorization}
    return requests.post(url, json=hook_request("patient-view"), headers=headers, timeout=10).status_code


def test_one_token_sent_to_all_workers_at_once_is_accepted_once(guarded: tuple[str, Scenario]) -> None:
    base, scenario = guarded
    header = scenario.bearer()
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(lambda _: post(base, header), range(12)))
    assert sorted(statuses) == [200] + [401] * 11


def test_fresh_tokens_are_accepted_by_every_worker(guarded: tuple[str, Scenario], jwks_server: JsonServer) -> None:
    base, scenario = guarded
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda _: post(base, scenario.bearer()), range(24)))
    assert statuses == [200] * 24
    assert 1 <= jwks_server.hits["/jwks.json"] <= 3  # at most one fetch per worker process


def test_serve_refuses_an_open_public_bind(tmp_path: Path) -> None:
    environment = {**os.environ, "CDS_DATA_DIR": str(tmp_path / "data")}
    environment.pop("CDS_TRUSTED_ISSUERS", None)
    environment.pop("CDS_ALLOW_SANDBOX_ISSUER", None)
    done = subprocess.run(
        [sys.executable, "-m", "cds_service.server.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in done.stderr
