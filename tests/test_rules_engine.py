"""The rule engine: condition grammar, three-valued logic, the cramp gate, one card per problem, ordering,
the cap, incomplete data, and the loader's errors (file + path named)."""
from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.rule_files import edit_rule_file

from cds_service.config import load_config
from cds_service.facts.model import Coding, Finding, LabResult, MedicationUse, PatientFacts
from cds_service.governance import Governance
from cds_service.rules.check import load_terminology
from cds_service.rules.criteria import evaluate as evaluate_criterion
from cds_service.rules.engine import RuleError, RuleSet, evaluate
from cds_service.rules.expression import Expression, ExpressionError, parse
from cds_service.rules.loader import parse_duration, shipped_rules_dir
from cds_service.rules.model import MedicationCriterion

NOW = datetime(2026, 11, 1, tzinfo=UTC)
RULES_DIR = shipped_rules_dir()
TERMINOLOGY = load_terminology(RULES_DIR)
RULESET = RuleSet.load(RULES_DIR, TERMINOLOGY)


def lab(analyte: str, value: float, unit: str, days_ago: int = 2, high: float | None = None) -> LabResult:
    return LabResult(
        analyte=analyte, value=value, unit=unit, effective=NOW - timedelta(days=days_ago),
        code=Coding("http://loinc.org", "x"), ref_low=None, ref_high=high, ref_from_resource=high is not None,
        interpretation=(), reported=f"{value} {unit}", resource=f"Observation/{analyte}",
    )


def med(ingredient: str, cls: str, kind: str = "request", selected: bool = False,
        as_needed: bool | None = None) -> MedicationUse:
    return MedicationUse(
        name=f"{ingredient} tablet", ingredients=frozenset({ingredient}), classes=frozenset({cls}), kind=kind,
        status="draft" if kind == "draft" else "active", selected=selected, date=NOW - timedelta(days=300),
        reference=f"MedicationRequest/{ingredient}", as_needed=as_needed,
    )


def finding(concept: str, days_ago: int = 3) -> Finding:
    return Finding(
        concept=concept, display=concept.capitalize(), source="Condition", code=Coding("http://snomed.info/sct", "1"),
        status="active", onset=NOW - timedelta(days=days_ago), recorded=None, resource=f"Condition/{concept}",
    )


def facts(*, labs=(), meds=(), findings=("cramp",), incomplete=()) -> PatientFacts:
    by_analyte: dict[str, tuple[LabResult, ...]] = {}
    for result in labs:
        by_analyte[result.analyte] = (*by_analyte.get(result.analyte, ()), result)
    return PatientFacts(
        patient_id="p1", now=NOW, labs=by_analyte, medications=tuple(meds),
        findings=tuple(finding(f) for f in findings), incomplete=frozenset(incomplete),
    )


# --- condition grammar -------------------------------------------------------------------------------------

BLOCKS = ["require_a", "require_b", "exclude_c", "note_d"]


@pytest.mark.parametrize(
    ("text", "states", "expected"),
    [
        ("all of require_* and not any of exclude_*", {"require_a": True, "require_b": True, "exclude_c": False}, True),
        ("all of require_* and not any of exclude_*", {"require_a": True, "require_b": True, "exclude_c": True}, False),
        ("all of require_* and not any of exclude_*", {"require_a": True, "require_b": True, "exclude_c": None}, None),
        ("all of require_*", {"require_a": True, "require_b": None}, None),
        ("all of require_*", {"require_a": False, "require_b": None}, False),
        ("require_a or require_b", {"require_a": None, "require_b": True}, True),
        ("not (require_a and require_b)", {"require_a": True, "require_b": False}, True),
        ("1 of require_* and not exclude_c", {"require_a": False, "require_b": True, "exclude_c": False}, True),
    ],
)
def test_condition_is_three_valued(text: str, states: dict, expected: bool | None) -> None:
    assert parse(text, BLOCKS).evaluate(states) is expected


@pytest.mark.parametrize(
    "text", ["all of missing_*", "require_a and", "require_*", "(require_a", "require_a require_b", "require_a & x", ""]
)
def test_bad_conditions_are_rejected(text: str) -> None:
    with pytest.raises(ExpressionError):
        parse(text, BLOCKS)


