"""Interaction criteria (pairs of different medications from the value sets' interaction sets) and timing
criteria (SAMS-CI-style spans from a medication course event to a finding event), evaluated directly over facts,
through the loader's schema and checks, and as card text."""
from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from support.hookcalls import SERVICE_IDS
from support.rule_files import edit_rule_file
from support.wsgi_server import running

from cds_service.facts.build import build_facts
from cds_service.facts.model import Coding, Finding, MedicationUse, PatientFacts
from cds_service.facts.terminology import Terminology, ValueSetError
from cds_service.record.model import PatientRecord
from cds_service.rules.check import load_terminology
from cds_service.rules.criteria import Pairing, Timing, evaluate
from cds_service.rules.engine import RuleError, RuleSet
from cds_service.rules.loader import shipped_rules_dir
from cds_service.rules.model import Band, InteractionCriterion, TimingCriterion
from cds_service.rules.templates import field_value, timing_text

NOW = datetime(2026, 11, 1, tzinfo=UTC)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "requests"
RULES_DIR = shipped_rules_dir()
TERMINOLOGY = load_terminology(RULES_DIR)
PAIRS = (("simvastatin", "clarithromycin", "contraindicated"), ("simvastatin", "amlodipine", "at most 20 mg"))
SAMS_ONSET = TimingCriterion(
    classes=frozenset({"statin"}), since="start", concepts=frozenset({"cramp"}), until="onset",
    bands=(Band(timedelta(weeks=4), "P4W", 3), Band(timedelta(weeks=12, days=1), "P12W1D", 2), Band(None, "", 1)),
)


def days_ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


def use(*ingredients: str, started: int | None = 300, ended: int | None = None, kind: str = "request",
        name: str = "") -> MedicationUse:
    classes = frozenset({"statin"} if {"simvastatin", "atorvastatin"} & set(ingredients) else {"other"})
    return MedicationUse(
        name=name or " / ".join(ingredients), ingredients=frozenset(ingredients), classes=classes, kind=kind,
        status="active" if ended is None else "completed", selected=kind == "draft",
        date=None if started is None else days_ago(started), ended=None if ended is None else days_ago(ended),
        reference=f"MedicationRequest/{'-'.join(ingredients)}-{started}",
    )


def cramp(onset: int, abated: int | None = None) -> Finding:
    return Finding(
        concept="cramp", display="Cramp", source="Condition", code=Coding("http://snomed.info/sct", "55300003"),
        status="active" if abated is None else "resolved", onset=days_ago(onset), recorded=None,
        resource=f"Condition/cramp-{onset}", abated=None if abated is None else days_ago(abated),
    )


def facts(current: tuple[MedicationUse, ...], history: tuple[MedicationUse, ...] = (),
          findings: tuple[Finding, ...] = (), past: tuple[Finding, ...] = (), incomplete: frozenset[str] = frozenset()
          ) -> PatientFacts:
    return PatientFacts(patient_id="p", now=NOW, medications=current, medication_history=history or current,
                        findings=findings, finding_history=(*past, *findings), incomplete=incomplete)


# --- the history the facts keep ----------------------------------------------------------------------------

