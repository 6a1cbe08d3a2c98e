"""Medication knowledge from sourced RxNorm data (issue 18 item 1): the build script over RXNCONSO and VSAC files,
branded codes and brand names in the terminology and facts layers, and the cards they give over real HTTP."""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests
from support.hookcalls import PATIENT_ID, SERVICE_IDS, cramp_condition, empty_prefetch, hook_request, searchset
from support.wsgi_server import running

from cds_service.facts.build import build_facts
from cds_service.facts.model import PatientFacts
from cds_service.facts.terminology import Terminology, ValueSetError
from cds_service.record.model import PatientRecord

REPO = Path(__file__).resolve().parents[1]
VALUESETS = REPO / "rules" / "valuesets"
SAMPLE = Path(__file__).parent / "data" / "rxnorm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
LOCAL = "http://hospital.example/fhir/CodeSystem/formulary"  # a site's own medication codes
NOW = datetime(2026, 11, 1, tzinfo=UTC)
SHIPPED_SOURCE_TITLE = (
    "RxNorm BN, SCD, SBD and SBDF rows, each found with the same RxNorm code, term type and name in two or more "
    "independent public sources (search of public repositories, 2026-12-07; listed in "
    "rules/valuesets/sources/README.md); certainty S"
)


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_medication_valuesets",
                                                  REPO / "scripts" / "build_medication_valuesets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


builder = _load_script()


def build(tmp_path: Path, *extra: str, rxnconso: Path = SAMPLE / "RXNCONSO.sample.RRF") -> dict[str, Any]:
    out = tmp_path / "medication-brands.json"
    code = builder.main(["--rxnconso", str(rxnconso), "--classes", str(VALUESETS / "medication-classes.json"),
                         "--source-id", "sample", "--source-title", "test sample", "-o", str(out), *extra])
    assert code == 0
    document: dict[str, Any] = json.loads(out.read_text("utf-8"))
    return document


# --------------------------------------------------------------------------------------------- build script
def test_the_script_reads_products_packs_salts_and_brands_from_rxnconso(tmp_path: Path) -> None:
    document = build(tmp_path, "--certainty", "S")
    entries = {e["code"]: e for e in document["entries"]}
    assert set(entries) == {"83367", "93252", "153165", "543354", "617320", "745752", "762675", "859749"}
    assert entries["93252"]["ingredients"] == ["hydrochlorothiazide", "triamterene"]
    assert entries["543354"]["ingredients"] == ["ezetimibe", "simvastatin"]
    assert entries["762675"]["ingredients"] == ["methylprednisolone"]  # the generic pack's inner product
    assert entries["762675"]["tty"] == "GPCK" and entries["83367"]["tty"] == "IN"
    assert entries["859749"]["ingredients"] == ["rosuvastatin"]  # the salt folds to the class ingredient
    assert entries["745752"]["ingredients"] == ["albuterol"]  # "200 ACTUAT" is not a name
    assert entries["153165"]["ingredients"] == ["atorvastatin"]  # the BN "Lipitor" takes its SBD's ingredients
    assert entries["153165"]["tty"] == "BN"
    assert {e["certainty"] for e in entries.values()} == {"S"}
    assert document["brands"] == [
        {"name": "Crestor", "ingredients": ["rosuvastatin"], "source": "sample"},
        {"name": "Lipitor", "ingredients": ["atorvastatin"], "source": "sample"},
        {"name": "Maxzide", "ingredients": ["hydrochlorothiazide", "triamterene"], "source": "sample"},
        {"name": "ProAir HFA", "ingredients": ["albuterol"], "source": "sample"},
        {"name": "Vytorin", "ingredients": ["ezetimibe", "simvastatin"], "source": "sample"},
    ]  # not Lasix: its only row is suppressed


def test_a_brand_name_row_without_its_products_in_the_input_is_left_out(tmp_path: Path) -> None:
    only_bn = tmp_path / "RXNCONSO.RRF"
    only_bn.write_text("153165|ENG||||||||153165||RXNORM|BN|153165|Lipitor||N||\n", "utf-8")
    document = build(tmp_path, rxnconso=only_bn)
    assert document["entries"] == [] and document["brands"] == []