def test_durations() -> None:
    assert parse_duration("P30D") == timedelta(days=30)
    assert parse_duration("P12M") == timedelta(days=360)
    assert parse_duration("P1Y2W") == timedelta(days=379)
    with pytest.raises(ValueError, match="30 days"):
        parse_duration("30 days")


# --- evaluation over facts ---------------------------------------------------------------------------------

def test_no_card_without_documented_cramps() -> None:
    record = facts(labs=[lab("potassium", 2.0, "mmol/L")], meds=[med("furosemide", "loop_diuretic")],
                   findings=("myalgia", "dyspnea"))
    assert evaluate(RULESET, record, "patient-view", max_cards=10) == []


def test_spasm_opens_the_gate() -> None:
    record = facts(labs=[lab("potassium", 3.1, "mmol/L")], meds=[med("furosemide", "loop_diuretic")],
                   findings=("spasm",))
    assert [c.rule_id for c in evaluate(RULESET, record, "patient-view", max_cards=10)] == ["diuretic-hypokalemia"]


def test_one_card_per_problem_with_evidence_merged() -> None:
    record = facts(
        labs=[lab("potassium", 3.0, "mmol/L"), lab("ck", 2500, "U/L", high=200)],
        meds=[med("furosemide", "loop_diuretic"), med("albuterol", "beta2_agonist"),
              med("simvastatin", "statin"), med("clarithromycin", "statin_interacting")],
    )
    cards = evaluate(RULESET, record, "patient-view", max_cards=10)
    assert [(c.rule_id, c.indicator, c.related) for c in cards] == [  # both critical: the earlier rule leads
        ("statin-interaction", "critical", ("statin-muscle-symptoms-ck",)),
        ("diuretic-hypokalemia", "warning", ("drug-hypokalemia",)),
    ]
    statin_card = cards[0].card
    assert "clarithromycin" in statin_card["detail"] and "**Also relevant**" in statin_card["detail"]
    assert statin_card["source"]["url"] == "https://www.ahajournals.org/doi/10.1161/CIR.0000000000000456"
    assert statin_card["links"][-1]["url"] == "https://pmc.ncbi.nlm.nih.gov/articles/PMC4416140/"


def test_cards_are_ordered_by_indicator_then_rule_and_capped() -> None:
    record = facts(
        labs=[lab("potassium", 3.0, "mmol/L"), lab("egfr", 40, "mL/min/{1.73_m2}"), lab("tsh", 9, "m[IU]/L", high=4.5)],
        meds=[med("furosemide", "loop_diuretic")],
        findings=("cramp", "dyspnea", "chest_pain"),  # breathlessness with chest pain: the one critical card
    )
    cards = evaluate(RULESET, record, "patient-view", max_cards=10)
    ranks = [{"critical": 0, "warning": 1, "info": 2}[c.indicator] for c in cards]
    assert ranks == sorted(ranks) and cards[0].rule_id == "red-flag-urgent"
    assert [c.rule_id for c in evaluate(RULESET, record, "patient-view", max_cards=2)] == [c.rule_id for c in cards[:2]]
    assert evaluate(RULESET, record, "patient-view", max_cards=0) == []


def test_incomplete_data_never_makes_an_absence_true() -> None:
    base = {"labs": [lab("potassium", 3.1, "mmol/L")]}
    assert [c.rule_id for c in evaluate(RULESET, facts(**base), "patient-view", max_cards=10)] == [
        "hypokalemia-no-culprit"
    ]
    assert evaluate(RULESET, facts(**base, incomplete=["medrequests"]), "patient-view", max_cards=10) == []
    on_diuretic = {"meds": [med("furosemide", "loop_diuretic")]}
    assert [c.rule_id for c in evaluate(RULESET, facts(**on_diuretic), "patient-view", max_cards=10)] == [
        "diuretic-no-recent-electrolytes"
    ]
    assert evaluate(RULESET, facts(**on_diuretic, incomplete=["labs"]), "patient-view", max_cards=10) == []


