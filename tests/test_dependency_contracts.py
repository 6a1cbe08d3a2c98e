"""What the service relies on inside its libraries, beyond their documented APIs: each test here fails when a
release changes that behaviour, so raising an upper bound in pyproject.toml is a test run, not a guess.

Contracts pinned elsewhere, by tests that exercise the service itself:

* pysimdjson's fixed nesting limit (``SIMDJSON_DEPTH_LIMIT``): test_hookbody.py,
  ``test_simdjson_refuses_exactly_what_nests_deeper_than_its_limit``; that scalars count as a level and a reused
  parser with live documents refuses to parse: the other tests of test_hookbody.py.
* urllib3 turning the ``TimeoutError`` of a hung-up connection into a read timeout: test_deadline.py, the
  ``trickle-headers`` server.
* gunicorn calling ``util.write_error`` for what its parser refuses (414, 431, 417, bad framing), replaced by
  ``gunicorn_errors.install()``: test_http_live.py, ``test_errors_gunicorn_answers_itself_are_operation_outcomes``;
  ``Logger.access`` overridden by ``ServiceLogger``: test_observability.py,
  ``test_gunicorn_builds_no_access_lines_the_service_writes_its_own``; ``ParseException`` raised while a view
  reads a chunked body: test_robustness.py, ``test_broken_chunk_framing_is_400_json``; ``worker.app.callable``
  read after fork: every test that runs ``cds-service serve`` (a worker that cannot read it does not boot).
* fhir.resources' R4B models: test_rules_engine.py (a rule whose suggestion is invalid FHIR does not load).
"""
from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import simdjson
from gunicorn import util
from gunicorn.config import Config
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from support.fhir_server import CountingServer

from cds_service.record.hangup import DeadlineAdapter, _HTTPConnection, _HTTPPool
from cds_service.server import cli
from cds_service.server.gunicorn_errors import write_json_error

# --- pysimdjson (cds_service.wire.request_body) ------------------------------------------------------------------

def test_simdjson_reaches_a_value_inside_wrapping_arrays_by_json_pointer() -> None:
    """The body is parsed inside single-element arrays and taken back out lazily with ``at_pointer``."""
    raw = b'{"hook": "patient-view", "prefetch": {"labs": [1, 2]}}'
    levels = 3
    document = simdjson.Parser().parse(b"[" * levels + raw + b', "\\u0001"' + b"]" * levels)
    values = document.at_pointer("/0" * (levels - 1))
    assert type(values) is simdjson.Array and len(values) == 2
    assert type(values[0]) is simdjson.Object and values[0].as_dict() == json.loads(raw)
    assert values[1] == "\x01"


# --- requests and urllib3 (cds_service.record.hangup) -----------------------------------------------------------

def test_the_deadline_adapter_makes_its_requests_on_connections_that_hang_up() -> None:
    """``init_poolmanager`` and ``pool_classes_by_scheme`` still decide the pool, and the pool's
    ``ConnectionCls`` the connection: a real request runs on ``_HTTPConnection``."""
    server = CountingServer()
    adapter = DeadlineAdapter(max_retries=0)
    try:
        with requests.Session() as session:
            session.mount("http://", adapter)
            with session.get(f"{server.url}/fhir/Patient", timeout=5, stream=True) as response:
                assert response.status_code == 200
                assert type(response.raw.connection) is _HTTPConnection
                assert type(adapter.poolmanager.connection_from_url(server.url)) is _HTTPPool
    finally:
        server.close()
    assert server.hits == ["/fhir/Patient"]


# --- gunicorn (cds_service.server) ---------------------------------------------------------------------------------

def test_every_serve_option_is_a_gunicorn_setting() -> None:
    """gunicorn refuses unknown settings at start; ``control_socket_disable`` is the newest one serve uses."""
    config = Config()
    for name, value in cli.gunicorn_options("127.0.0.1", 8080, 2, 4, "INFO").items():
        config.set(name, value)
    assert config.control_socket_disable is True and config.preload_app is True


def test_the_error_writer_gunicorn_errors_replaces_is_called_as_it_was() -> None:
    assert list(inspect.signature(util.write_error).parameters) == ["sock", "status_int", "reason", "mesg"]
    assert len(inspect.signature(write_json_error).parameters) == 4
    assert callable(util.write_nonblock)


# --- prometheus-client (cds_service.server.cli, cds_service.server.metrics) -------------------------------------

def test_multiprocess_metrics_live_in_db_files_that_serve_wipes_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's metrics are written to ``*.db`` files in ``PROMETHEUS_MULTIPROC_DIR``; the files of an earlier
    run would be added in, so ``serve`` removes exactly those (``_prepare_metrics_dir``)."""
    script = "import prometheus_client; prometheus_client.Counter('contract_calls', 'calls').inc()"
    subprocess.run([sys.executable, "-c", script], env={cli.METRICS_DIR_ENV: str(tmp_path)}, check=True)
    assert [p.suffix for p in tmp_path.iterdir()] == [".db"]
    assert _counted(tmp_path) == 1.0

    monkeypatch.setenv(cli.METRICS_DIR_ENV, str(tmp_path))
    assert cli._prepare_metrics_dir() is None  # an operator's directory: emptied, not owned
    assert _counted(tmp_path) is None


def _counted(directory: Path) -> float | None:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return registry.get_sample_value("contract_calls_total")