def test_the_facts_keep_past_courses_with_their_ends_and_past_conditions_with_their_abatement() -> None:
    rxnorm, sct = "http://www.nlm.nih.gov/research/umls/rxnorm", "http://snomed.info/sct"
    statin = {"coding": [{"system": rxnorm, "code": "617311", "display": "atorvastatin 40 MG Oral Tablet"}]}

    def statement(rid: str, status: str, **fields: object) -> dict[str, object]:
        return {"resourceType": "MedicationStatement", "id": rid, "status": status, "medicationCodeableConcept": statin,
                **fields}

    stopped = statement("old", "completed", effectivePeriod={"start": "2025-01-01", "end": "2026-03-01"})
    wrong = statement("err", "entered-in-error", effectivePeriod={"start": "2025-01-01"})
    request = {"resourceType": "MedicationRequest", "id": "rx", "status": "stopped", "intent": "order",
               "medicationCodeableConcept": statin, "authoredOn": "2024-01-01",
               "dispenseRequest": {"validityPeriod": {"end": "2024-06-01"}}}
    resolved = {"resourceType": "Condition", "id": "c", "clinicalStatus": {"coding": [{"code": "resolved"}]},
                "code": {"coding": [{"system": sct, "code": "55300003"}]},
                "onsetDateTime": "2026-02-01", "abatementDateTime": "2026-03-10"}
    record = PatientRecord("p", {"MedicationStatement": [stopped, wrong], "MedicationRequest": [request],
                                 "Condition": [resolved]})
    built = build_facts(record, TERMINOLOGY, NOW)
    assert built.medications == () and built.findings == ()  # nothing current
    ends = {(m.reference, m.ended.date().isoformat() if m.ended else None) for m in built.medication_history}
    assert ends == {("MedicationStatement/old", "2026-03-01"), ("MedicationRequest/rx", "2024-06-01")}
    (episode,) = built.finding_history
    assert episode.concept == "cramp" and episode.abated == datetime(2026, 3, 10, tzinfo=UTC)


# --- interaction criteria ----------------------------------------------------------------------------------

def test_a_pair_of_different_medications_matches_with_its_note() -> None:
    criterion = InteractionCriterion(frozenset({"s"}), PAIRS)
    simva, clari = use("simvastatin"), use("clarithromycin")
    match = evaluate(criterion, facts((clari, simva)))
    assert match.state is True
    assert match.evidence == (Pairing(simva, clari, "simvastatin", "clarithromycin", "contraindicated"),)
    assert field_value(match.evidence, None) == "simvastatin with clarithromycin"
    assert field_value(match.evidence, "second") == "clarithromycin"


def test_a_combination_product_is_no_interaction_with_itself_even_recorded_twice() -> None:
    criterion = InteractionCriterion(frozenset({"s"}), (("simvastatin", "amlodipine", "x"),))
    tablet = use("amlodipine", "simvastatin")
    reported = use("amlodipine", "simvastatin", kind="statement")
    assert evaluate(criterion, facts((tablet,))).state is False
    assert evaluate(criterion, facts((tablet, reported))).state is False
    assert evaluate(criterion, facts((tablet, use("simvastatin")))).state is True  # its amlodipine meets simvastatin


def test_a_pair_not_in_the_set_is_false_and_unknown_when_medications_are_incomplete() -> None:
    criterion = InteractionCriterion(frozenset({"s"}), PAIRS)
    pair = (use("atorvastatin"), use("clarithromycin"))
    assert evaluate(criterion, facts(pair)).state is False
    assert evaluate(criterion, facts(pair, incomplete=frozenset({"medrequests"}))).state is None


def test_the_use_applies_to_both_medications() -> None:
    draft = use("clarithromycin", kind="draft")
    simva = use("simvastatin")
    assert evaluate(InteractionCriterion(frozenset({"s"}), PAIRS), facts((simva, draft))).state is False
    assert evaluate(InteractionCriterion(frozenset({"s"}), PAIRS, use="any"), facts((simva, draft))).state is True


def test_the_loader_resolves_interaction_sets_from_the_value_sets() -> None:
    rule = RuleSet.load(RULES_DIR, TERMINOLOGY).by_id["statin-interaction"]
    criterion = rule.criteria["note_pair_contraindicated"]
    assert isinstance(criterion, InteractionCriterion)
    assert ("simvastatin", "gemfibrozil", "contraindicated (FDA 2011)") in criterion.pairs
    assert not any(first == "rosuvastatin" for first, _, _ in criterion.pairs)


