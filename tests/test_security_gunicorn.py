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
from prometheus_client.parser import text_string_to_metric_families
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


def serve_on_every_interface(tmp_path: Path, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``cds-service serve --host 0.0.0.0`` with ``environment``, which is expected to refuse and exit."""
    return subprocess.run(
        [sys.executable, "-m", "cds_service.server.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_refuses_an_open_public_bind(tmp_path: Path) -> None:
    environment = {**os.environ, "CDS_DATA_DIR": str(tmp_path / "data")}
    environment.pop("CDS_TRUSTED_ISSUERS", None)
    environment.pop("CDS_ALLOW_SANDBOX_ISSUER", None)
    done = serve_on_every_interface(tmp_path, environment)
    assert done.returncode == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in done.stderr


# --- the address clients call: never what a client's headers claim -----------------------------------------------


def trusting(jwks_server: JsonServer, **env: str) -> tuple[dict[str, str], Scenario]:
    """Environment for a `serve` trusting a fresh key served by ``jwks_server``, and a scenario signing with it."""
    key = make_key("ES384")
    jwks_server.documents[f"/{key.kid}/jwks.json"] = jwks(key)
    jku = jwks_server.url(f"/{key.kid}/jwks.json")
    environment = {"CDS_TRUSTED_ISSUERS": json.dumps([{"iss": ISS, "jku_allowlist": [jku]}]), **env}
    return environment, Scenario(ISS, "", jku, jku, key, key)


def status(url: str, scenario: Scenario, aud: str, **headers: str) -> int:
    authorization = {"Authorization": scenario.bearer(aud=aud)}
    return requests.get(url, headers={**headers, **authorization}, timeout=10).status_code


def test_forwarded_headers_from_a_peer_that_is_no_configured_proxy_are_ignored(
    tmp_path: Path, jwks_server: JsonServer
) -> None:
    """No public_base_url on loopback: aud is the bound address. gunicorn's own default would believe
    X-Forwarded-Proto from 127.0.0.1 (this test's client); forwarded_allow_ips defaults to no one."""
    env, scenario = trusting(jwks_server)
    with serve(tmp_path, env=env, workers=1) as base:
        url = base + "/cds-services"
        https = base.replace("http://", "https://") + "/cds-services"
        assert status(url, scenario, https, **{"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "on"}) == 401
        assert status(url, scenario, "http://other.example.org/cds-services", Host="other.example.org") == 401
        assert status(url, scenario, url, Host="other.example.org", **{"X-Forwarded-Proto": "https"}) == 200


def test_forwarded_proto_is_believed_from_a_configured_proxy(tmp_path: Path, jwks_server: JsonServer) -> None:
    env, scenario = trusting(jwks_server, CDS_FORWARDED_ALLOW_IPS='["127.0.0.1"]')
    with serve(tmp_path, env=env, workers=1) as base:
        url = base + "/cds-services"
        https = base.replace("http://", "https://") + "/cds-services"
        assert status(url, scenario, https, **{"X-Forwarded-Proto": "https"}) == 200
        assert status(url, scenario, https) == 401


def test_metrics_bind_serves_the_scraper_apart_from_the_service(tmp_path: Path, jwks_server: JsonServer) -> None:
    """With authentication on, /metrics on the main port needs a token; metrics_bind serves it, for the
    scraper, on its own address (prometheus-client's server in gunicorn's master), adding up every worker."""
    metrics_port = free_port()
    env, scenario = trusting(jwks_server, CDS_METRICS_BIND=f"127.0.0.1:{metrics_port}")
    with serve(tmp_path, env=env, workers=2) as base:
        url = f"{base}/cds-services/{SERVICE_IDS['patient-view']}"
        for _ in range(4):
            headers = {"Authorization": scenario.bearer(aud=url)}
            answer = requests.post(url, json=hook_request("patient-view"), headers=headers, timeout=10)
            assert answer.status_code == 200, answer.text
        assert requests.get(base + "/metrics", timeout=10).status_code == 404
        scraped = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    assert scraped.status_code == 200
    counts = [
        sample.value
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
        if sample.name == "cds_request_duration_seconds_count"
        and sample.labels["endpoint"] == "hook_calls.call_service"
    ]
    assert sum(counts) == 4
    anomaly = {  # read from the database by the master process: every rule that runs, none flagged
        sample.labels["rule"]: sample.value
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
        if sample.name == "cds_rule_firing_rate_anomaly"
    }
    assert anomaly and set(anomaly.values()) == {0.0} and "diuretic-hypokalemia" in anomaly


TRUSTED = json.dumps([{"iss": ISS, "jwks_url": "https://ehr.example.org/jwks.json"}])
PLAIN_HTTP_KEYS = json.dumps([{"iss": ISS, "jwks_url": "http://ehr.example.org/jwks.json"}])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CDS_TRUSTED_ISSUERS": TRUSTED}, "refusing to serve on 0.0.0.0 without public_base_url"),
        (
            {"CDS_TRUSTED_ISSUERS": PLAIN_HTTP_KEYS, "CDS_PUBLIC_BASE_URL": PUBLIC},
            "jwks_url = 'http://ehr.example.org/jwks.json': must be an https URL (http only on loopback)",
        ),
        (
            {"CDS_TRUSTED_ISSUERS": TRUSTED, "CDS_PUBLIC_BASE_URL": PUBLIC, "CDS_FORWARDED_ALLOW_IPS": '["*"]'},
            "forwarded_allow_ips[0] = '*': not an IP address or network",
        ),
        (
            {"CDS_TRUSTED_ISSUERS": TRUSTED, "CDS_PUBLIC_BASE_URL": PUBLIC, "CDS_METRICS_BIND": "9464"},
            "metrics_bind = '9464': not host:port",
        ),
    ],
    ids=["no public_base_url", "http jwks_url", "trust every proxy", "metrics_bind without host"],
)
def test_serve_refuses_unsafe_settings_in_one_line(tmp_path: Path, env: dict[str, str], message: str) -> None:
    done = serve_on_every_interface(tmp_path, {**os.environ, "CDS_DATA_DIR": str(tmp_path / "data"), **env})
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cds-service: ") and message in last, done.stderr