def test_order_rules_only_on_order_hooks_and_act_on_the_draft() -> None:
    record = facts(labs=[lab("ck", 900, "U/L", high=200)], meds=[med("atorvastatin", "statin", "draft", True)])
    assert evaluate(RULESET, record, "patient-view", max_cards=10) == []
    (card,) = evaluate(RULESET, record, "order-select", max_cards=10)
    assert card.rule_id == "draft-statin-raised-ck"
    delete = card.card["suggestions"][0]["actions"][0]
    assert delete == {
        "type": "delete",
        "description": "Remove the draft order for atorvastatin tablet",
        "resourceId": "MedicationRequest/atorvastatin",
    }


def test_unselected_drafts_are_context_only() -> None:
    record = facts(labs=[lab("ck", 900, "U/L", high=200)], meds=[med("atorvastatin", "statin", "draft", False)])
    assert evaluate(RULESET, record, "order-select", max_cards=10) == []


def test_future_dated_results_are_ignored() -> None:
    record = facts(labs=[lab("potassium", 2.9, "mmol/L", days_ago=-3)])
    assert evaluate(RULESET, record, "patient-view", max_cards=10) == []


# --- loading ---------------------------------------------------------------------------------------------------

def _merging(rule: dict, groups: list[str]) -> None:
    """Give the rule ``merges_with`` in its place, right after ``group``."""
    fields = list(rule.items())
    rule.clear()
    for key, value in fields:
        rule[key] = value
        if key == "group":
            rule["merges_with"] = groups


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("references"), "'references' is a required property"),
        (lambda d: d.update(id="other-id"), "must equal the file stem"),
        (lambda d: d["criteria"]["require_low_potassium"].update(lab="potasium"), "unknown analyte potasium"),
        (lambda d: d["criteria"]["require_diuretic"].update(medication=["loop"]), "unknown medication class loop"),
        (lambda d: d["criteria"]["require_low_potassium"].update(unit="mEq/L"), "canonical unit 'mmol/L'"),
        (lambda d: d.update(condition="all of require_* and any of other_*"), "'other_*' matches no criteria"),
        (lambda d: d["card"].update(summary="Low {potasium} on {diuretic}"), "{potasium} names no require_"),
        (lambda d: d["card"].update(summary="Low {low_potassium.dose}"), "lab evidence has"),
        (lambda d: d["card"].update(source="nowhere"), "'nowhere' is not the id of one"),
        (lambda d: d["card"].update(override_reasons=["because"]), "unknown codes because"),
        (lambda d: d["card"].update(summary="x" * 140), "is too long"),
        (lambda d: _merging(d, ["hypokalemia"]), "at merges_with: names the rule's own group 'hypokalemia'"),
    ],
)
def test_invalid_rules_name_file_and_path(rules_copy: Path, change, message: str) -> None:
    path = rules_copy / "diuretic" / "diuretic-hypokalemia.yaml"
    edit_rule_file(path, change)
    with pytest.raises(RuleError) as caught:
        RuleSet.load(rules_copy, TERMINOLOGY)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_a_suggestion_that_creates_an_invalid_fhir_resource_fails_to_load(rules_copy: Path) -> None:
    """FHIR's code type allows no trailing space, which the rule schema cannot say: the ServiceRequest the card
    builder would create is validated (fhir.resources) and the error names file, suggestion and FHIR path."""
    path = rules_copy / "diuretic" / "diuretic-hypokalemia.yaml"
    edit_rule_file(path, lambda d: d["card"]["suggestions"][0]["actions"][0]["order"].update(code="19123-9 "))
    with pytest.raises(RuleError) as caught:
        RuleSet.load(rules_copy, TERMINOLOGY)
    assert str(caught.value).startswith(
        f"{path}: at card/suggestions/0/actions/0/order: suggestion 'Order serum magnesium' creates a "
        "ServiceRequest that is not valid FHIR R4: at code.coding.0.code: String should match pattern"
    )


def test_field_order_is_enforced(rules_copy: Path) -> None:
    path = rules_copy / "diuretic" / "diuretic-hypokalemia.yaml"
    edit_rule_file(path, lambda d: d.update({"title": d.pop("title")}))
    with pytest.raises(RuleError, match="fields must be in the order"):
        RuleSet.load(rules_copy, TERMINOLOGY)


