"""A built wheel carries its rules, value sets, schemas and examples, and runs from an unrelated directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support.hookcalls import hook_request

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project built as a wheel and unpacked into a fresh target directory (dependencies come from the
    test environment, the package itself only from the wheel)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(REPO)],
        check=True, capture_output=True,
    )
    wheel = next((tmp / "dist").glob("cds_service-*.whl"))
    target = tmp / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(target), "CDS_DATA_DIR": str(cwd / "data")}
    return subprocess.run([sys.executable, "-m", "cds_service.server.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_wheel_holds_the_data_files(installed):
    package = installed / "cds_service"
    assert list((package / "ruleset" / "valuesets").glob("*.json"))
    assert list((package / "ruleset").rglob("*.yaml"))
    for name in ("request", "response", "discovery", "feedback"):
        assert (package / "schemas" / f"{name}.schema.json").is_file()
    assert (package / "security" / "sandbox-jwks.json").is_file()
    migrations = package / "storage" / "migrations"
    for name in ("env.py", "script.py.mako", "versions/0001_initial.py"):
        assert (migrations / name).is_file()


def test_installed_package_evaluates_from_an_empty_directory(installed, tmp_path):
    request = tmp_path / "request.json"
    request.write_text(json.dumps(hook_request("patient-view")))
    result = run_installed(installed, tmp_path, "evaluate", str(request), "--now", "2026-11-01T00:00:00Z")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"cards": []}
    assert str(REPO) not in result.stderr


def test_installed_package_checks_its_rules(installed, tmp_path):
    result = run_installed(installed, tmp_path, "rules", "check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_installed_package_migrates_a_database_from_an_empty_directory(installed, tmp_path):
    script = (
        "import cds_service\n"
        "from sqlalchemy import inspect\n"
        "from cds_service.storage.database import open_database\n"
        "print(cds_service.__file__)\n"
        "print(sorted(inspect(open_database('sqlite:///db.sqlite3')).get_table_names()))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    module, tables = result.stdout.splitlines()
    assert Path(module).is_relative_to(installed)
    assert tables == str(["alembic_version", "feedback", "hook_calls_daily", "issued_cards", "seen_jti"])
