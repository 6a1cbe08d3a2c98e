"""The ``cds-service`` command line: evaluate a request file, refuse unsafe binds."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.hookcalls import assert_operation_outcome, assert_valid_response

REPO = Path(__file__).resolve().parent.parent
EXPECTATIONS = json.loads((REPO / "fixtures" / "expectations.json").read_text())


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    environment = {**os.environ, "CDS_DATA_DIR": str(cwd / "data"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "cds_service.server.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_evaluate_prints_the_cards_of_a_fixture(tmp_path):
    name, expected = next((n, e) for n, e in EXPECTATIONS["fixtures"].items() if e["indicator"] == "critical")
    result = cli("evaluate", str(REPO / "fixtures" / name), "--now", EXPECTATIONS["now"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert_valid_response(response)
    assert [c["indicator"] for c in response["cards"]] == expected["indicators"]


def test_evaluate_reports_a_bad_request_as_operation_outcome(tmp_path):
    request = tmp_path / "bad.json"
    request.write_text('{"hook": "patient-view"}')
    result = cli("evaluate", str(request), cwd=tmp_path)
    assert result.returncode == 1
    assert_operation_outcome(json.loads(result.stdout), "CDS-0003")


def test_serve_refuses_a_public_bind_without_authentication(tmp_path):
    result = cli("serve", "--host", "0.0.0.0", "--port", "9", cwd=tmp_path)
    assert result.returncode == 2
    assert "--insecure" in result.stderr


def test_unknown_config_key_is_a_clear_error(tmp_path):
    config = tmp_path / "cds.toml"
    config.write_text("no_such_key = 1\n")
    result = cli("evaluate", "x.json", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "no_such_key" in result.stderr