def test_duplicate_ids_are_rejected(rules_copy: Path) -> None:
    original = rules_copy / "diuretic" / "diuretic-hypokalemia.yaml"
    shutil.copy(original, rules_copy / "metabolic" / original.name)
    with pytest.raises(RuleError, match="is also the id of"):
        RuleSet.load(rules_copy, TERMINOLOGY)


def test_deprecated_rules_are_off_unless_a_site_deploys_them(rules_copy: Path) -> None:
    edit_rule_file(rules_copy / "diuretic" / "diuretic-hypokalemia.yaml", lambda d: d.update(status="deprecated"))
    ruleset = RuleSet.load(rules_copy, TERMINOLOGY)
    default = Governance.of(ruleset, load_config(overrides={"rules_dir": str(rules_copy)}))
    assert default.deployment["diuretic-hypokalemia"] == "off" and default.deployment["drug-hypokalemia"] == "active"
    assert "diuretic-hypokalemia" not in {r.id for r in (*default.active.rules, *default.silent.rules)}
    deployed = Governance.of(ruleset, load_config(overrides={"rule_deployment": {"diuretic-hypokalemia": "active"}}))
    assert "diuretic-hypokalemia" in deployed.active.by_id


@pytest.mark.expects_rule_failure
def test_a_failing_rule_costs_only_its_own_card(caplog: pytest.LogCaptureFixture) -> None:
    def broken(states):
        raise ZeroDivisionError("bad data")

    good = RULESET.by_id["diuretic-hypokalemia"]
    bad = dataclasses.replace(RULESET.by_id["red-flag-urgent"], condition=Expression(broken, frozenset()))
    record = facts(labs=[lab("potassium", 3.1, "mmol/L")], meds=[med("furosemide", "loop_diuretic")])
    cards = evaluate(RuleSet.of([bad, good]), record, "patient-view", max_cards=5)
    assert [c.rule_id for c in cards] == ["diuretic-hypokalemia"]
    assert "rule red-flag-urgent failed" in caplog.text


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_on_order_hooks_a_patient_level_card_shows_only_when_critical(hook: str) -> None:
    """The low potassium on furosemide is a patient-level finding: shown on patient-view, left out while a statin
    is being ordered, unless it is critical (then it comes first, by indicator)."""
    ordering = [med("atorvastatin", "statin", "draft", True), med("furosemide", "loop_diuretic")]
    record = facts(labs=[lab("ck", 900, "U/L", high=200), lab("potassium", 3.1, "mmol/L")], meds=ordering)
    assert [c.rule_id for c in evaluate(RULESET, record, "patient-view", max_cards=5)] == ["diuretic-hypokalemia"]
    assert [(c.rule_id, c.indicator) for c in evaluate(RULESET, record, hook, max_cards=5)] == [
        ("draft-statin-raised-ck", "warning"),
    ]
    severe = facts(labs=[lab("ck", 900, "U/L", high=200), lab("potassium", 2.4, "mmol/L")], meds=ordering)
    assert [(c.rule_id, c.indicator) for c in evaluate(RULESET, severe, hook, max_cards=5)] == [
        ("diuretic-hypokalemia", "critical"),
        ("draft-statin-raised-ck", "warning"),
    ]


def test_on_order_hooks_nothing_is_answered_before_a_drug_is_chosen() -> None:
    record = facts(labs=[lab("ck", 900, "U/L", high=200)],
                   meds=[med("atorvastatin", "statin"), med("atorvastatin", "statin", "draft", False)])
    assert [(c.rule_id, c.indicator) for c in evaluate(RULESET, record, "patient-view", max_cards=5)] == [
        ("statin-muscle-symptoms-ck", "warning"),
    ]
    assert evaluate(RULESET, record, "order-select", max_cards=5) == []


@pytest.mark.parametrize("ck", [900, 2400])
def test_a_finding_the_order_makes_worse_is_one_card_the_orders(ck: int) -> None:
    """Atorvastatin taken and being ordered with a raised CK: the draft card carries the CK card's finding."""
    record = facts(labs=[lab("ck", ck, "U/L", high=200)],
                   meds=[med("atorvastatin", "statin"), med("atorvastatin", "statin", "draft", True)])
    (card,) = evaluate(RULESET, record, "order-sign", max_cards=5)
    assert (card.rule_id, card.related) == ("draft-statin-raised-ck", ("statin-muscle-symptoms-ck",))
    assert card.indicator == ("critical" if ck > 2000 else "warning")
    detail = card.card["detail"]
    assert "**Also relevant**" in detail and f"CK {ck} U/L" in detail.split("**Also relevant**")[1]
    labels = [s["label"] for s in card.card["suggestions"]]
    assert labels[0] == "Remove the draft atorvastatin order" and "Order a repeat CK" in labels


