"""``cds-service scan`` over Bulk FHIR NDJSON, on a local Dask cluster and on a real scheduler with two workers.

The oracle is the running service: every scanned patient's record is sent to ``cds-service serve`` as a
patient-view call with full prefetch at the same ``now``, and its cards must be the scan's cards for the patient.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from support.browser import browser, page, page_errors, screenshot  # noqa: F401 (fixtures)
from support.bulk import (
    BUNDLES,
    GENERATED,
    NOW,
    dask_cluster,
    fixture_resources,
    population,
    run_scan,
    scan_command,
    write_export,
)
from support.hookcalls import SERVICE_IDS
from support.live import free_port, serve
from support.scan_calls import fixture_prefetch, generated_prefetch, hook_call

from cds_service.scan.output import PSEUDONYM_KEY_ENV, Output

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
BLOCK = "20000"  # bytes per task: several blocks per file, so lines cross block boundaries


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return write_export(tmp_path_factory.mktemp("export"), population())


@pytest.fixture(scope="module")
def local_run(export, tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("local") / "out"
    result = run_scan(str(export), "--out", str(out), "--now", NOW, "--workers", "2", "--block-size", BLOCK)
    return result, out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> str:
    with dask_cluster(tmp_path_factory.mktemp("dask")) as address:
        yield address


def worklist(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "worklist.ndjson").read_text().splitlines()]


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def test_the_scan_runs_quietly_without_a_terminal(local_run) -> None:
    result, out = local_run
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "Traceback" not in result.stderr
    patients = len(list(BUNDLES.glob("*.json"))) + GENERATED
    [line] = result.stderr.strip().splitlines()  # the summary alone: no routine Dask log lines
    assert line.startswith(f"scan: {patients} patients scanned")
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "summary.json", "worklist.ndjson"]


def test_the_scans_cards_are_the_hooks_cards_for_each_patient(local_run, tmp_path) -> None:
    _result, out = local_run
    scanned: dict[str, list[tuple[str, str, str]]] = {}
    for row in worklist(out):  # the cards a clinician is shown; silent rules' cards are never answered
        if row["deployment"] == "active":
            scanned.setdefault(row["patient"], []).append((row["rule"], row["indicator"], row["summary"]))
    records = {**fixture_prefetch(), **generated_prefetch()}
    calls = {patient_id: hook_call("patient-view", prefetch, patient_id) for patient_id, prefetch in records.items()}
    answered = {}
    with serve(tmp_path, env={"CDS_NOW": NOW}) as base, requests.Session() as session:
        url = f"{base}/cds-services/{SERVICE_IDS['patient-view']}"
        for patient_id, call in calls.items():
            response = session.post(url, json=call, timeout=30)
            assert response.status_code == 200, response.text
            answered[patient_id] = [(c["summary"], c["indicator"]) for c in response.json()["cards"]]
    assert summary(out)["patients"]["scanned"] == len(calls)
    for patient_id, cards in answered.items():
        assert [(s, i) for _r, i, s in scanned.get(patient_id, [])] == cards, patient_id
    assert sum(len(c) for c in answered.values()) > 40  # the population fires rules: the comparison means something
    generated_with_cards = [p for p in answered if p.startswith("gen-") and answered[p]]
    assert generated_with_cards, "no generated patient got a card"


def test_summary_counts_per_rule_and_names_deployment(local_run) -> None:
    _result, out = local_run
    rows, totals = worklist(out), summary(out)
    assert totals["cards"]["total"] == len(rows) == totals["worklist"]["lines"]
    assert totals["worklist"]["sha256"] == hashlib.sha256((out / "worklist.ndjson").read_bytes()).hexdigest()
    for rule in totals["rules"]:
        mine = [r for r in rows if r["rule"] == rule["rule"]]
        assert rule["patients_with_card"] == len({r["patient"] for r in mine})
        assert sum(rule["by_indicator"].values()) == len(mine)
        assert rule["cards_per_1000_patients"] == round(1000 * len(mine) / totals["patients"]["scanned"], 2)
    assert {r["deployment"] for r in rows} <= {"active", "silent"}
    assert all(r["evidence_dates"] == sorted(r["evidence_dates"]) for r in rows)
    per_patient = sum(int(k) * n for k, n in totals["cards_per_patient"].items())
    assert per_patient == len(rows)
    assert totals["resources"]["read"] == sum(1 for _ in population())
    assert totals["problems"] == [] and totals["files_skipped"] == []


def test_a_run_on_a_dask_scheduler_with_two_workers_gives_the_same_files(local_run, export, cluster, tmp_path):
    _result, local_out = local_run
    out = tmp_path / "out"
    result = run_scan(str(export), "--out", str(out), "--now", NOW, "--scheduler", cluster, "--block-size", BLOCK)
    assert result.returncode == 0, result.stderr
    assert (out / "worklist.ndjson").read_bytes() == (local_out / "worklist.ndjson").read_bytes()
    assert summary(out) == summary(local_out)


def test_pseudonyms_are_hmac_sha256_of_the_patient_id(local_run, export, cluster, tmp_path) -> None:
    _result, local_out = local_run
    out = tmp_path / "out"
    result = run_scan(str(export), "--out", str(out), "--now", NOW, "--scheduler", cluster, "--pseudonymise",
                      env={PSEUDONYM_KEY_ENV: "committee-key"})
    assert result.returncode == 0, result.stderr
    expected = [hmac.new(b"committee-key", r["patient"].encode(), hashlib.sha256).hexdigest()
                for r in worklist(local_out)]
    assert sorted(r["patient"] for r in worklist(out)) == sorted(expected)
    assert summary(out)["pseudonymised"] is True
    assert summary(out)["pseudonym_key"] == PSEUDONYM_KEY_ENV
    assert "gen-" not in (out / "worklist.ndjson").read_text() + (out / "report.html").read_text()


def test_report_is_a_self_contained_page_with_the_charts(local_run, page) -> None:
    _result, out = local_run
    totals = summary(out)
    outside: list[str] = []
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
               else (outside.append(route.request.url), route.abort()))
    page.goto((out / "report.html").as_uri())
    bars = page.locator("#rules-chart rect.bar")
    expected = [(r["rule"], i, n) for r in totals["rules"] for i, n in r["by_indicator"].items()]
    assert sorted((b.get_attribute("data-rule"), b.get_attribute("data-indicator"), int(b.get_attribute("data-cards")))
                  for b in bars.all()) == sorted(expected)
    columns = page.locator("#cards-per-patient rect.column")
    assert columns.count() == len(totals["cards_per_patient"])
    assert page.locator("#evidence tbody tr").count() == sum(len(r["top_evidence"]) for r in totals["rules"])
    assert page.locator("#total-0").inner_text().startswith(f"{totals['patients']['scanned']:,}")
    assert bars.first.bounding_box()["width"] > 0
    assert outside == []
    screenshot(page, "scan-report")


def referencing_medications(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same resources with each order's inline drug code moved into a Medication it references: one
    Medication per distinct code, shared by every order (of any patient) that names it."""
    medications: dict[str, dict[str, Any]] = {}
    changed = []
    for resource in resources:
        concept = resource.get("medicationCodeableConcept")
        if concept is None:
            changed.append(resource)
            continue
        medication = medications.setdefault(json.dumps(concept, sort_keys=True), {
            "resourceType": "Medication", "id": f"med-{len(medications)}", "code": concept})
        order = {k: v for k, v in resource.items() if k != "medicationCodeableConcept"}
        changed.append({**order, "medicationReference": {"reference": f"Medication/{medication['id']}"}})
    return changed + list(medications.values())