def test_an_unknown_interaction_set_names_the_file_and_the_known_sets(rules_copy: Path) -> None:
    edit_rule_file(rules_copy / "statin" / "statin-interaction.yaml",
                   lambda rule: rule["criteria"]["note_pair_avoid"].update(interaction=["statin_maybe"]))
    with pytest.raises(RuleError, match=r"statin-interaction.yaml: at criteria/note_pair_avoid/interaction: "
                                        r"unknown interaction set statin_maybe; known: statin_additive"):
        RuleSet.load(rules_copy, TERMINOLOGY)


def test_a_value_set_pair_needs_known_ingredients_and_a_listed_source(tmp_path: Path) -> None:
    shutil.copytree(RULES_DIR / "valuesets", tmp_path, dirs_exist_ok=True)
    path = tmp_path / "medication-classes.json"
    document = json.loads(path.read_text("utf-8"))
    pair = document["interactions"]["statin_avoid"]["pairs"][0]
    pair["second"] = ["grapefruit"]
    path.write_text(json.dumps(document), "utf-8")
    with pytest.raises(ValueSetError, match="interactions/statin_avoid: ingredient\\(s\\) grapefruit are in no class"):
        Terminology.load(tmp_path)
    pair["second"], pair["source"] = ["gemfibrozil"], "nowhere"
    path.write_text(json.dumps(document), "utf-8")
    with pytest.raises(ValueSetError, match="interactions/statin_avoid/pairs/0/source: 'nowhere' is not in sources"):
        Terminology.load(tmp_path)


# --- timing criteria ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("started", "points"), [(28, 3), (29, 2), (85, 2), (86, 1)])
def test_onset_after_start_is_scored_by_the_first_band_it_is_under(started: int, points: int) -> None:
    statin = use("atorvastatin", started=started)
    match = evaluate(SAMS_ONSET, facts((statin,), findings=(cramp(1),)))
    assert match.state is True
    (timing,) = match.evidence
    assert isinstance(timing, Timing) and timing.points == points and timing.days == started - 1


def test_symptoms_before_the_start_are_not_scored_and_say_so() -> None:
    statin = use("atorvastatin", started=5, name="atorvastatin 40 MG")
    (timing,) = evaluate(SAMS_ONSET, facts((statin,), findings=(cramp(10),))).evidence
    assert isinstance(timing, Timing) and timing.points is None
    assert timing_text(timing) == "cramp began 5 days before starting atorvastatin 40 MG (not scored)"


def test_a_renewed_prescription_does_not_reset_the_start() -> None:
    first = use("atorvastatin", started=200)  # no recorded end: the course runs on into the renewal
    renewal = use("atorvastatin", started=10)
    (timing,) = evaluate(SAMS_ONSET, facts((renewal,), history=(first, renewal), findings=(cramp(1),))).evidence
    assert isinstance(timing, Timing) and timing.since_date == days_ago(200) and timing.points == 1


def test_a_course_with_a_planned_end_still_to_come_is_running() -> None:
    statin = MedicationUse("atorvastatin", frozenset({"atorvastatin"}), frozenset({"statin"}), "statement", "active",
                           False, days_ago(40), "MedicationStatement/a", ended=NOW + timedelta(days=30))
    (timing,) = evaluate(SAMS_ONSET, facts((statin,), findings=(cramp(5),))).evidence
    assert isinstance(timing, Timing) and timing.points == 2


def test_without_a_dated_start_or_onset_there_is_no_timing() -> None:
    assert evaluate(SAMS_ONSET, facts((use("atorvastatin", started=None),), findings=(cramp(1),))).state is False
    undated = Finding("cramp", "Cramp", "Condition", Coding("s", "c"), "active", None, None, "Condition/c")
    assert evaluate(SAMS_ONSET, facts((use("atorvastatin"),), findings=(undated,))).state is False


