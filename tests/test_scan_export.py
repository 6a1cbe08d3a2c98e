"""``cds-service scan`` with a FHIR server as SOURCE: the Bulk Data kick-off, polling and download against the
project's FHIR test server (tests/fhir_server/server.mjs, which answers $export), then the same scan."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from support.bulk import NOW, fixture_resources, run_scan, write_export

from cds_service.scan.export import TOKEN_ENV

pytestmark = [pytest.mark.fhir, pytest.mark.slow, pytest.mark.timeout(600)]
TOKEN = "export-token"
READ_TYPES = "Condition,Medication,MedicationRequest,MedicationStatement,Observation,Patient"


def test_an_export_from_a_fhir_server_scans_as_the_same_files_do(fhir_server, tmp_path: Path) -> None:
    resources = fixture_resources()
    fhir_server.load(resources)
    fhir_server.set_token(TOKEN)
    out = tmp_path / "from-server"
    result = run_scan(fhir_server.base_url, "--out", str(out), "--now", NOW, "--workers", "1",
                      "--patient-level", env={TOKEN_ENV: TOKEN})
    assert result.returncode == 0, result.stderr
    calls = fhir_server.requests()
    assert all(c["authorized"] for c in calls)
    kick_off = urlsplit(calls[0]["url"])
    assert kick_off.path.endswith("/Patient/$export")
    assert parse_qs(kick_off.query)["_type"] == [READ_TYPES]
    statuses = [c for c in calls if "/__export/status/" in c["url"]]
    assert len(statuses) == 3  # two answered 202 with Retry-After, then the manifest
    saved = sorted(p.name for p in (out / "export").iterdir())
    assert "manifest.json" in saved and "Observation-5.ndjson" in saved

    folder = tmp_path / "from-files"
    write_export(tmp_path / "files", resources)
    local = run_scan(str(tmp_path / "files"), "--out", str(folder), "--now", NOW, "--workers", "1")
    assert local.returncode == 0, local.stderr
    rows = [json.loads(line) for line in (out / "worklist.ndjson").read_text().splitlines()]
    expected = [json.loads(line) for line in (folder / "worklist.ndjson").read_text().splitlines()]
    assert sorted(rows, key=json.dumps) == sorted(expected, key=json.dumps) and len(rows) > 30


def test_a_kick_off_answered_with_an_operation_outcome_ends_in_one_line(fhir_server, tmp_path: Path) -> None:
    fhir_server.fail(status=400, count=1)
    result = run_scan(fhir_server.base_url, "--out", str(tmp_path / "out"), "--now", NOW, "--workers", "1")
    assert result.returncode == 1
    assert result.stderr.strip() == ("cds-service scan: the export failed, nothing was scanned: the kick-off was "
                                     "answered 400: Injected failure 400")
