"""Site code maps (issue 18 item 2): a hospital's FHIR R4 ConceptMaps (``concept_maps_dir``) map its local lab,
medication and problem codes onto the LOINC, RxNorm and SNOMED CT codes the service reads.

The fixture (tests/data/concept_maps) is a patient whose labs, drugs and cramps carry only local codes, and the
site's map folder: one ConceptMap file and one Bundle of two. Over real HTTP against the real app, the mapped patient
gets the cards of the same patient coded in LOINC/RxNorm/SNOMED CT; without the maps the service is silent. The
``terminology check`` and ``rules check`` commands are run as the real CLI, one problem kind at a time.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from support.hookcalls import assert_valid_response
from support.wsgi_server import running

from cds_service import create_app
from cds_service.config import ConfigError
from cds_service.facts.build import build_facts
from cds_service.facts.concept_maps import read_site_maps
from cds_service.facts.terminology import SystemCode, Terminology
from cds_service.record.model import PatientRecord

DATA = Path(__file__).resolve().parent / "data" / "concept_maps"
SITE = DATA / "site"
REQUEST = json.loads((DATA / "local-codes-request.json").read_text("utf-8"))
PV = "muscle-cramps-patient-view"
LAB = "http://hospital.example.org/lab-codes"
FORMULARY = "urn:oid:2.16.840.1.113883.3.9999.1.2"
PROBLEMS = "http://hospital.example.org/problem-codes"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
# What each local code of the fixture means, written out here (not read from the maps): the standard-coded twin.
MEANING = {
    (LAB, "K-SER"): (LOINC, "2823-3"),
    (LAB, "CK-TOT"): (LOINC, "2157-6"),
    (LAB, "CREA-SER"): (LOINC, "2160-0"),
    (FORMULARY, "100431"): (RXNORM, "313988"),
    (FORMULARY, "100977"): (RXNORM, "617311"),
    (PROBLEMS, "PL-0042"): (SNOMED, "55300003"),
}


def standard_coded(node: Any) -> Any:
    """``node`` with every local coding replaced by the standard code it means."""
    if isinstance(node, list):
        return [standard_coded(item) for item in node]
    if not isinstance(node, dict):
        return node
    meaning = MEANING.get((str(node.get("system")), str(node.get("code"))))
    if meaning is not None:
        system, code = meaning
        return {**node, "system": system, "code": code}
    return {key: standard_coded(value) for key, value in node.items()}


def cards(base_url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = requests.post(f"{base_url}/cds-services/{PV}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert_valid_response(response.json())
    return list(response.json()["cards"])


def shown(found: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(c["indicator"], c["summary"], c.get("detail", "")) for c in found]


@pytest.fixture
def site_url(make_app: Any) -> Iterator[str]:
    with running(make_app(concept_maps_dir=str(SITE))) as url:
        yield url


@pytest.fixture
def plain_url(make_app: Any) -> Iterator[str]:
    with running(make_app()) as url:
        yield url


# ---------------------------------------------------------------- over HTTP, against the real app
def test_the_mapped_patient_gets_the_cards_of_the_standard_coded_one(site_url: str, plain_url: str) -> None:
    mapped = cards(site_url, copy.deepcopy(REQUEST))
    standard = cards(plain_url, standard_coded(REQUEST))
    assert [c["indicator"] for c in standard] == ["critical", "critical"]
    assert "potassium" in standard[0]["summary"].lower() and "CK" in standard[1]["summary"]
    assert shown(mapped) == shown(standard)
    assert shown(cards(site_url, standard_coded(REQUEST))) == shown(standard)  # standard codes mean what they meant


def test_without_the_maps_the_local_codes_are_not_read(plain_url: str) -> None:
    assert cards(plain_url, copy.deepcopy(REQUEST)) == []


def test_discovery_asks_for_the_local_lab_codes_too(site_url: str, plain_url: str) -> None:
    def labs_template(url: str) -> str:
        services = requests.get(f"{url}/cds-services", timeout=10).json()["services"]
        return str(next(s for s in services if s["id"] == PV)["prefetch"]["labs"])

    site, plain = labs_template(site_url), labs_template(plain_url)
    assert f"{LAB}|K-SER" in site and f"{LAB}|CK-TOT" in site and LAB not in plain
    assert f"{LAB}|K-WB-POC" not in site  # mapped only "inexact": never read, so never asked for
    assert site.replace(f",{LAB}|CK-TOT,{LAB}|CREA-SER,{LAB}|K-SER", "") == plain


# ---------------------------------------------------------------- what is read as what
def one_map(folder: Path, source: str, target: str, *elements: dict[str, Any], name: str = "map.json") -> Path:
    """A ConceptMap file in ``folder`` with one group of ``elements``."""
    folder.mkdir(exist_ok=True)
    resource = {"resourceType": "ConceptMap", "status": "active",
                "group": [{"source": source, "target": target, "element": list(elements)}]}
    (folder / name).write_text(json.dumps(resource), "utf-8")
    return folder


def element(code: str, target: str, equivalence: str, **more: Any) -> dict[str, Any]:
    return {"code": code, "target": [{"code": target, "equivalence": equivalence, **more}]}


def test_only_safe_equivalences_are_applied(tmp_path: Path, terminology: Terminology) -> None:
    """equal/equivalent, and wider/subsumes (the target is wider: what the local code names is also the target);
    never narrower/specializes (the target is more specific), inexact, relatedto, unmatched or disjoint."""
    equivalences = ["equal", "equivalent", "wider", "subsumes", "narrower", "specializes", "inexact", "relatedto",
                    "unmatched", "disjoint"]
    folder = one_map(tmp_path / "maps", FORMULARY, RXNORM,
                     *(element(f"L-{e}", "617311", e) for e in equivalences))
    maps = read_site_maps(folder, terminology)
    assert maps.problems == []
    assert sorted(source.code for source in maps.mappings) == ["L-equal", "L-equivalent", "L-subsumes", "L-wider"]
    assert maps.not_applied == 6


def test_a_mapped_lab_reads_as_its_loinc_code_and_an_unmapped_one_is_not_a_lab(tmp_path: Path,
                                                                              terminology: Terminology) -> None:
    folder = one_map(tmp_path / "maps", LAB, LOINC, element("K-SER", "2823-3", "equivalent"))
    site = terminology.with_site_maps({s: m.target for s, m in read_site_maps(folder, terminology).mappings.items()})

    def potassium(system: str, code: str) -> list[tuple[float, str, str]]:
        observation = {"resourceType": "Observation", "id": "k", "status": "final",
                       "code": {"coding": [{"system": system, "code": code}]},
                       "effectiveDateTime": "2026-10-30", "valueQuantity": {"value": 3.1, "code": "mmol/L"}}
        facts = build_facts(PatientRecord("p", {"Observation": [observation]}), site, datetime(2026, 11, 1, tzinfo=UTC))
        return [(r.value, r.code.system, r.code.code) for r in facts.labs.get("potassium", ())]

    assert potassium(LAB, "K-SER") == [(3.1, LOINC, "2823-3")]  # shown as the LOINC code it is read as
    assert potassium(LAB, "2823-3") == []  # the LOINC code's digits in another system are not LOINC
    assert potassium("http://other.example.org/codes", "K-SER") == []  # the code in another system is not mapped


# ---------------------------------------------------------------- bad maps stop the start, one line per problem
def test_a_bad_map_is_a_startup_error_naming_file_and_entry(tmp_path: Path) -> None:
    folder = one_map(tmp_path / "maps", LAB, LOINC, element("X-1", "1-8", "equivalent"))
    with pytest.raises(ConfigError) as raised:
        create_app({"data_dir": str(tmp_path / "data"), "concept_maps_dir": str(folder)})
    assert str(raised.value).splitlines() == [
        f"concept_maps_dir = '{folder}': 1 problem(s) (cds-service terminology check):",
        f"  map.json: group 0 element X-1: unknown target: the service does not read {LOINC}|1-8",
    ]


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    environment |= {"CDS_DATA_DIR": str(cwd / "data"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "cds_service.server.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def test_a_missing_folder_is_one_clear_line_naming_the_key(tmp_path: Path) -> None:
    result = cli("evaluate", str(DATA / "local-codes-request.json"), cwd=tmp_path,
                 env={"CDS_CONCEPT_MAPS_DIR": str(tmp_path / "nowhere")})
    assert result.returncode == 2
    assert result.stderr.strip() == (f"cds-service: configuration error: concept_maps_dir = '{tmp_path / 'nowhere'}': "
                                     "not a folder (from CDS_CONCEPT_MAPS_DIR)")


def test_evaluate_refuses_to_start_with_a_bad_map(tmp_path: Path) -> None:
    folder = one_map(tmp_path / "maps", FORMULARY, RXNORM, element("1", "999999999", "equal"))
    result = cli("evaluate", str(DATA / "local-codes-request.json"), cwd=tmp_path,
                 env={"CDS_CONCEPT_MAPS_DIR": str(folder)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"map.json: group 0 element 1: unknown target: the service does not read {RXNORM}|999999999" in \
        result.stderr


def test_config_show_lists_the_setting(tmp_path: Path) -> None:
    result = cli("config", "show", cwd=tmp_path, env={"CDS_CONCEPT_MAPS_DIR": str(SITE)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["concept_maps_dir"] == str(SITE)


# ---------------------------------------------------------------- the check commands, one problem kind at a time
def bad_site(folder: Path) -> Path:
    """The fixture's maps plus one file per problem kind."""
    shutil.copytree(SITE, folder)
    (folder / "broken.json").write_text('{"resourceType": "ConceptMap", ', "utf-8")
    (folder / "patient.json").write_text(json.dumps({"resourceType": "Patient", "id": "p"}), "utf-8")
    (folder / "no-status.json").write_text(json.dumps({"resourceType": "ConceptMap"}), "utf-8")
    one_map(folder, LAB, LOINC, element("NA-SER", "1-8", "equivalent"), name="unknown-loinc.json")
    one_map(folder, FORMULARY, RXNORM, element("100999", "1191", "equivalent"), name="unknown-rxnorm.json")
    one_map(folder, LAB, LOINC, element("K-SER", "6298-4", "equivalent"), name="duplicate.json")
    one_map(folder, LAB, LOINC, element("CK-KAT", "2157-6", "equivalent", dependsOn=[
        {"property": "Observation.valueQuantity.code", "system": "http://unitsofmeasure.org", "value": "mg/dL"}]),
        name="unit.json")
    one_map(folder, LAB, LOINC, element("K2", "2823-3", "equivalent", dependsOn=[
        {"property": "specimen", "value": "venous"}]), name="depends.json")
    one_map(folder, LOINC, LOINC, element("2823-3", "6298-4", "equivalent"), name="own-code.json")
    return folder