def test_dechallenge_and_rechallenge_come_from_a_stopped_course_and_a_restart() -> None:
    stopped = use("simvastatin", started=200, ended=90, name="simvastatin 20 MG")
    current = use("atorvastatin", started=30, name="atorvastatin 10 MG")
    record = facts((current,), history=(stopped, current), findings=(cramp(10),), past=(cramp(120, abated=80),))
    bands = (Band(timedelta(weeks=2), "P2W", 2), Band(timedelta(weeks=4), "P4W", 1), Band(None, "", 0))
    dechallenge = TimingCriterion(frozenset({"statin"}), "stop", frozenset({"cramp"}), "resolution", bands)
    (timing,) = evaluate(dechallenge, record).evidence
    assert isinstance(timing, Timing)
    assert timing_text(timing) == "cramp resolved 10 days after stopping simvastatin 20 MG (2 points)"
    rechallenge = TimingCriterion(frozenset({"statin"}), "restart", frozenset({"cramp"}), "onset",
                                  (Band(timedelta(weeks=4), "P4W", 3), Band(timedelta(weeks=12), "P12W", 1)))
    (timing,) = evaluate(rechallenge, record).evidence
    assert isinstance(timing, Timing) and timing.points == 3
    no_earlier_episode = facts((current,), history=(stopped, current), findings=(cramp(10),))
    assert evaluate(rechallenge, no_earlier_episode).state is False
    assert evaluate(dechallenge, facts((current,), findings=(cramp(10),))).state is False


def test_a_timing_criterion_needs_a_basis_from_the_rules_references(rules_copy: Path) -> None:
    path = rules_copy / "statin" / "statin-muscle-symptoms-no-ck.yaml"
    edit_rule_file(path, lambda rule: rule["criteria"]["note_sams_onset"].update(basis="nla-2099"))
    with pytest.raises(RuleError, match=r"no-ck\.yaml: at criteria/note_sams_onset/basis: 'nla-2099' is not one of"):
        RuleSet.load(rules_copy, TERMINOLOGY)
    edit_rule_file(path, lambda rule: rule["criteria"]["note_sams_onset"].pop("basis"))
    needs_basis = "no-ck.yaml: at criteria/note_sams_onset: the threshold .under P4W 3 points.* needs a basis"
    with pytest.raises(RuleError, match=needs_basis):
        RuleSet.load(rules_copy, TERMINOLOGY)


def test_a_timing_criterion_names_the_spans_the_history_can_date(rules_copy: Path) -> None:
    path = rules_copy / "statin" / "statin-muscle-symptoms-no-ck.yaml"
    edit_rule_file(path, lambda rule: rule["criteria"]["note_sams_onset"]["timing"].update(until="resolution"))
    with pytest.raises(RuleError, match="at criteria/note_sams_onset/timing: times start to onset, stop to "
                                        "resolution, restart to onset, not start to resolution"):
        RuleSet.load(rules_copy, TERMINOLOGY)


# --- over HTTP ---------------------------------------------------------------------------------------------

def _cards(base: str, fixture: str) -> list[dict]:
    body = json.loads((FIXTURES / fixture).read_text("utf-8"))
    response = requests.post(f"{base}/cds-services/{SERVICE_IDS[body['hook']]}", json=body, timeout=30)
    assert response.status_code == 200
    return response.json()["cards"]


def test_statin_cards_over_http_show_sams_ci_parts_and_statin_specific_interactions(make_app) -> None:
    with running(make_app()) as base:
        (sams,) = _cards(base, "statin-sams-ci-rechallenge.json")
        (pair,) = _cards(base, "statin-interaction.json")
        (combination,) = _cards(base, "statin-combination-tablet.json")
    assert "SAMS-CI dechallenge: cramp resolved 10 days after stopping atorvastatin" in sams["detail"]
    assert "SAMS-CI rechallenge: cramp began 2 weeks after restarting rosuvastatin" in sams["detail"]
    assert pair["indicator"] == "critical" and "hold the statin today" in pair["summary"]
    assert "Order creatine kinase (CK)" not in [s["label"] for s in pair["suggestions"]]  # a CK 2 days ago
    assert "Interaction" not in combination["detail"]

