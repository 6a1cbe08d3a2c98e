"""The shipped value sets and the Terminology lookups built from them."""
from __future__ import annotations

import json
import re
import shutil
from importlib import resources
from pathlib import Path

import pytest

from cds_service.facts import model
from cds_service.facts.terminology import ATC, ICD10CM, LOINC, RXNORM, SNOMED, Terminology, ValueSetError
from cds_service.record.templates import SYMPTOMS, build_prefetch_templates

SHIPPED = Path(str(resources.files("cds_service.ruleset") / "valuesets"))


def vocabulary(label: str) -> set[str]:
    """The names model.py's docstring lists after ``label`` (the contract the rules are written against)."""
    text = model.__doc__ or ""
    block = re.search(rf"\* {label}: (.*?)(?=\n\* |\n\n|$)", text, re.S)
    assert block, label
    return {name.strip() for name in re.sub(r"\([^)]*\)", "", block.group(1)).replace("\n", " ").split(",")}


# ---------------------------------------------------------------- the data files
def test_every_model_vocabulary_name_is_defined(terminology: Terminology) -> None:
    assert vocabulary("lab ``analyte``") == set(terminology.analytes)
    assert vocabulary("medication ``classes``") == set(terminology.medication_classes)
    assert vocabulary("finding ``concept``") == set(terminology.concepts)


def test_every_shipped_code_is_verified(terminology: Terminology) -> None:
    """Issue 23: no shipped code rests on clinical knowledge alone (M); each is V or S with its source."""
    unverified = sorted(f"{e.system}|{e.code}" for e in terminology.entries.values() if e.certainty not in {"V", "S"})
    assert unverified == []
    assert terminology.certainty_of(SNOMED, "5291005") == "S"  # hypocalcaemia: two public code lists
    assert terminology.certainty_of(ICD10CM, "E11.649") == "V"  # in the VSAC Diabetes expansion
    assert terminology.certainty_of(RXNORM, "4109") is None  # ethacrynic acid IN: not confirmed, removed
    assert terminology.certainty_of(RXNORM, "83367") == "V"  # atorvastatin
    assert terminology.certainty_of(SNOMED, "999999999") is None


def test_every_analyte_has_codes_units_and_a_cited_range(terminology: Terminology) -> None:
    coded = set(terminology.lab_codes.values())
    for name, analyte in terminology.analytes.items():
        assert analyte.derived or name in coded, name
        assert analyte.units.by_code[analyte.canonical_unit].factor == 1.0, name
        assert analyte.range_citation, name


@pytest.mark.parametrize("codes", [
    ("6298-4", "2823-3"), ("2947-0", "2951-2"), ("49765-1", "17861-6"), ("38483-4", "2160-0"),
    ("6299-2", "3094-0"), ("2339-0", "2345-7"),
])
def test_blood_and_serum_codes_are_both_fetched(terminology: Terminology, codes: tuple[str, str]) -> None:
    blood, serum = codes
    assert {blood, serum} <= set(terminology.lab_loinc_codes())
    assert terminology.analyte_for(blood) == terminology.analyte_for(serum)


def test_symptom_codes_are_symptoms_and_the_panel(terminology: Terminology) -> None:
    codes = terminology.symptom_observation_codes()
    assert (SNOMED, "55300003") in codes and (SNOMED, "45352006") in codes and (LOINC, "75325-1") in codes
    assert (SNOMED, "43339004") not in codes  # hypokalaemia is a diagnosis, not an Observation code
    template = build_prefetch_templates(terminology)[SYMPTOMS]
    assert "http://snomed.info/sct|55300003" in template and "http://loinc.org|75325-1" in template