def test_vsac_expansions_add_their_codes_and_known_codes_are_left_out(tmp_path: Path) -> None:
    document = build(tmp_path, "--vsac", str(SAMPLE / "statin-grouper-subset.json"),
                     "--known", str(VALUESETS / "medication-classes.json"))
    entries = {e["code"]: e for e in document["entries"]}
    assert "83367" not in entries  # the ingredient is already in medication-classes.json
    vsac = "vsac-2.16.840.1.113762.1.4.1110.19"
    assert entries["404011"] == {"system": RXNORM, "code": "404011", "certainty": "V", "source": vsac,
                                 "display": "amlodipine 5 MG / atorvastatin 80 MG Oral Tablet",
                                 "ingredients": ["amlodipine", "atorvastatin"]}
    assert {"id": vsac, "title": "VSAC Statin Grouper (version 20210220)",
            "url": f"http://cts.nlm.nih.gov/fhir/ValueSet/{vsac[5:]}"} in document["sources"]


def test_the_shared_vsac_file_format_is_read_and_matches_the_shipped_products(tmp_path: Path) -> None:
    subset = SAMPLE / "vsac-diuretics-subset.json"
    entries = {e["code"]: e for e in build(tmp_path, "--vsac", str(subset))["entries"]}
    assert entries["198316"]["ingredients"] == ["hydrochlorothiazide", "triamterene"]
    assert entries["977880"]["ingredients"] == ["amiloride"]
    products = json.loads((VALUESETS / "medication-products.json").read_text("utf-8"))["entries"]
    shipped = {e["code"]: e["ingredients"] for e in products}
    codes = ("198316", "313988", "977880")
    assert {code: shipped[code] for code in codes} == {code: entries[code]["ingredients"] for code in codes}
    rebuilt = build(tmp_path, "--vsac", str(subset), "--known", str(VALUESETS / "medication-products.json"))
    assert not set(codes) & {e["code"] for e in rebuilt["entries"]}


def test_the_output_is_a_value_set_file_the_service_loads(tmp_path: Path) -> None:
    folder = tmp_path / "valuesets"
    shutil.copytree(VALUESETS, folder, ignore=shutil.ignore_patterns("sources", "medication-brands.json"))
    document = build(tmp_path, "--known", str(folder / "medication-classes.json"),
                     "--known", str(folder / "medication-products.json"))
    (folder / "medication-brands.json").write_text(json.dumps(document), "utf-8")
    loaded = Terminology.load(folder)
    assert loaded.ingredients_for(RXNORM, "617320") == {"atorvastatin"}
    assert loaded.medication_text("VYTORIN 10-40 TAB").ingredients == {"ezetimibe", "simvastatin"}


def test_the_committed_file_equals_a_rebuild_from_the_committed_sources(tmp_path: Path) -> None:
    out = tmp_path / "rebuilt.json"
    code = builder.main([
        "--rxnconso", str(VALUESETS / "sources" / "RXNCONSO.public.RRF"),
        "--classes", str(VALUESETS / "medication-classes.json"),
        "--known", str(VALUESETS / "medication-products.json"), "--known", str(VALUESETS / "medication-classes.json"),
        "--source-id", "public-code-lists", "--source-title", SHIPPED_SOURCE_TITLE, "--certainty", "S",
        "-o", str(out),
    ])
    assert code == 0
    assert out.read_text("utf-8") == (VALUESETS / "medication-brands.json").read_text("utf-8")


def test_a_short_row_is_refused_naming_the_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "RXNCONSO.RRF"
    bad.write_text("617320|ENG||||||||617320||RXNORM|SBD|617320|atorvastatin 40 MG Oral Tablet [Lipitor]||N||\n"
                   "617320|ENG|RXNORM|SBD\n", "utf-8")
    code = builder.main(["--rxnconso", str(bad), "--classes", str(VALUESETS / "medication-classes.json"),
                         "--source-id", "x", "--source-title", "x", "-o", str(tmp_path / "out.json")])
    assert code == 1
    assert f"{bad}:2: 4 fields" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