EXPECTED_PROBLEMS = {
    "JSON that does not parse": "FAIL broken.json: cannot be read as JSON",
    "another resource": "FAIL patient.json: not a FHIR R4 ConceptMap: resource_type: ``fhir.resources.R4B."
                        "conceptmap.ConceptMap`` expects resource type ``ConceptMap``, but got ``Patient``.",
    "a ConceptMap missing a required element": "FAIL no-status.json: not a FHIR R4 ConceptMap: status: Value for "
                                               "the field 'status' is required.",
    "unknown LOINC target": f"FAIL unknown-loinc.json: group 0 element NA-SER: unknown target: the service does not "
                            f"read {LOINC}|1-8",
    "unknown RxNorm target": f"FAIL unknown-rxnorm.json: group 0 element 100999: unknown target: the service does "
                             f"not read {RXNORM}|1191",
    "duplicate source across files": f"FAIL lab-codes.json: group 0 element K-SER: duplicate source: {LAB}|K-SER is "
                                     f"also mapped to {LOINC}|6298-4 (duplicate.json: group 0 element K-SER)",
    "unit the analyte cannot convert": "FAIL unit.json: group 0 element CK-KAT: unit 'mg/dL' cannot be converted "
                                       "to ck (U/L)",
    "a condition the service cannot see": "FAIL depends.json: group 0 element K2: dependsOn 'specimen' is not "
                                          "supported (only Observation.valueQuantity.code on a lab map)",
    "a code the service reads itself": f"FAIL own-code.json: group 0 element 2823-3: source {LOINC}|2823-3 is a code "
                                       "the service reads itself; a site map cannot change it",
}