def test_medications_that_orders_reference_are_joined_to_each_patient(local_run, cluster, tmp_path) -> None:
    _result, local_out = local_run
    resources = referencing_medications(population())
    orders = [r for r in resources if "medicationReference" in r]
    assert len(orders) > len({r["medicationReference"]["reference"] for r in orders})  # Medications are shared
    referencing = write_export(tmp_path / "referencing", resources)
    out = tmp_path / "out"
    result = run_scan(str(referencing), "--out", str(out), "--now", NOW, "--scheduler", cluster, "--block-size", BLOCK)
    assert result.returncode == 0, result.stderr
    assert worklist(out) == worklist(local_out)  # each referenced drug reached the orders of every patient naming it
    (referencing / "Medication.ndjson").unlink()
    without = tmp_path / "without"
    result = run_scan(str(referencing), "--out", str(without), "--now", NOW, "--scheduler", cluster)
    assert result.returncode == 0, result.stderr
    assert worklist(without) != worklist(local_out)  # without the Medications the drugs are unknown: the join mattered


def test_a_killed_run_leaves_no_file_that_looks_complete(export, cluster, tmp_path) -> None:
    out = tmp_path / "out"
    process = subprocess.Popen(scan_command(str(export), "--out", str(out), "--now", NOW, "--scheduler", cluster,
                                            "--block-size", "4000"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(4)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {"worklist.ndjson", "summary.json", "report.html"} & {p.name for p in out.glob("*")}
    assert not finished


def test_output_files_appear_only_when_committed(tmp_path) -> None:
    output = Output(tmp_path)
    output.write_lines("worklist.ndjson", [b"{}\n"])
    output.write_bytes("summary.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".summary.json.partial", ".worklist.ndjson.partial"]
    output.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "worklist.ndjson"]


def bad_export(folder: Path) -> Path:
    """One good patient with a cramp, and each kind of bad input a Bulk export can hold."""
    folder.mkdir()
    patient = {"resourceType": "Patient", "id": "bad-1", "gender": "female", "birthDate": "1950-01-01"}
    cramp = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/bad-1"},
             "clinicalStatus": {"coding": [{"code": "active"}]}, "onsetDateTime": "2026-10-20",
             "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55300003"}]}}
    lines = [
        json.dumps(cramp),
        '{"resourceType": "Condition", "id": "broken"',  # line 2: malformed
        json.dumps({**cramp, "id": "c2", "subject": None}),  # line 3: no patient reference
        json.dumps({"resourceType": "Frobnication", "id": "f1"}),  # line 4: not a FHIR resource type
        json.dumps({"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/bad-1"}}),
        "[1, 2, 3]",  # line 6: JSON, not a resource
    ]
    (folder / "Condition.ndjson").write_text("\n".join(lines) + "\n")
    (folder / "Patient.ndjson").write_text(json.dumps(patient) + "\n")
    (folder / "Bundle.ndjson").write_text(json.dumps({"resourceType": "Bundle", "entry": []}, indent=2))
    (folder / "notes.txt").write_text("exported on Monday\n")
    (folder / "Observation.ndjson.gz").write_bytes(b"this is not gzip")
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "processing", "diagnostics": "Observation/77 failed"}]}
    (folder / "errors.ndjson").write_text(json.dumps(outcome) + "\n")
    manifest = {"transactionTime": NOW, "request": "http://ehr.example/fhir/$export", "requiresAccessToken": True,
                "output": [{"type": "Condition", "url": "http://ehr.example/files/Condition.ndjson"}],
                "error": [{"type": "OperationOutcome", "url": "http://ehr.example/files/errors.ndjson"},
                          {"type": "OperationOutcome", "url": "http://ehr.example/files/lost.ndjson"}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_bad_input_is_reported_by_file_and_line_and_the_rest_is_scanned(cluster, tmp_path) -> None:
    out = tmp_path / "out"
    result = run_scan(str(bad_export(tmp_path / "export")), "--out", str(out), "--now", NOW, "--scheduler", cluster,
                      "--block-size", "100")  # blocks of a line or two: line numbers count across blocks
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    totals = summary(out)
    assert totals["patients"]["scanned"] == 1
    problems = [(p["file"], p["line"], p["problem"].split(":")[0]) for p in totals["problems"]]
    assert problems == [
        ("Condition.ndjson", 2, "malformed NDJSON line"),
        ("Condition.ndjson", 3, "no patient reference"),
        ("Condition.ndjson", 4, "unknown resource type"),
        ("Condition.ndjson", 6, "not a FHIR resource"),
    ]
    skipped = {f["file"]: f["reason"] for f in totals["files_skipped"]}
    assert skipped["Bundle.ndjson"].startswith("not NDJSON")
    assert skipped["Observation.ndjson.gz"].startswith("not NDJSON: cannot be read")
    assert skipped["notes.txt"] == "not an .ndjson or .ndjson.gz file"
    assert totals["export_errors"] == [
        {"file": "errors.ndjson", "line": 1, "problem": "the export server reported: Observation/77 failed"},
        {"file": "lost.ndjson", "problem": "the manifest lists it as an error file; absent"},
    ]
    assert totals["resources"]["skipped"] == {
        "Encounter: a type the rules do not read": 1, "malformed NDJSON line": 1, "no patient reference": 1,
        "not a FHIR resource": 1, "unknown resource type": 1,
    }
    assert totals["files_read"] == ["Condition.ndjson", "Patient.ndjson"]


def test_nothing_to_scan_exits_non_zero_with_the_reasons(cluster, tmp_path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "Condition.ndjson").write_text('{"resourceType": "Condition"}\n{oops\n')
    (export / "readme.md").write_text("# not data\n")
    out = tmp_path / "out"
    result = run_scan(str(export), "--out", str(out), "--now", NOW, "--scheduler", cluster)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "cds-service scan: no patient could be scanned (summary.json says why)")
    assert [p["line"] for p in summary(out)["problems"]] == [1, 2]


def test_a_missing_folder_is_one_line(tmp_path) -> None:
    result = run_scan(str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"cds-service scan: {tmp_path / 'nowhere'}: not a folder of Bulk FHIR NDJSON files"


@pytest.mark.parametrize("missing", [("dask", "distributed"), ("pandas", "pyarrow")])
def test_without_dask_the_command_says_how_to_install_it(tmp_path, missing) -> None:
    absent = "; ".join(f"sys.modules[{name!r}] = None" for name in missing)
    blocked = (f"import sys; {absent}; "
               "from cds_service.server.cli import main; sys.exit(main(['scan', '.', '--out', 'out']))")
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "cds-service scan needs Dask: pip install 'cds-service[scan]'"


def test_an_unreachable_scheduler_is_one_line(tmp_path) -> None:
    export = write_export(tmp_path / "export", fixture_resources()[:5])
    address = f"tcp://127.0.0.1:{free_port()}"
    result = run_scan(str(export), "--out", str(tmp_path / "out"), "--scheduler", address)
    assert result.returncode == 2
    assert result.stderr.strip() == f"cds-service scan: Timed out trying to connect to {address} after 20 s"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