# ----------------------------------------------------------------------------------------------- terminology
@pytest.mark.parametrize(("code", "ingredients"), [
    ("617320", {"atorvastatin"}), ("200809", {"furosemide"}), ("104491", {"simvastatin"}),
    ("543354", {"ezetimibe", "simvastatin"}), ("93252", {"hydrochlorothiazide", "triamterene"}),
    ("750199", {"amlodipine", "atorvastatin"}),  # Caduet SBD: a statin and a statin-interacting drug
    ("92479", {"chlorothiazide"}),  # Diuril SBDF: a branded dose form without strength
    ("205489", {"bumetanide"}), ("200820", {"spironolactone"}), ("104377", {"lisinopril"}),
    ("104220", {"furosemide"}), ("104370", {"captopril", "hydrochlorothiazide"}),
    ("153165", {"atorvastatin"}), ("196503", {"simvastatin"}),  # the brand names (BN) Lipitor and Zocor
])
def test_branded_products_map_to_their_ingredients(terminology: Terminology, code: str, ingredients: set[str]) -> None:
    assert terminology.ingredients_for(RXNORM, code) == ingredients


@pytest.mark.parametrize(("text", "ingredients"), [
    ("LIPITOR 40 MG PO TABS", {"atorvastatin"}),
    ("atorvastatin 40 MG Oral Tablet [Lipitor]", {"atorvastatin"}),
    ("Lasix 40mg daily", {"furosemide"}),
    ("maxzide 75-50", {"hydrochlorothiazide", "triamterene"}),
    ("CADUET 10-10 TAB", {"amlodipine", "atorvastatin"}),  # one combination brand, not ambiguous
    ("Aldactone 25mg daily", {"spironolactone"}),
    ("BUMEX 1 MG TABLET", {"bumetanide"}),
    ("Lipitorx", set()),  # whole words only
    ("", set()),
])
def test_brand_names_in_text(terminology: Terminology, text: str, ingredients: set[str]) -> None:
    found = terminology.medication_text(text)
    assert found.ingredients == ingredients and found.ambiguity is None


def test_text_naming_drugs_of_different_classes_is_ambiguous_and_counts_both(terminology: Terminology) -> None:
    found = terminology.medication_text("Lipitor; Lasix")
    assert found.ingredients == {"atorvastatin", "furosemide"}
    assert found.ambiguity is not None and "lipitor, lasix" in found.ambiguity
    # one combination, as brand or as "a / b", is not ambiguous
    assert terminology.medication_text("hydrochlorothiazide / triamterene 25-37.5").ambiguity is None
    assert terminology.medication_text("Vytorin (ezetimibe and simvastatin)").ambiguity is None
    assert terminology.medication_text("Lipitor, Zocor").ambiguity is None  # both statins


def _with_brands(tmp_path: Path, brands: list[dict[str, Any]]) -> Path:
    folder = tmp_path / "valuesets"
    shutil.copytree(VALUESETS, folder, ignore=shutil.ignore_patterns("sources"))
    path = folder / "medication-brands.json"
    document = json.loads(path.read_text("utf-8"))
    document["brands"] = brands
    path.write_text(json.dumps(document), "utf-8")
    return folder


@pytest.mark.parametrize(("brands", "message"), [
    ([{"name": "Furosemide", "ingredients": ["furosemide"], "source": "public-code-lists"}],
     "furosemide is also an ingredient name"),
    ([{"name": "Lasix", "ingredients": ["furosemide"], "source": "nowhere"}], "'nowhere' is not in sources"),
    ([{"name": "Lasix", "ingredients": ["furosemide"], "source": "public-code-lists"},
      {"name": "LASIX", "ingredients": ["furosemide"], "source": "public-code-lists"}], "is already defined"),
])
def test_bad_brand_tables_are_refused(tmp_path: Path, brands: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueSetError, match=message):
        Terminology.load(_with_brands(tmp_path, brands))


# ---------------------------------------------------------------------------------------------------- facts
def _request(ident: str, **medication: Any) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": ident, "status": "active", "intent": "order",
            "authoredOn": "2026-05-01", "subject": {"reference": f"Patient/{PATIENT_ID}"}, **medication}


