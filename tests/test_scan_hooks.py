"""``cds-service scan --hook``: encounter-start over a population (each patient's most recent Encounter in the
export), and the hooks a population cannot answer (order-select, order-sign: no draft orders) refused at once.

The oracle is the running service: each evaluated patient's record is sent to ``cds-service serve`` as an
encounter-start call with full prefetch and the encounter the scan chose, and its cards must be the scan's."""
from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from support.bulk import NOW, fixture_resources, population, run_scan, write_export
from support.hookcalls import SERVICE_IDS
from support.live import serve
from support.scan_calls import fixture_prefetch, generated_prefetch, hook_call

from cds_service.scan.hooks import NO_ENCOUNTER, NO_USABLE_ENCOUNTER
from cds_service.scan.output import PSEUDONYM_KEY_ENV

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def encounter(patient_id: str, name: str, status: str, start: str | None) -> dict[str, Any]:
    return {
        "resourceType": "Encounter", "id": f"{patient_id}-{name}", "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{patient_id}"},
        **({"period": {"start": start}} if start else {}),
    }


def encounters(patient_ids: list[str]) -> tuple[list[dict[str, Any]], dict[str, str | None]]:
    """Encounters for the patients, and the id the scan must choose for each (None: it must not evaluate them).

    Every fifth patient has no Encounter; the next has only a cancelled one; the rest have, besides the one to
    choose, an older visit, an undated one, a planned one after now and a cancelled one closer to now."""
    resources, chosen = [], {}
    for number, pid in enumerate(patient_ids):
        if number % 5 == 0:
            chosen[pid] = None
            continue
        resources.append(encounter(pid, "cancelled", "cancelled", "2026-10-31T08:00:00Z"))
        if number % 5 == 1:
            chosen[pid] = None
            continue
        resources += [
            encounter(pid, "old", "finished", "2025-01-01"),
            encounter(pid, "latest", "finished", "2026-10-30T23:30:00-02:00"),  # 01:30 UTC on 31 October
            encounter(pid, "undated", "in-progress", None),
            encounter(pid, "planned", "planned", "2026-11-01T00:00:01Z"),  # one second after now
        ]
        chosen[pid] = f"{pid}-latest"
    return resources, chosen


@pytest.fixture(scope="module")
def encounter_scan(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    resources = population()
    patient_ids = sorted(r["id"] for r in resources if r["resourceType"] == "Patient")
    visits, chosen = encounters(patient_ids)
    folder = write_export(tmp_path_factory.mktemp("export"), resources + visits)
    out = tmp_path_factory.mktemp("scan") / "out"
    result = run_scan(str(folder), "--out", str(out), "--now", NOW, "--workers", "2", "--hook", "encounter-start",
                      "--block-size", "20000")
    assert result.returncode == 0, result.stderr
    return out, chosen


def test_encounter_start_scans_each_patient_at_their_most_recent_encounter(encounter_scan) -> None:
    out, chosen = encounter_scan
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "worklist.ndjson").read_text().splitlines()]
    without = [p for p, e in chosen.items() if e is None]
    assert summary["hook"] == "encounter-start"
    assert summary["patients"]["scanned"] == len(chosen) - len(without)
    assert summary["patients"]["not_evaluated"] == {NO_ENCOUNTER: len(without) - len(without) // 2,
                                                    NO_USABLE_ENCOUNTER: len(without) // 2}
    assert rows and {r["patient"] for r in rows}.isdisjoint(without)
    assert all(r["encounter"] == chosen[r["patient"]] for r in rows)
    resources = summary["resources"]
    assert resources["used"] == resources["read"] - sum(resources["skipped"].values())  # the Encounters too
    assert not any(reason.startswith("Encounter") for reason in resources["skipped"])


def test_the_encounter_start_scans_cards_are_the_hooks_cards(encounter_scan, tmp_path) -> None:
    out, chosen = encounter_scan
    scanned: dict[str, list[tuple[str, str]]] = {}
    for line in (out / "worklist.ndjson").read_text().splitlines():
        row = json.loads(line)
        if row["deployment"] == "active":
            scanned.setdefault(row["patient"], []).append((row["summary"], row["indicator"]))
    records = {**fixture_prefetch(), **generated_prefetch()}
    answered = {}
    with serve(tmp_path, env={"CDS_NOW": NOW}) as base, requests.Session() as session:
        url = f"{base}/cds-services/{SERVICE_IDS['encounter-start']}"
        for patient_id, prefetch in records.items():
            if chosen[patient_id] is None:
                continue
            call = hook_call("encounter-start", prefetch, patient_id, encounterId=chosen[patient_id])
            response = session.post(url, json=call, timeout=30)
            assert response.status_code == 200, response.text
            answered[patient_id] = [(c["summary"], c["indicator"]) for c in response.json()["cards"]]
    for patient_id, cards in answered.items():
        assert scanned.get(patient_id, []) == cards, patient_id
    assert sum(len(c) for c in answered.values()) > 30  # the population fires rules: the comparison means something


def test_pseudonymised_encounter_start_lines_hide_the_encounter_too(tmp_path) -> None:
    resources = fixture_resources()
    visits, chosen = encounters(sorted(r["id"] for r in resources if r["resourceType"] == "Patient"))
    out = tmp_path / "out"
    result = run_scan(str(write_export(tmp_path / "export", resources + visits)), "--out", str(out), "--now", NOW,
                      "--workers", "1", "--hook", "encounter-start", "--pseudonymise",
                      env={PSEUDONYM_KEY_ENV: "committee-key"})
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "worklist.ndjson").read_text().splitlines()]

    def pseudonym(text: str) -> str:
        return hmac.new(b"committee-key", text.encode(), hashlib.sha256).hexdigest()

    expected = {pseudonym(p): pseudonym(e) for p, e in chosen.items() if e is not None}
    assert rows and all(expected[r["patient"]] == r["encounter"] for r in rows)
    assert "fx-" not in (out / "worklist.ndjson").read_text()


@pytest.mark.parametrize("hook", ["order-sign", "order-select"])
def test_an_order_hook_is_refused_at_once_saying_why(hook: str, tmp_path: Path) -> None:
    result = run_scan(str(tmp_path / "no-such-export"), "--out", str(tmp_path / "out"), "--hook", hook)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"cds-service scan: --hook {hook} is about a clinician's draft orders, which a population export does not "
        "have; the scan answers patient-view and encounter-start")
    assert not (tmp_path / "out").exists()


def test_an_unknown_hook_is_one_line(tmp_path: Path) -> None:
    result = run_scan(str(tmp_path), "--out", str(tmp_path / "out"), "--hook", "chart-close")
    assert result.returncode == 2
    assert result.stderr.strip() == ("cds-service scan: --hook chart-close is not a hook this service answers; "
                                     "the scan answers patient-view and encounter-start")