@pytest.fixture(scope="module")
def terminology_check(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    work = tmp_path_factory.mktemp("check")
    return cli("terminology", "check", "--concept-maps-dir", str(bad_site(work / "maps")), cwd=work)


@pytest.mark.parametrize("kind", EXPECTED_PROBLEMS)
def test_terminology_check_reports_each_problem_with_file_and_entry(
    terminology_check: subprocess.CompletedProcess[str], kind: str
) -> None:
    assert terminology_check.returncode == 1
    lines = terminology_check.stdout.splitlines()
    assert any(line.startswith(EXPECTED_PROBLEMS[kind]) for line in lines), terminology_check.stdout


def test_terminology_check_reports_nothing_else(terminology_check: subprocess.CompletedProcess[str]) -> None:
    lines = terminology_check.stdout.splitlines()
    assert len([line for line in lines if line.startswith("FAIL")]) == len(EXPECTED_PROBLEMS)
    assert lines[-1] == f"terminology check: {len(EXPECTED_PROBLEMS)} problem(s)"


def test_terminology_check_passes_the_fixture_maps(tmp_path: Path) -> None:
    result = cli("terminology", "check", cwd=tmp_path, env={"CDS_CONCEPT_MAPS_DIR": str(SITE)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"concept maps: 2 file(s) in {SITE}, 6 local code(s) mapped, 1 target(s) not applied "
        "(equivalence not equal, equivalent, wider or subsumes)",
        "terminology check: OK",
    ]


def test_terminology_check_without_a_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("terminology", "check", cwd=tmp_path)
    assert result.returncode == 2
    assert "no concept_maps_dir is set" in result.stderr


def test_rules_check_checks_the_maps_when_the_setting_is_set(tmp_path: Path) -> None:
    folder = one_map(tmp_path / "maps", LAB, LOINC, element("NA-SER", "1-8", "equivalent"))
    result = cli("rules", "check", cwd=tmp_path, env={"CDS_CONCEPT_MAPS_DIR": str(folder)})
    assert result.returncode == 1
    assert f"FAIL map.json: group 0 element NA-SER: unknown target: the service does not read {LOINC}|1-8" in \
        result.stdout.splitlines()


def test_site_codes_are_keyed_by_system_and_code(terminology: Terminology) -> None:
    site = terminology.with_site_maps({SystemCode(FORMULARY, "100977"): SystemCode(RXNORM, "617311")})
    assert site.ingredients_for(FORMULARY, "100977") == frozenset({"atorvastatin"})
    assert site.ingredients_for("urn:oid:1.2.3", "100977") == frozenset()
    assert terminology.ingredients_for(FORMULARY, "100977") == frozenset()  # the shipped tables are unchanged