@pytest.mark.parametrize(("code", "ingredients"), [
    ("316672", {"simvastatin"}), ("315971", {"furosemide"}), ("316049", {"hydrochlorothiazide"}),
    ("316052", {"hydrochlorothiazide"}), ("1719286", {"furosemide"}), ("897718", {"verapamil"}),
    ("834357", {"amiodarone"}), ("835900", {"cyclosporine"}), ("197541", {"colchicine"}),
    ("858069", {"colchicine"}), ("966222", {"levothyroxine"}), ("896209", {"fluticasone", "salmeterol"}),
    ("745679", {"albuterol"}), ("2123111", {"albuterol"}), ("745752", {"albuterol"}), ("859088", {"albuterol"}),
    ("245314", {"albuterol"}), ("351136", {"albuterol"}), ("630208", {"albuterol"}), ("312617", {"prednisone"}),
    ("197886", {"hydrochlorothiazide", "lisinopril"}), ("197887", {"hydrochlorothiazide", "lisinopril"}),
    ("979471", {"hydrochlorothiazide", "losartan"}), ("859749", {"rosuvastatin"}),
    ("404011", {"amlodipine", "atorvastatin"}), ("83367", {"atorvastatin"}),
])
def test_products_map_to_their_ingredients(terminology: Terminology, code: str, ingredients: set[str]) -> None:
    assert terminology.ingredients_for(RXNORM, code) == ingredients


def test_classes_of_ingredients(terminology: Terminology) -> None:
    combination = terminology.ingredient_classes({"hydrochlorothiazide", "lisinopril"})
    assert combination == {"thiazide_diuretic", "ace_inhibitor"}
    assert terminology.ingredient_classes({"atorvastatin", "amlodipine"}) == {"statin", "statin_interacting"}
    assert terminology.ingredient_classes({"losartan"}) == {"arb"}
    assert terminology.ingredient_classes({"dexamethasone"}) == {"systemic_corticosteroid"}  # no K-wasting class
    assert terminology.ingredient_classes({"fludrocortisone"}) == {"potassium_wasting_corticosteroid"}


def test_atc_codes_match_without_case(terminology: Terminology) -> None:
    assert terminology.ingredients_for(ATC, "c10aa05") == {"atorvastatin"}
    assert terminology.ingredients_for(ATC, "C10BA02") == {"simvastatin", "ezetimibe"}


@pytest.mark.parametrize(("text", "expected"), [
    ("Hydrochlorothiazide 25 MG Oral Tablet", {"hydrochlorothiazide"}),  # not chlorothiazide
    ("Levalbuterol 0.63 MG/3ML Inhalation Solution", {"levalbuterol"}),  # not albuterol
    ("methylPREDNISolone 4 MG Oral Tablet", {"methylprednisolone"}),  # not prednisolone
    ("Penicillin V Potassium 250 MG Oral Tablet", set()),  # the salt is not potassium chloride
    ("losartan potassium 50 MG", {"losartan"}),  # the salt is not potassium chloride
    ("Potassium Chloride 20 MEQ Extended Release Oral Tablet", {"potassium chloride"}),
    ("Ethacrynic Acid 25 MG", {"ethacrynic acid"}),
    ("", set()),
])
def test_ingredient_names_match_whole_words(terminology: Terminology, text: str, expected: set[str]) -> None:
    assert terminology.ingredients_in_text(text) == expected


def test_topical_forms_do_not_count_for_systemic_classes(terminology: Terminology) -> None:
    assert terminology.ingredient_classes({"ketoconazole"}, "ketoconazole 20 MG/ML Topical Cream") == frozenset()
    assert terminology.ingredient_classes({"hydrocortisone"}, "Hydrocortisone 1% Ointment") == frozenset()
    assert terminology.ingredient_classes({"ketoconazole"}, "ketoconazole 200 MG Oral Tablet") == {"statin_interacting"}
    assert terminology.ingredient_classes({"albuterol"}, "albuterol nasal") == {"beta2_agonist"}  # not systemic-only


