"""The ``fhir_server`` fixture: Medplum's FHIR engine (tests/fhir_server/server.mjs) on a free loopback port.

One Node process serves the whole session; each test gets it emptied (no data, no token, no faults, an empty
request log). ``npm ci`` runs once when tests/fhir_server/node_modules is missing, so a fresh clone works.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

SERVER_DIR = Path(__file__).resolve().parent.parent / "fhir_server"
START_SECONDS = 30
BATCH_SIZE = 1000

__all__ = ["CountingServer", "FhirTestServer", "counting_server", "fhir_server", "fhir_server_process"]


class FhirTestServer:
    """A running test FHIR server, with helpers to load data and to make it misbehave."""

    def __init__(self, base_url: str, control_url: str):
        self.base_url = base_url
        self.control_url = control_url
        self._http = requests.Session()

    def _control(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        resp = self._http.post(f"{self.control_url}/{path}", json=dict(body or {}), timeout=10)
        resp.raise_for_status()
        return resp.json()

    def reset(self) -> None:
        """Empty the repository; clear the token, faults and request log."""
        self._control("reset")

    def set_token(self, token: str | None) -> None:
        """Require ``Authorization: Bearer <token>`` on FHIR requests (None: an open server)."""
        self._control("token", {"token": token})

    def smart(
        self, clients: Mapping[str, Mapping[str, Any]], *, expires_in: int = 300, token_endpoint: bool = True,
        permission: str = "v1",
    ) -> None:
        """Require SMART Backend Services tokens from its own token endpoint, granted to ``clients`` (client id ->
        JWKS of its public keys) for ``expires_in`` seconds; ``token_endpoint=False`` leaves the endpoint out of
        the smart-configuration, ``permission`` is the capability it lists (``v1``: .read scopes, ``v2``: .rs)."""
        self._control("smart", {"clients": dict(clients), "expires_in": expires_in,
                                "token_endpoint": token_endpoint, "permission": permission})

    def hang(self, seconds: float, count: int = 1_000_000) -> None:
        """Hold the next ``count`` FHIR requests for ``seconds`` before answering them."""
        self._control("fault", {"kind": "hang", "seconds": seconds, "count": count})

    def fail(self, status: int = 503, count: int = 1) -> None:
        """Answer the next ``count`` FHIR requests with ``status`` and an OperationOutcome."""
        self._control("fault", {"kind": "status", "status": status, "count": count})

    def malformed(self, count: int = 1) -> None:
        """Answer the next ``count`` FHIR requests with truncated JSON."""
        self._control("fault", {"kind": "malformed", "count": count})

    def redirect(self, location: str, count: int = 1) -> None:
        """Answer the next ``count`` FHIR requests with a 302 to ``location``."""
        self._control("fault", {"kind": "redirect", "location": location, "count": count})

    def requests(self) -> list[dict[str, Any]]:
        """The FHIR requests since the last reset: ``{"method", "url", "form", "authorization", "authorized"}``
        each (``form``: the form body of a POST ``_search``, else empty)."""
        resp = self._http.get(f"{self.control_url}/requests", timeout=10)
        resp.raise_for_status()
        return resp.json()

    def load(self, resources: Iterable[Mapping[str, Any]]) -> None:
        """Store resources under their own ids, unseen by the request log, the token check and the faults.

        PUT entries in batch Bundles (Medplum refuses transactions with more than 50 updates).
        """
        entries = [
            {"request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}, "resource": dict(r)}
            for r in resources
        ]
        for start in range(0, len(entries), BATCH_SIZE):
            bundle = {"resourceType": "Bundle", "type": "batch", "entry": entries[start : start + BATCH_SIZE]}
            resp = self._http.post(f"{self.control_url}/load", json=bundle, timeout=60)
            resp.raise_for_status()
            answers = [e["response"] for e in resp.json().get("entry", [])]
            failed = [a for a in answers if not a["status"].startswith("2")]
            assert not failed, f"the test server refused resources: {failed[:3]}"

    def close(self) -> None:
        self._http.close()


def _ensure_node_modules() -> None:
    if (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to install the Medplum test FHIR server (tests/fhir_server)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SERVER_DIR, check=True, capture_output=True)


def _start() -> tuple[subprocess.Popen[str], dict[str, str]]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is needed to run the Medplum test FHIR server (tests/fhir_server)")
    _ensure_node_modules()
    process = subprocess.Popen(
        [node, "--experimental-websocket", "server.mjs", "--port", "0"],
        cwd=SERVER_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_line: list[str] = []
    reader = threading.Thread(target=lambda: first_line.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(START_SECONDS)
    if not first_line or not first_line[0].strip():
        process.kill()
        _, err = process.communicate(timeout=5)
        pytest.fail(f"the test FHIR server did not start: {err[-2000:]}")
    return process, json.loads(first_line[0])


@contextmanager
def running_fhir_server() -> Iterator[FhirTestServer]:
    """A test FHIR server process for the duration of the block (also used by bench/bench_partial_prefetch.py)."""
    process, where = _start()
    server = FhirTestServer(where["listening"], where["control"])
    try:
        yield server
    finally:
        server.close()
        process.terminate()
        try:
            process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.fixture(scope="session")
def fhir_server_process() -> Iterator[FhirTestServer]:
    """The session's test FHIR server process (use ``fhir_server``, which also empties it per test)."""
    with running_fhir_server() as server:
        yield server


@pytest.fixture
def fhir_server(fhir_server_process: FhirTestServer) -> FhirTestServer:
    """An empty, open, well-behaved test FHIR server; ``.base_url`` is its FHIR base."""
    fhir_server_process.reset()
    return fhir_server_process


class CountingServer:
    """A loopback HTTP server that answers every request with an empty searchset and remembers each request.

    It stands for a FHIR server the service must never call: tests assert that ``hits`` stays empty.
    """

    def __init__(self) -> None:
        hits: list[str] = []
        headers: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                headers.append(dict(self.headers))
                body = json.dumps({"resourceType": "Bundle", "type": "searchset"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.hits = hits  # the path of each request
        self.headers = headers  # the headers of each request
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def counting_server() -> Iterator[CountingServer]:
    """A loopback HTTP server that records the requests it receives (``.url``, ``.hits``, ``.headers``)."""
    server = CountingServer()
    try:
        yield server
    finally:
        server.close()