def _concept(*codings: tuple[str, str, str], text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": s, "code": c, "display": d} for s, c, d in codings]}
    if text is not None:
        concept["text"] = text
    return concept


LIPITOR_SBD = _request("lipitor", medicationCodeableConcept=_concept((RXNORM, "617320", "Lipitor 40 MG Oral Tablet"),
                                                                     text="LIPITOR 40 MG PO TABS"))
LASIX_SBD = _request("lasix", medicationCodeableConcept=_concept((RXNORM, "200809", ""), text="LASIX 40 MG TAB"))
BRACKET_TEXT = _request("bracket", medicationCodeableConcept={"text": "atorvastatin 40 MG Oral Tablet [Lipitor]"})
LOCAL_AND_RXNORM = _request("local", medicationCodeableConcept=_concept(
    (LOCAL, "55512", "SIMVASTATIN 20 MG TAB"),
    (RXNORM, "104491", "simvastatin 20 MG Oral Tablet [Zocor]"), text="ZOCOR 20 MG TABLET"))
CONTAINED = _request("contained", medicationReference={"reference": "#med"}, contained=[{
    "resourceType": "Medication", "id": "med",
    "code": {"coding": [{"system": LOCAL, "code": "K-4417"}], "text": "Formulary 4417"},
    "ingredient": [{"itemCodeableConcept": _concept((RXNORM, "4603", "furosemide")), "isActive": True}],
}])
VYTORIN_SBD = _request("vytorin", medicationCodeableConcept=_concept(
    (RXNORM, "543354", "ezetimibe 10 MG / simvastatin 40 MG Oral Tablet [Vytorin]"), text="VYTORIN 10-40 TABS"))
CADUET_SBD = _request("caduet", medicationCodeableConcept=_concept((RXNORM, "750199", "")))  # the code alone
LIPITOR_BN = _request("lipitor-bn", medicationCodeableConcept=_concept((RXNORM, "153165", "")))  # the BN alone
CADUET_TEXT = _request("caduet-text", medicationCodeableConcept={"text": "CADUET 10-10 TAB PO DAILY"})
BUMEX_SBD = _request("bumex", medicationCodeableConcept=_concept((RXNORM, "205489", "")))
DIURIL_SBDF = _request("diuril", medicationCodeableConcept=_concept((RXNORM, "92479", ""), text="DIURIL SUSP"))
ALDACTONE_SBD = _request("aldactone", medicationCodeableConcept=_concept((RXNORM, "200820", ""), text="ALDACTONE 25"))
AMBIGUOUS_TEXT = _request("ambiguous", medicationCodeableConcept={"text": "Lipitor or Lasix per cardiology"})


def facts_of(terminology: Terminology, *requests_: dict[str, Any]) -> PatientFacts:
    patient = {"resourceType": "Patient", "id": PATIENT_ID, "gender": "female", "birthDate": "1950-02-01"}
    record = PatientRecord(PATIENT_ID, {"Patient": [patient], "MedicationRequest": list(requests_)})
    return build_facts(record, terminology, NOW)


@pytest.mark.parametrize(("resource", "ingredients", "classes"), [
    (LIPITOR_SBD, {"atorvastatin"}, {"statin"}),
    (LASIX_SBD, {"furosemide"}, {"loop_diuretic"}),
    (BRACKET_TEXT, {"atorvastatin"}, {"statin"}),
    (LOCAL_AND_RXNORM, {"simvastatin"}, {"statin"}),
    (CONTAINED, {"furosemide"}, {"loop_diuretic"}),
    (VYTORIN_SBD, {"ezetimibe", "simvastatin"}, {"statin"}),
    (CADUET_SBD, {"amlodipine", "atorvastatin"}, {"statin", "statin_interacting"}),
    (CADUET_TEXT, {"amlodipine", "atorvastatin"}, {"statin", "statin_interacting"}),
    (DIURIL_SBDF, {"chlorothiazide"}, {"thiazide_diuretic"}),
    (ALDACTONE_SBD, {"spironolactone"}, {"potassium_sparing_diuretic", "mineralocorticoid_antagonist"}),
])
def test_medications_are_classified_whatever_their_representation(
    terminology: Terminology, resource: dict[str, Any], ingredients: set[str], classes: set[str]
) -> None:
    facts = facts_of(terminology, resource)
    (use,) = facts.medications
    assert use.ingredients == ingredients and use.classes == classes
    assert facts.warnings == ()


def test_an_ambiguous_text_counts_both_classes_and_warns(terminology: Terminology) -> None:
    facts = facts_of(terminology, AMBIGUOUS_TEXT)
    (use,) = facts.medications
    assert use.classes == {"statin", "loop_diuretic"}
    (warning,) = facts.warnings
    assert warning.startswith("MedicationRequest/ambiguous: ambiguous medication text: the text names lipitor, lasix")
    assert "cardiology" not in warning  # the free text itself is not repeated


# ----------------------------------------------------------------------------------------------------- HTTP
def _observation(ident: str, loinc: str, value: float, unit: str, high: float | None = None) -> dict[str, Any]:
    observation: dict[str, Any] = {
        "resourceType": "Observation", "id": ident, "status": "final",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": loinc}]}, "effectiveDateTime": "2026-10-30T08:00:00Z",
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }
    if high is not None:
        observation["referenceRange"] = [{"high": {"value": high, "unit": unit}}]
    return observation


CK_13X = _observation("ck", "2157-6", 2600, "U/L", high=200)
K_3_2 = _observation("k", "2823-3", 3.2, "mmol/L")


@pytest.fixture
def service(make_app: Callable[..., Any]) -> Iterator[str]:
    with running(make_app()) as base:
        yield base


def _cards(base: str, medication: dict[str, Any], lab: dict[str, Any]) -> list[dict[str, Any]]:
    prefetch = empty_prefetch()
    prefetch |= {"conditions": searchset(cramp_condition()), "labs": searchset(lab),
                 "medrequests": searchset(medication)}
    response = requests.post(f"{base}/cds-services/{SERVICE_IDS['patient-view']}",
                             json=hook_request("patient-view", prefetch), timeout=30)
    assert response.status_code == 200, response.text
    cards: list[dict[str, Any]] = response.json()["cards"]
    return cards


def _summaries(cards: list[dict[str, Any]]) -> list[str]:
    return [card["summary"] for card in cards]


@pytest.mark.parametrize("medication", [LIPITOR_SBD, BRACKET_TEXT, VYTORIN_SBD, LOCAL_AND_RXNORM, CADUET_SBD,
                                        CADUET_TEXT, LIPITOR_BN],
                         ids=["lipitor-sbd-only", "bracket-text-only", "vytorin-sbd", "local-beside-rxnorm",
                              "caduet-sbd-only", "caduet-text-only", "lipitor-bn-only"])
def test_a_branded_or_text_only_statin_with_ck_13x_gets_the_critical_ck_card(
    service: str, medication: dict[str, Any]
) -> None:
    cards = _cards(service, medication, CK_13X)
    ck = [c for c in cards if "CK 2600 U/L (13.0× upper limit)" in c["summary"]]
    assert len(ck) == 1, _summaries(cards)
    assert ck[0]["indicator"] == "critical"
    assert "statin" in ck[0]["summary"]


@pytest.mark.parametrize(("medication", "culprit"), [
    (LASIX_SBD, "furosemide"), (CONTAINED, "furosemide"), (BUMEX_SBD, "bumetanide"), (DIURIL_SBDF, "chlorothiazide"),
], ids=["lasix-sbd-only", "contained-ingredient", "bumex-sbd-only", "diuril-sbdf-only"])
def test_a_branded_or_ingredient_coded_diuretic_is_named_as_the_potassium_culprit(
    service: str, medication: dict[str, Any], culprit: str
) -> None:
    cards = _cards(service, medication, K_3_2)
    (low_k,) = [c for c in cards if "Low potassium (3.2 mmol/L)" in c["summary"]]
    assert culprit in low_k["summary"]
    assert "no culprit" not in (low_k["summary"] + low_k["detail"]).lower()


def test_an_aldactone_sbd_with_potassium_above_the_range_gets_the_potassium_sparing_card(service: str) -> None:
    cards = _cards(service, ALDACTONE_SBD, _observation("k", "2823-3", 5.3, "mmol/L"))
    (high_k,) = [c for c in cards if "Potassium above the reference range (5.3 mmol/L)" in c["summary"]]
    assert "spironolactone" in high_k["summary"]


def test_maxzide_named_only_in_text_is_a_thiazide_for_the_potassium_card(service: str) -> None:
    maxzide = _request("maxzide", medicationCodeableConcept={"text": "MAXZIDE 75-50 TABLET"})
    cards = _cards(service, maxzide, K_3_2)
    (low_k,) = [c for c in cards if "Low potassium (3.2 mmol/L)" in c["summary"]]
    assert "MAXZIDE 75-50 TABLET" in low_k["detail"]


def test_an_ambiguous_medication_text_is_warned_in_the_request_log_line(
    service: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cds_service.requests")
    _cards(service, AMBIGUOUS_TEXT, K_3_2)
    (line,) = [r for r in caplog.records if r.name == "cds_service.requests" and hasattr(r, "warnings")]
    warnings: list[str] = line.warnings  # type: ignore[attr-defined]
    assert any("ambiguous medication text: the text names lipitor, lasix" in w for w in warnings), warnings