@pytest.mark.parametrize(("system", "code", "concepts"), [
    (SNOMED, "55300003", ("cramp",)),
    (ICD10CM, "R25.2", ("cramp", "spasm")),
    (ICD10CM, "r252", ("cramp", "spasm")),
    (ICD10CM, "G47.62", ("cramp",)),
    (ICD10CM, "M62.838", ("spasm",)),
    (ICD10CM, "I82.401", ("dvt",)),  # by the I82.4 prefix
    (ICD10CM, "E03.9", ("hypothyroidism",)),
    (ICD10CM, "N18.31", ("ckd", "ckd_stage_3_5")),
    (ICD10CM, "N18.2", ("ckd",)),  # stage 2 is not stage 3-5
    (ICD10CM, "Z99.2", ("dialysis",)),
    (ICD10CM, "I50.22", ("heart_failure",)),  # by the I50 prefix
    (ICD10CM, "E11.9", ("diabetes",)),
    (SNOMED, "83664006", ("hypothyroidism",)),
    (SNOMED, "38341003", ()),  # hypertension: no concept here
])
def test_finding_concepts(terminology: Terminology, system: str, code: str, concepts: tuple[str, ...]) -> None:
    assert terminology.concepts_for(system, code) == concepts


# ---------------------------------------------------------------- loading errors name file and path
def broken_copy(tmp_path: Path, name: str, change) -> Path:
    target = tmp_path / "valuesets"
    shutil.copytree(SHIPPED, target, ignore=shutil.ignore_patterns("__pycache__"))
    doc = json.loads((target / name).read_text("utf-8"))
    change(doc)
    (target / name).write_text(json.dumps(doc), "utf-8")
    return target


def test_a_copy_of_the_shipped_files_loads(tmp_path: Path) -> None:
    loaded = Terminology.load(broken_copy(tmp_path, "findings.json", lambda doc: None))
    assert loaded.lab_loinc_codes() == Terminology.load().lab_loinc_codes()


@pytest.mark.parametrize(("name", "change", "message"), [
    ("findings.json", lambda d: d["entries"][0].update(certainty="X"), r"findings\.json: at entries/0/certainty"),
    ("lab-analytes.json", lambda d: d["entries"][0].update(analyte="kalium"),
     r"lab-analytes\.json: at entries/0/analyte: unknown analyte 'kalium'"),
    ("findings.json", lambda d: d["entries"][0].update(concepts=["cramps"]),
     r"findings\.json: at entries/0/concepts: unknown concept"),
    ("findings.json", lambda d: d["entries"][0].update(source="nowhere"),
     r"findings\.json: at entries/0/source: 'nowhere'"),
    ("findings.json", lambda d: d.update(id="symptoms"), r"findings\.json: at id: 'symptoms' differs"),
    ("findings.json", lambda d: d["entries"].append({**d["entries"][0], "system": LOINC, "code": "2823-3"}),
        r"\.json: at entries/\d+: http://loinc\.org\|2823-3 is also defined in (findings|lab-analytes)"),
    ("findings.json", lambda d: d["entries"][0].update(match="prefix"),
     r"findings\.json: at entries/0/match: only ICD-10-CM codes match by prefix"),
    ("medication-classes.json", lambda d: d["classes"]["statin"]["ingredients"].append("cerivastatin"),
        r"classes/statin: no RxNorm entry names ingredient\(s\) cerivastatin"),
])
def test_broken_files_are_refused_with_file_and_path(tmp_path: Path, name: str, change, message: str) -> None:
    with pytest.raises(ValueSetError, match=message):
        Terminology.load(broken_copy(tmp_path, name, change))


def test_unreadable_json_is_refused(tmp_path: Path) -> None:
    target = broken_copy(tmp_path, "findings.json", lambda doc: None)
    (target / "findings.json").write_text("{not json", "utf-8")
    with pytest.raises(ValueSetError, match=r"findings\.json: cannot read"):
        Terminology.load(target)


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueSetError, match="no value set files"):
        Terminology.load(tmp_path)