def test_an_order_for_a_diuretic_merges_the_low_potassium_it_makes_worse() -> None:
    record = facts(labs=[lab("potassium", 2.4, "mmol/L")],
                   meds=[med("furosemide", "loop_diuretic"), med("furosemide", "loop_diuretic", "draft", True)])
    (card,) = evaluate(RULESET, record, "order-sign", max_cards=5)
    assert (card.rule_id, card.indicator, card.related) == (
        "draft-diuretic-low-electrolyte", "critical", ("diuretic-hypokalemia",)
    )


@pytest.mark.parametrize(
    "culprits",
    [(), (("furosemide", "loop_diuretic"),), (("albuterol", "beta2_agonist"),),
     (("hydrochlorothiazide", "thiazide_diuretic"), ("prednisone", "systemic_corticosteroid"))],
)
@pytest.mark.parametrize("potassium", [2.4, 3.1])
def test_potassium_sparing_diuretics_are_never_told_to_add_potassium(culprits: tuple, potassium: float) -> None:
    meds = [med("spironolactone", "potassium_sparing_diuretic"), *(med(name, cls) for name, cls in culprits)]
    # order hooks answer a patient-level problem only when it is critical
    for hook in ("patient-view", "order-sign") if potassium < 2.5 else ("patient-view",):
        cards = evaluate(RULESET, facts(labs=[lab("potassium", potassium, "mmol/L")], meds=meds), hook, max_cards=10)
        assert cards, "a low potassium with cramps always gets a card"
        for card in cards:
            text = " ".join(card.card["detail"].lower().split())
            assert "potassium replacement" not in text and "potassium supplement" not in text.replace(
                "before any potassium supplement", ""
            )


@pytest.mark.parametrize(("started_days_ago", "expected"), [(366, True), (365, True), (364, False), (None, False)])
def test_taken_for_counts_only_a_medication_started_that_long_ago(started_days_ago: int | None,
                                                                  expected: bool) -> None:
    started = None if started_days_ago is None else NOW - timedelta(days=started_days_ago)
    ppi = dataclasses.replace(med("omeprazole", "proton_pump_inhibitor"), date=started)
    criterion = MedicationCriterion(frozenset({"proton_pump_inhibitor"}), taken_for=parse_duration("P365D"))
    assert evaluate_criterion(criterion, facts(meds=[ppi])).state is expected
    assert evaluate_criterion(criterion, facts(meds=[], incomplete=["medrequests"])).state is None


def test_the_post_surgical_hypocalcaemia_card_leads_the_general_one() -> None:
    record = facts(labs=[lab("calcium_corrected", 8.0, "mg/dL")], findings=("cramp", "thyroid_parathyroid_surgery"))
    (card,) = evaluate(RULESET, record, "patient-view", max_cards=10)
    assert card.rule_id == "hypocalcemia-after-thyroid-surgery"
    assert card.related == ("hypocalcemia",)
    (alone,) = evaluate(RULESET, facts(labs=[lab("calcium_corrected", 8.0, "mg/dL")]), "patient-view", max_cards=10)
    assert alone.rule_id == "hypocalcemia"


@pytest.mark.parametrize(("as_needed", "criterion", "matches"), [
    (None, None, True), (True, None, True), (False, None, True),
    (None, False, True), (False, False, True), (True, False, False),  # as_needed: false drops only recorded PRN use
    (None, True, False), (False, True, False), (True, True, True),  # as_needed: true needs recorded PRN use
])
def test_medication_criterion_reads_as_needed(as_needed: bool | None, criterion: bool | None, matches: bool) -> None:
    block = MedicationCriterion(frozenset({"beta2_agonist"}), as_needed=criterion)
    found = facts(meds=[med("albuterol", "beta2_agonist", as_needed=as_needed)])
    assert evaluate_criterion(block, found).state is matches
