"""End to end, as an EHR calls the service: the production server (``cds-service serve``), the Medplum FHIR
server holding the patients, and an EHR simulator (tests/support/ehr.py) that reads discovery, runs the
service's own prefetch templates against Medplum and posts the hook request.

* every fixture bundle gets the cards fixtures/expectations.json lists, once prefetched by the EHR as the sandbox
  does (prefetch and fhirServer) and once with no prefetch (the service reads Medplum itself);
* a record of about 1,500 resources (years of labs in Blood and Serum/Plasma codes, vitals, other labs,
  conditions, medications) gives the expected card with cramps and none without, however it is delivered;
* the ways real records say the same thing (codes, negations, statuses, medication shapes; each prefetched and
  read by the service) and the units and thresholds of the rules;
* a failing, hanging or slow-paging FHIR server and malformed or edge-case requests get the right status and an
  OperationOutcome, never a server error.

The rule behind each card is looked up in the service's own database of issued cards (the card itself does not
name it).
"""
from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from sqlalchemy import Engine, create_engine, select
from support.ehr import EhrSimulator, HookExchange, fill_template
from support.fhir_server import FhirTestServer
from support.hookcalls import assert_operation_outcome, assert_valid_response
from support.live import serve

from cds_service.storage.database import issued_cards

pytestmark = [pytest.mark.fhir, pytest.mark.slow]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EXPECTATIONS = json.loads((FIXTURES / "expectations.json").read_text("utf-8"))
NAMES = sorted(EXPECTATIONS["fixtures"])
NOW = datetime.fromisoformat(EXPECTATIONS["now"].replace("Z", "+00:00"))

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

Outcome = list[tuple[str, str]]  # (rule id, indicator) of each card, in response order


# --- the running service and the EHR ------------------------------------------------------------------------


@dataclass
class LiveService:
    base_url: str
    database: Engine  # the service's own database

    def rule_of(self, card_uuid: str) -> str:
        """The rule that issued a card, from the service's record of issued cards (written in batches, so it is
        waited for a few of the service's flush intervals)."""
        deadline = time.monotonic() + 5
        while True:
            with self.database.connect() as conn:
                found = conn.execute(
                    select(issued_cards.c.rule_id).where(issued_cards.c.card_uuid == card_uuid)
                ).scalar_one_or_none()
            if found is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert found is not None, f"the service has no record of issuing card {card_uuid}"
        return str(found)


class SlowPagesFhirServer:
    """A loopback FHIR server for one patient whose searches answer page 1 at once and hold every later page.

    Page 1 of the labs search holds a potassium of 3.0 and a next link; the cramp and furosemide are on the
    Condition and MedicationRequest searches. It stands for a FHIR server too slow to page through in time.
    """

    HOLD_SECONDS = 3.0

    def __init__(self) -> None:
        pages = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                form = self.rfile.read(length).decode() if length else ""
                params = dict(parse_qsl(url.query)) | dict(parse_qsl(form))
                body = pages.answer(url.path.removeprefix("/fhir/").removesuffix("/_search"), params)
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_port}/fhir"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def answer(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        if path.startswith("Patient/"):
            return patient()
        if "_offset" in params:
            time.sleep(self.HOLD_SECONDS)
            return {"resourceType": "Bundle", "type": "searchset"}
        found = {"Condition": [condition()], "MedicationRequest": [med_request()]}.get(path, [])
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if path == "Observation" and "2823-3" in params.get("code", ""):
            found = [potassium(3.0)]
            bundle["link"] = [{"relation": "next", "url": f"{self.base_url}/Observation?_offset=1&_count=1"}]
        bundle["entry"] = [{"resource": r, "search": {"mode": "match"}} for r in found]
        return bundle

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture(scope="module")
def slow_pages() -> Iterator[SlowPagesFhirServer]:
    server = SlowPagesFhirServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, fhir_server_process: FhirTestServer, slow_pages: SlowPagesFhirServer
) -> Iterator[LiveService]:
    """``cds-service serve`` (gunicorn), evaluating at the fixtures' time, allowed to read the test FHIR servers."""
    tmp = tmp_path_factory.mktemp("e2e-serve")
    env = {
        "CDS_NOW": EXPECTATIONS["now"],
        "CDS_FHIR_ALLOWLIST": json.dumps([fhir_server_process.base_url, slow_pages.base_url]),
        "CDS_FHIR_ALLOW_UNAUTHENTICATED": "true",
    }
    with serve(tmp, env=env) as base_url:
        database = create_engine(f"sqlite:///{tmp / 'data' / 'cds-service.sqlite3'}")
        try:
            yield LiveService(base_url, database)
        finally:
            database.dispose()


@pytest.fixture
def ehr(service: LiveService, fhir_server: FhirTestServer) -> Iterator[EhrSimulator]:
    simulator = EhrSimulator(service.base_url, fhir_server.base_url)
    try:
        yield simulator
    finally:
        simulator.close()


def warm_searches(ehr: EhrSimulator, hook: str, context: Mapping[str, Any]) -> None:
    """Run the templates once so the Medplum test server has its search results cached.

    The test server scans and sorts in memory: a cold search of a long record can take most of the hook's time
    budget on a busy machine. Tests that check what the service concludes from the record warm it first; the
    time budget itself is tested in test_deadline.py.
    """
    ehr.prefetch(hook, context)


def outcome(service: LiveService, exchange: HookExchange) -> Outcome:
    """The (rule, indicator) of each card of a successful, spec-valid response."""
    resp = exchange.response
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert_valid_response(body)
    return [(service.rule_of(card["uuid"]), card["indicator"]) for card in body["cards"]]


def test_simulator_fills_the_2_0_1_prefetch_tokens() -> None:
    context = {"patientId": "p 1", "userId": "PractitionerRole/r1", "encounterId": "e/1"}
    assert fill_template("Patient/{{context.patientId}}", context) == "Patient/p%201"
    assert fill_template("Encounter/{{ context.encounterId }}", context) == "Encounter/e%2F1"
    assert fill_template("PractitionerRole/{{userPractitionerRoleId}}", context) == "PractitionerRole/r1"
    assert fill_template("Practitioner/{{userPractitionerId}}", context) is None  # the user is not one
    assert fill_template("Observation?patient={{context.patientId}}&encounter={{context.missing}}", context) is None


# --- 1 and 2: the fixture patients, prefetched by the EHR and read by the service ------------------------------


def _fixture(name: str) -> tuple[dict[str, Any], list[dict[str, Any]], Outcome]:
    expected = EXPECTATIONS["fixtures"][name]
    request = json.loads((FIXTURES / name).read_text("utf-8"))
    bundle = json.loads((FIXTURES / expected["bundle"]).read_text("utf-8"))
    resources = [entry["resource"] for entry in bundle["entry"]]
    return request, resources, list(zip(expected["rules"], expected["indicators"], strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_fixture_patient_prefetched_by_the_ehr(name, service, ehr, fhir_server) -> None:
    """Sandbox-shaped: prefetch from the service's own templates plus fhirServer. The service goes back to the
    FHIR server only for what the first pages lack (the test server's pages hold 100 resources): a partial labs
    Bundle by its own date-filtered search, any other by the pages after the first."""
    request, resources, expected = _fixture(name)
    fhir_server.load(resources)
    body, omitted = ehr.request(request["hook"], request["context"])
    assert omitted == []
    assert set(body["prefetch"]) == set(ehr.discovery()[request["hook"]]["prefetch"])
    by_the_ehr = fhir_server.requests()
    assert any(r["method"] == "POST" for r in by_the_ehr), "the labs template is long: form-encoded POST _search"
    exchange = HookExchange(body, ehr.post(request["hook"], body))
    assert outcome(service, exchange) == expected
    by_the_service = fhir_server.requests()[len(by_the_ehr) :]
    assert all("_offset=" in r["url"] or "date=ge" in r["url"] + r["form"] for r in by_the_service), by_the_service


@pytest.mark.parametrize("name", NAMES)
def test_fixture_patient_read_by_the_service(name, service, ehr, fhir_server) -> None:
    """No prefetch, Medplum as fhirServer: the service runs its templates itself and reaches the same cards."""
    request, resources, expected = _fixture(name)
    fhir_server.load(resources)
    warm_searches(ehr, request["hook"], request["context"])
    before = len(fhir_server.requests())
    exchange = ehr.call(request["hook"], request["context"], prefetch=False)
    assert "prefetch" not in exchange.request
    assert outcome(service, exchange) == expected
    assert len(fhir_server.requests()) > before, "the service did not read the FHIR server"


# --- resource builders (dates relative to NOW) ---------------------------------------------------------------

_ids = itertools.count(1)
PATIENT_ID = "e2e-patient"
CONTEXT = {"userId": "Practitioner/e2e-clinician", "patientId": PATIENT_ID}  # patient-view's context


def _when(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _subject() -> dict[str, str]:
    return {"reference": f"Patient/{PATIENT_ID}"}


def concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def patient() -> dict[str, Any]:
    return {"resourceType": "Patient", "id": PATIENT_ID, "gender": "female", "birthDate": "1954-03-12"}


def condition(
    system: str = SNOMED,
    code: str = "55300003",
    display: str = "Cramp",
    *,
    clinical: str | None = "active",
    verification: str | None = None,
    onset_days: float = 6,
    abatement_days: float | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": f"cond-{next(_ids)}",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "problem-list-item",
                    }
                ]
            }
        ],
        "code": concept(system, code, display),
        "subject": _subject(),
        "onsetDateTime": _when(onset_days),
        "recordedDate": _when(onset_days),
    }
    if clinical:
        resource["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": clinical}]}
    if verification:
        resource["verificationStatus"] = {"coding": [{"system": VERIFICATION, "code": verification}]}
    if abatement_days is not None:
        resource["abatementDateTime"] = _when(abatement_days)
    return resource


def lab(
    loinc: str,
    value: float,
    unit: str,
    *,
    days: float = 2,
    ucum: str | None = None,
    high: float | None = None,
    category: str = "laboratory",
) -> dict[str, Any]:
    quantity = {"value": value, "unit": unit, "system": UCUM, "code": ucum or unit}
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"obs-{next(_ids)}",
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": _subject(),
        "effectiveDateTime": _when(days),
        "issued": _when(days),
        "valueQuantity": quantity,
    }
    if high is not None:
        resource["referenceRange"] = [{"high": {**quantity, "value": high}}]
    return resource


def symptom(code: dict[str, Any], *, status: str = "final", days: float = 3, **value: Any) -> dict[str, Any]:
    """A symptom Observation (category exam) with ``code`` and any value[x] / interpretation given."""
    return {
        "resourceType": "Observation",
        "id": f"sym-{next(_ids)}",
        "status": status,
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "exam"}]}],
        "code": code,
        "subject": _subject(),
        "effectiveDateTime": _when(days),
        **value,
    }


CRAMP_CODE = concept(SNOMED, "55300003", "Cramp")
SYMPTOM_PANEL = concept(LOINC, "75325-1", "Symptom")
ABSENT = concept(SNOMED, "2667000", "Absent")
FUROSEMIDE = ("313988", "furosemide 40 MG Oral Tablet")
ATORVASTATIN = ("617311", "atorvastatin 40 MG Oral Tablet")


def medication(rxnorm: str, display: str) -> dict[str, Any]:
    return {"resourceType": "Medication", "id": f"med-{next(_ids)}", "code": concept(RXNORM, rxnorm, display)}


def med_request(
    drug: tuple[str, str] = FUROSEMIDE, *, status: str = "active", days: float = 200, **medication_x: Any
) -> dict[str, Any]:
    """A MedicationRequest; pass ``medicationReference=...`` (and ``contained``) instead of the coded drug."""
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": f"mr-{next(_ids)}",
        "status": status,
        "intent": "order",
        "subject": _subject(),
        "authoredOn": _when(days),
    }
    resource.update(medication_x or {"medicationCodeableConcept": concept(RXNORM, *drug)})
    return resource


def med_statement(
    drug: tuple[str, str] = FUROSEMIDE, *, status: str = "active", days: float = 200, **medication_x: Any
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationStatement",
        "id": f"ms-{next(_ids)}",
        "status": status,
        "subject": _subject(),
        "effectivePeriod": {"start": _when(days)},
        "dateAsserted": _when(days),
    }
    resource.update(medication_x or {"medicationCodeableConcept": concept(RXNORM, *drug)})
    return resource


def potassium(value: float, *, loinc: str = "2823-3", unit: str = "mmol/L", ucum: str | None = None) -> dict[str, Any]:
    return lab(loinc, value, unit, ucum=ucum)


def _comparator(observation: dict[str, Any], comparator: str) -> dict[str, Any]:
    """The lab reported beyond the analyser's range (``<8`` or ``>5000``)."""
    return {**observation, "valueQuantity": {**observation["valueQuantity"], "comparator": comparator}}


def ck(value: float, *, high: float | None = 200) -> dict[str, Any]:
    return lab("2157-6", value, "U/L", high=high)


# --- 4: variants, each through the templates, prefetched and read --------------------------------------------

HYPOKALEMIA = [("diuretic-hypokalemia", "warning")]
SILENT: Outcome = []


@dataclass(frozen=True)
class Variant:
    name: str
    build: Callable[[], list[dict[str, Any]]]
    expected: Outcome


def _on_furosemide_with_low_k(*cramp: dict[str, Any]) -> list[dict[str, Any]]:
    return [*cramp, med_request(), potassium(3.0)]


def _cramp_on_furosemide(*labs: dict[str, Any]) -> list[dict[str, Any]]:
    return [condition(), med_request(), *labs]


def _magnesium(value: float, unit: str, *, ucum: str | None = None) -> list[dict[str, Any]]:
    """Cramps on furosemide, a normal potassium and a magnesium (LOINC 2601-3 for mmol/L, else 19123-9)."""
    loinc = "2601-3" if unit == "mmol/L" else "19123-9"
    return _cramp_on_furosemide(potassium(4.0), lab(loinc, value, unit, ucum=ucum))


def _cramp_on_atorvastatin(*labs: dict[str, Any]) -> list[dict[str, Any]]:
    return [condition(), med_request(ATORVASTATIN), *labs]


def _with_medication(holder: Callable[..., dict[str, Any]], med: dict[str, Any]) -> list[dict[str, Any]]:
    reference = {"medicationReference": {"reference": f"Medication/{med['id']}", "display": "furosemide"}}
    return [condition(), med, holder(**reference), potassium(3.0)]


def _contained_medication() -> list[dict[str, Any]]:
    med = {**medication(*FUROSEMIDE), "id": "furo"}
    holder = med_request(medicationReference={"reference": "#furo"}, contained=[med])
    return [condition(), holder, potassium(3.0)]


# How the record says it (codes, statuses, negations, medication shapes): each prefetched and read by the
# service, since the delivery decides what reaches the rules.
DOCUMENTED = [
    # how the cramp is documented
    Variant("cramp-snomed-condition", lambda: _on_furosemide_with_low_k(condition()), HYPOKALEMIA),
    Variant(
        "cramp-icd10cm-r25.2",
        lambda: _on_furosemide_with_low_k(condition(ICD10CM, "R25.2", "Cramp and spasm")),
        HYPOKALEMIA,
    ),
    Variant(
        "sleep-related-leg-cramps-icd10cm-g47.62",
        lambda: _on_furosemide_with_low_k(condition(ICD10CM, "G47.62", "Sleep related leg cramps")),
        HYPOKALEMIA,
    ),
    Variant(
        "spasm-snomed-45352006",
        lambda: _on_furosemide_with_low_k(condition(SNOMED, "45352006", "Spasm")),
        HYPOKALEMIA,
    ),
    Variant(
        "spasm-icd10cm-m62.838",
        lambda: _on_furosemide_with_low_k(condition(ICD10CM, "M62.838", "Other muscle spasm")),
        HYPOKALEMIA,
    ),
    Variant(
        "cramp-condition-without-clinical-status",
        lambda: _on_furosemide_with_low_k(condition(clinical=None, verification="confirmed")),
        HYPOKALEMIA,
    ),
    Variant(
        "cramp-observation-coded",
        lambda: _on_furosemide_with_low_k(symptom(CRAMP_CODE)),
        HYPOKALEMIA,
    ),
    Variant(
        "cramp-observation-value-true",
        lambda: _on_furosemide_with_low_k(symptom(CRAMP_CODE, valueBoolean=True)),
        HYPOKALEMIA,
    ),
    Variant(
        "cramp-observation-symptom-panel",
        lambda: _on_furosemide_with_low_k(symptom(SYMPTOM_PANEL, valueCodeableConcept=CRAMP_CODE)),
        HYPOKALEMIA,
    ),
    Variant(
        "spasm-observation-coded",
        lambda: _on_furosemide_with_low_k(symptom(concept(SNOMED, "45352006", "Spasm"))),
        HYPOKALEMIA,
    ),
    Variant(
        "cramp-icd10cm-without-dot",
        lambda: _on_furosemide_with_low_k(condition(ICD10CM, "R252", "Cramp and spasm")),
        HYPOKALEMIA,
    ),
    # negations, statuses and age: silent
    Variant(
        "cramp-observation-value-false",
        lambda: _on_furosemide_with_low_k(symptom(CRAMP_CODE, valueBoolean=False)),
        SILENT,
    ),
    Variant(
        "cramp-observation-value-absent",
        lambda: _on_furosemide_with_low_k(symptom(CRAMP_CODE, valueCodeableConcept=ABSENT)),
        SILENT,
    ),
    Variant(
        "cramp-observation-value-string-denies",
        lambda: _on_furosemide_with_low_k(symptom(CRAMP_CODE, valueString="denies")),
        SILENT,
    ),
    Variant(
        "cramp-symptom-panel-interpretation-negative",
        lambda: _on_furosemide_with_low_k(
            symptom(
                SYMPTOM_PANEL,
                valueCodeableConcept=CRAMP_CODE,
                interpretation=[concept(INTERPRETATION, "NEG", "Negative")],
            )
        ),
        SILENT,
    ),
    Variant(
        "cramp-observation-entered-in-error",
        lambda: _on_furosemide_with_low_k(symptom(CRAMP_CODE, status="entered-in-error")),
        SILENT,
    ),
    Variant(
        "cramp-condition-refuted",
        lambda: _on_furosemide_with_low_k(condition(verification="refuted")),
        SILENT,
    ),
    Variant(
        "cramp-condition-entered-in-error",
        lambda: _on_furosemide_with_low_k(condition(clinical=None, verification="entered-in-error")),
        SILENT,
    ),
    Variant(
        "cramp-resolved-long-ago",
        lambda: _on_furosemide_with_low_k(condition(clinical="resolved", onset_days=1100, abatement_days=1000)),
        SILENT,
    ),
    Variant(
        "cramp-observation-200-days-ago",
        lambda: _on_furosemide_with_low_k(symptom(CRAMP_CODE, days=200)),
        SILENT,
    ),
    Variant("no-cramp", lambda: [med_request(), potassium(3.0)], SILENT),
    # medication shapes
    Variant(
        "medication-reference-to-included-medication",
        lambda: _with_medication(med_request, medication(*FUROSEMIDE)),
        HYPOKALEMIA,
    ),
    Variant(
        "medication-reference-ingredient-code",
        lambda: _with_medication(med_request, medication("4603", "furosemide")),
        HYPOKALEMIA,
    ),
    Variant("medication-contained", _contained_medication, HYPOKALEMIA),
    Variant("medication-statement", lambda: [condition(), med_statement(), potassium(3.0)], HYPOKALEMIA),
    Variant(
        "medication-statement-with-reference",
        lambda: _with_medication(med_statement, medication(*FUROSEMIDE)),
        HYPOKALEMIA,
    ),
    Variant(
        "medication-statement-stopped",
        lambda: [condition(), med_statement(status="stopped"), potassium(3.0)],
        [("hypokalemia-no-culprit", "warning")],
    ),
    Variant(
        "medication-statement-not-taken",
        lambda: [condition(), med_statement(status="not-taken"), potassium(3.0)],
        [("hypokalemia-no-culprit", "warning")],
    ),
    Variant(
        "medication-statement-active-but-ended-long-ago",
        lambda: [
            condition(),
            {**med_statement(days=1100), "effectivePeriod": {"start": _when(1100), "end": _when(700)}},
            potassium(3.0),
        ],
        [("hypokalemia-no-culprit", "warning")],
    ),
    Variant("medication-request-stopped", lambda: [condition(), med_request(status="stopped"), potassium(3.0)],
            [("hypokalemia-no-culprit", "warning")]),
]

# Values, units, thresholds and drugs: what the service concludes from them does not depend on how the record
# arrived, so these run prefetched only.
INTERPRETED = [
    # the other loop and thiazide diuretics of clinical-reference.md §2.2, and a drug named only in text
    *(
        Variant(f"diuretic-{drug[1].split()[0]}", lambda drug=drug: [condition(), med_request(drug), potassium(3.0)],
                HYPOKALEMIA)
        for drug in (
            ("197418", "bumetanide 1 MG Oral Tablet"),
            ("198369", "torsemide 10 MG Oral Tablet"),
            ("197499", "chlorthalidone 25 MG Oral Tablet"),
            ("6916", "metolazone"),
        )
    ),
    Variant(
        "diuretic-text-only",
        lambda: [condition(), med_request(medicationCodeableConcept={"text": "Furosemide 20 mg tablet"}),
                 potassium(3.0)],
        HYPOKALEMIA,
    ),
    # potassium: codes, units, thresholds (< 3.5 warning, < 2.5 critical; Kardalas 2018)
    Variant("k-3.4-fires", lambda: _cramp_on_furosemide(potassium(3.4)), HYPOKALEMIA),
    Variant("k-3.5-silent", lambda: _cramp_on_furosemide(potassium(3.5)), SILENT),
    Variant("k-2.4-critical", lambda: _cramp_on_furosemide(potassium(2.4)), [("diuretic-hypokalemia", "critical")]),
    Variant("k-2.5-warning", lambda: _cramp_on_furosemide(potassium(2.5)), HYPOKALEMIA),
    Variant(
        "k-meq-per-l",
        lambda: _cramp_on_furosemide(potassium(3.0, unit="mEq/L", ucum="meq/L")),
        HYPOKALEMIA,
    ),
    Variant(
        "k-unit-text-only",
        lambda: _cramp_on_furosemide({**potassium(3.0), "valueQuantity": {"value": 3.0, "unit": "mmol/L"}}),
        HYPOKALEMIA,
    ),
    Variant(
        "k-date-only",
        lambda: _cramp_on_furosemide({**potassium(3.0), "effectiveDateTime": _when(2)[:10]}),
        HYPOKALEMIA,
    ),
    Variant(
        "k-newest-normal-older-low",
        lambda: _cramp_on_furosemide(
            {**potassium(3.0), "effectiveDateTime": _when(12)}, {**potassium(4.1), "effectiveDateTime": _when(1)}
        ),
        SILENT,
    ),
    Variant(
        "k-low-result-cancelled",
        lambda: _cramp_on_furosemide({**potassium(3.0), "status": "cancelled"}),
        [("diuretic-no-recent-electrolytes", "info")],
    ),
    Variant("k-blood-code-6298-4", lambda: _cramp_on_furosemide(potassium(3.0, loinc="6298-4")), HYPOKALEMIA),
    Variant("k-older-than-30-days", lambda: _cramp_on_furosemide({**potassium(3.0), "effectiveDateTime": _when(45)}),
            [("diuretic-no-recent-electrolytes", "info")]),
    # magnesium (< 1.7 mg/dL = 0.70 mmol/L = 1.4 mEq/L warning; < 1.2 mg/dL = 0.50 mmol/L critical)
    Variant(
        "mg-1.5-mg-dl",
        lambda: _magnesium(1.5, "mg/dL"),
        [("diuretic-hypomagnesemia", "warning")],
    ),
    Variant("mg-1.7-mg-dl-silent", lambda: _magnesium(1.7, "mg/dL"), SILENT),
    Variant("mg-1.8-mg-dl-silent", lambda: _magnesium(1.8, "mg/dL"), SILENT),
    Variant(
        "mg-0.60-mmol-l",
        lambda: _magnesium(0.60, "mmol/L"),
        [("diuretic-hypomagnesemia", "warning")],
    ),
    Variant("mg-0.70-mmol-l-silent", lambda: _magnesium(0.70, "mmol/L"), SILENT),
    Variant("mg-0.75-mmol-l-silent", lambda: _magnesium(0.75, "mmol/L"), SILENT),
    Variant(
        "mg-0.45-mmol-l-critical",
        lambda: _magnesium(0.45, "mmol/L"),
        [("diuretic-hypomagnesemia", "critical")],
    ),
    Variant(
        "mg-1.2-meq-l",
        lambda: _magnesium(1.2, "mEq/L", ucum="meq/L"),
        [("diuretic-hypomagnesemia", "warning")],
    ),
    # calcium (corrected < 8.5 mg/dL = 2.12 mmol/L warning, < 1.9 mmol/L critical, Turner 2016; ionized < 1.12 mmol/L;
    # a total calcium without albumin counts, uncorrected)
    Variant("ca-ionized-1.00", lambda: [condition(), lab("1994-3", 1.00, "mmol/L")], [("hypocalcemia", "warning")]),
    Variant("ca-ionized-1.20-silent", lambda: [condition(), lab("1994-3", 1.20, "mmol/L")], SILENT),
    Variant(
        "ca-total-2.00-mmol-l-albumin-4.0",
        lambda: [condition(), lab("2000-8", 2.00, "mmol/L"), lab("1751-7", 4.0, "g/dL")],
        [("hypocalcemia", "warning")],
    ),
    Variant(
        "ca-total-2.30-mmol-l-silent",
        lambda: [condition(), lab("2000-8", 2.30, "mmol/L"), lab("1751-7", 4.0, "g/dL")],
        SILENT,
    ),
    Variant(
        "ca-total-1.80-mmol-l-critical",
        lambda: [condition(), lab("2000-8", 1.80, "mmol/L"), lab("1751-7", 4.0, "g/dL")],
        [("hypocalcemia", "critical")],
    ),
    Variant("ca-total-2.00-mmol-l-no-albumin", lambda: [condition(), lab("2000-8", 2.00, "mmol/L")],
            [("hypocalcemia", "warning")]),
    Variant(
        "ca-total-8.0-mg-dl-albumin-40-g-l",
        lambda: [condition(), lab("17861-6", 8.0, "mg/dL"), lab("1751-7", 40, "g/L")],
        [("hypocalcemia", "warning")],
    ),
    # other analytes in the units and codes labs send
    Variant("vitd-30-nmol-l", lambda: [condition(), lab("62292-8", 30, "nmol/L")], [("vitamin-d-deficiency", "info")]),
    Variant("vitd-60-nmol-l-silent", lambda: [condition(), lab("62292-8", 60, "nmol/L")], SILENT),
    Variant(
        "vitd-below-detection-limit",
        lambda: [condition(), _comparator(lab("62292-8", 8, "ng/mL"), "<")],
        [("vitamin-d-deficiency", "info")],
    ),
    Variant(
        "b12-120-pmol-l", lambda: [condition(), lab("2132-9", 120, "pmol/L")], [("vitamin-b12-deficiency", "info")]
    ),
    Variant("b12-200-pmol-l-silent", lambda: [condition(), lab("2132-9", 200, "pmol/L")], SILENT),
    # glucose without insulin or a sulfonylurea: < 55 mg/dL = 3.0 mmol/L (Endocrine Society 2009)
    Variant("glucose-2.9-mmol-l", lambda: [condition(), lab("2345-7", 2.9, "mmol/L")], [("hypoglycemia", "warning")]),
    Variant("glucose-3.5-mmol-l-silent", lambda: [condition(), lab("2345-7", 3.5, "mmol/L")], SILENT),
    Variant(
        "tsh-9-uiu-ml",
        lambda: [condition(), lab("3016-3", 9.0, "uIU/mL", ucum="u[IU]/mL")],
        [("hypothyroidism", "info")],
    ),
    Variant(
        "tsh-11-uiu-ml",
        lambda: [condition(), lab("3016-3", 11.0, "uIU/mL", ucum="u[IU]/mL")],
        [("hypothyroidism", "warning")],
    ),
    Variant(
        "sodium-130-meq-l",
        lambda: [condition(), lab("2951-2", 130, "mEq/L", ucum="meq/L")],
        [("hyponatremia-no-diuretic", "warning")],
    ),
    Variant(
        "egfr-45-text-unit",
        lambda: [condition(), lab("62238-1", 45, "mL/min/1.73m2", ucum="mL/min/{1.73_m2}")],
        [("ckd", "info")],
    ),
    Variant(
        "fever-101.3-degf-with-stiff-neck",
        lambda: [condition(), condition(ICD10CM, "R29.1", "Meningismus", onset_days=1),
                 lab("8310-5", 101.3, "degF", ucum="[degF]", days=1, category="vital-signs")],
        [("red-flag-urgent", "critical")],
    ),
    Variant(
        "temperature-99.5-degf-with-stiff-neck-silent",
        lambda: [condition(), condition(ICD10CM, "R29.1", "Meningismus", onset_days=1),
                 lab("8310-5", 99.5, "degF", ucum="[degF]", days=1, category="vital-signs")],
        SILENT,
    ),
    Variant(
        "dyspnea-icd10cm-r06.02",
        lambda: [condition(), condition(ICD10CM, "R06.02", "Shortness of breath", onset_days=2)],
        [("red-flag-urgent", "warning")],
    ),
    Variant(
        "dyspnea-observation",
        lambda: [condition(), symptom(concept(SNOMED, "267036007", "Dyspnea"), days=1)],
        [("red-flag-urgent", "warning")],
    ),
    # CK on a statin: over 4x the upper limit warning, over 10x critical (EAS 2015)
    Variant("ck-799-under-4x", lambda: _cramp_on_atorvastatin(ck(799)), [("statin-muscle-symptoms-ck", "info")]),
    Variant("ck-800-exactly-4x", lambda: _cramp_on_atorvastatin(ck(800)), [("statin-muscle-symptoms-ck", "info")]),
    Variant("ck-801-over-4x", lambda: _cramp_on_atorvastatin(ck(801)), [("statin-muscle-symptoms-ck", "warning")]),
    Variant("ck-1999-under-10x", lambda: _cramp_on_atorvastatin(ck(1999)), [("statin-muscle-symptoms-ck", "warning")]),
    Variant("ck-2001-over-10x", lambda: _cramp_on_atorvastatin(ck(2001)), [("statin-muscle-symptoms-ck", "critical")]),
    Variant(
        "ck-above-analyser-range",
        lambda: _cramp_on_atorvastatin(_comparator(ck(5000), ">")),
        [("statin-muscle-symptoms-ck", "critical")],
    ),
    Variant(
        "ck-2100-default-upper-limit",
        lambda: _cramp_on_atorvastatin(ck(2100, high=None)),
        [("statin-muscle-symptoms-ck", "critical")],
    ),
]


MODES = ("prefetched", "read-by-service")


VARIANT_RUNS = [(v, mode) for v in DOCUMENTED for mode in MODES] + [(v, MODES[0]) for v in INTERPRETED]


@pytest.mark.parametrize(
    ("variant", "mode"), [pytest.param(v, mode, id=f"{v.name}-{mode}") for v, mode in VARIANT_RUNS]
)
def test_variant(variant: Variant, mode: str, service, ehr, fhir_server) -> None:
    fhir_server.load([patient(), *variant.build()])
    if mode == "prefetched":
        exchange = ehr.call("patient-view", CONTEXT, send_fhir_server=False)
        assert exchange.omitted == []
    else:
        exchange = ehr.call("patient-view", CONTEXT, prefetch=False)
    assert outcome(service, exchange) == variant.expected


# --- 3: a long, realistic record ------------------------------------------------------------------------------

DRAWS = 72  # monthly blood draws over six years, the newest 3 days ago
BLOOD_ERA = 36  # the older half reports the Blood LOINC codes in mmol/L, the newer half Serum/Plasma in meq/L


def _panel_codes(blood: bool) -> dict[str, tuple[str, str]]:
    """LOINC code and unit per analyte, by era (clinical-reference.md §1: Blood vs Serum/Plasma codes)."""
    if blood:
        return {"k": ("6298-4", "mmol/L"), "na": ("2947-0", "mmol/L"), "ca": ("49765-1", "mg/dL"),
                "creat": ("38483-4", "mg/dL"), "glucose": ("2339-0", "mg/dL"), "bun": ("6299-2", "mg/dL")}
    return {"k": ("2823-3", "meq/L"), "na": ("2951-2", "mmol/L"), "ca": ("17861-6", "mg/dL"),
            "creat": ("2160-0", "mg/dL"), "glucose": ("2345-7", "mg/dL"), "bun": ("3094-0", "mg/dL")}


def _vital(loinc: str, value: float, unit: str, days: float) -> dict[str, Any]:
    return lab(loinc, value, unit, days=days, category="vital-signs")


def long_record(*, cramp: bool) -> list[dict[str, Any]]:
    """About 1,500 resources: six years of labs and vitals, other labs, encounters, conditions, medications.

    Everything is normal except the newest potassium (3.1 meq/L, 3 days ago) on furosemide; the only sign of
    cramps, when ``cramp`` is set, is a problem-list Condition from last week.
    """
    rng = random.Random(20261101)
    resources: list[dict[str, Any]] = [patient()]
    for draw in range(DRAWS):
        days = 3 + 30 * draw
        codes = _panel_codes(blood=draw >= DRAWS - BLOOD_ERA)
        k_value = 3.1 if draw == 0 else round(rng.uniform(3.8, 4.8), 1)
        values = {"k": k_value, "na": rng.randint(137, 142), "ca": round(rng.uniform(9.0, 9.8), 1),
                  "creat": round(rng.uniform(0.8, 1.0), 2), "glucose": rng.randint(85, 105),
                  "bun": rng.randint(12, 18)}
        resources += [lab(code, values[key], unit, days=days) for key, (code, unit) in codes.items()]
        resources += [
            lab("1751-7", round(rng.uniform(3.9, 4.5), 1), "g/dL", days=days),
            lab("62238-1", rng.randint(72, 90), "mL/min/{1.73_m2}", days=days),
            lab("2075-0", rng.randint(98, 106), "mmol/L", days=days),  # chloride: not a rule's lab
            lab("2028-9", rng.randint(23, 29), "mmol/L", days=days),  # CO2
            _vital("8310-5", round(rng.uniform(36.5, 37.1), 1), "Cel", days),
            _vital("59408-5", rng.randint(96, 99), "%", days),
            _vital("8867-4", rng.randint(62, 84), "/min", days),
            _vital("29463-7", round(rng.uniform(70, 74), 1), "kg", days),
            _vital("39156-5", round(rng.uniform(26, 27.5), 1), "kg/m2", days),
            _vital("8480-6", rng.randint(124, 142), "mm[Hg]", days),
            {
                "resourceType": "Encounter",
                "id": f"enc-{next(_ids)}",
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": _subject(),
                "period": {"start": _when(days), "end": _when(days - 0.02)},
            },
        ]
        if draw % 3 == 0:  # quarterly lipids and blood count
            resources += [
                lab("2093-3", rng.randint(160, 190), "mg/dL", days=days),  # cholesterol
                lab("2571-8", rng.randint(90, 140), "mg/dL", days=days),  # triglycerides
                lab("2085-9", rng.randint(45, 60), "mg/dL", days=days),  # HDL
                lab("18262-6", rng.randint(80, 110), "mg/dL", days=days),  # LDL
                lab("718-7", round(rng.uniform(12.5, 14), 1), "g/dL", days=days),  # haemoglobin
                lab("6690-2", round(rng.uniform(5, 8), 1), "10*3/uL", days=days),  # leukocytes
                lab("777-3", rng.randint(180, 320), "10*3/uL", days=days),  # platelets
            ]
        if draw % 6 == 0:  # twice a year
            resources.append(lab("4548-4", round(rng.uniform(5.3, 5.6), 1), "%", days=days))
        if draw % 12 == 0:  # yearly
            resources += [lab("3016-3", round(rng.uniform(1.2, 2.5), 1), "mIU/L", days=days),
                          lab("19123-9", round(rng.uniform(1.9, 2.2), 1), "mg/dL", days=days)]
    resources += [
        condition(SNOMED, "38341003", "Hypertensive disorder", onset_days=3000),
        condition(SNOMED, "55822004", "Hyperlipidemia", onset_days=2500),
        condition(SNOMED, "239873007", "Osteoarthritis of knee", onset_days=1500),
        condition(SNOMED, "10509002", "Acute bronchitis", clinical="resolved", onset_days=900,
                  abatement_days=880),
        med_request(FUROSEMIDE, days=700),
        med_request(("314076", "lisinopril 10 MG Oral Tablet"), days=2900),
        med_request(("197361", "amlodipine 5 MG Oral Tablet"), days=2000),
        med_request(("310798", "hydrochlorothiazide 25 MG Oral Tablet"), status="stopped", days=2800),
        med_statement(("723", "amoxicillin"), status="completed", days=900),
    ]
    if cramp:
        resources.append(condition(onset_days=7))
    return resources


LONG_MODES = {
    "sandbox": {"follow_pages": False},  # first pages prefetched, fhirServer sent: the service reads the rest
    "complete-prefetch": {"follow_pages": True, "send_fhir_server": False},
    "first-pages-only": {"follow_pages": False, "send_fhir_server": False},  # newest labs first (_sort=-date)
    "read-by-service": {"prefetch": False},
}


@pytest.mark.parametrize("mode", sorted(LONG_MODES))
@pytest.mark.parametrize(("cramp", "expected"), [(True, HYPOKALEMIA), (False, SILENT)], ids=["cramp", "no-cramp"])
def test_long_record(cramp: bool, expected: Outcome, mode: str, service, ehr, fhir_server) -> None:
    record = long_record(cramp=cramp)
    assert 1000 <= len(record) <= 2000
    fhir_server.load(record)
    warm_searches(ehr, "patient-view", CONTEXT)
    exchange = ehr.call("patient-view", CONTEXT, **LONG_MODES[mode])
    assert outcome(service, exchange) == expected


def test_a_history_longer_than_the_page_cap_is_read_within_the_rules_look_back(service, ehr, fhir_server) -> None:
    """1,100 potassium results, all over a year old and none in the last 30 days, on furosemide with cramps.

    Read whole, the history would pass the service's page cap (10 pages; this server gives 100 per page) and
    leave the labs incomplete, so the rule that needs the absence of a recent potassium would stay silent. The
    service asks only for labs inside its rules' longest look-back, so the key is complete and the rule fires,
    as it does when the EHR prefetches the whole history.
    """
    resources = [patient(), condition(onset_days=7), med_request(FUROSEMIDE, days=700)]
    resources += [lab("2823-3", 4.2, "mmol/L", days=400 + day) for day in range(1100)]
    fhir_server.load(resources)
    for mode in ({"prefetch": False}, {"follow_pages": True, "send_fhir_server": False}):
        exchange = ehr.call("patient-view", CONTEXT, **mode)
        assert outcome(service, exchange) == [("diuretic-no-recent-electrolytes", "info")], mode


# --- what EHRs do when the FHIR server misbehaves or the patient is unknown ------------------------------------


def test_key_the_ehr_could_not_fetch_is_read_by_the_service(service, ehr, fhir_server) -> None:
    """The sandbox omits a key whose fetch failed; with fhirServer the service reads it and misses nothing."""
    fhir_server.load([patient(), *_on_furosemide_with_low_k(condition())])
    fhir_server.fail(503, count=1)  # the EHR's first fetch (the Patient read) fails
    exchange = ehr.call("patient-view", CONTEXT)
    assert exchange.omitted == ["patient"]
    assert outcome(service, exchange) == HYPOKALEMIA


def test_patient_unknown_to_the_fhir_server(service, ehr, fhir_server) -> None:
    """The Patient read fails (404) for the EHR and then for the service: 412 with an OperationOutcome."""
    exchange = ehr.call("patient-view", {**CONTEXT, "patientId": "nobody"})
    assert exchange.omitted == ["patient"]
    assert exchange.response.status_code == 412, exchange.response.text
    assert_operation_outcome(exchange.response.json(), "CDS-0012")


# --- edge-case requests over the production server: the right status and an OperationOutcome, never a 5xx -----

OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
TOKEN = {"access_token": "t", "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read", "subject": "c"}


def _without(*keys: str) -> Callable[[dict[str, Any]], Any]:
    return lambda body: {k: v for k, v in body.items() if k not in keys}


def _with_prefetch(**values: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda body: {**body, "prefetch": {**body["prefetch"], **values}}


EDGE_CASES: dict[str, tuple[Callable[[dict[str, Any]], Any], str, int, str | None]] = {
    # name: (change to the EHR's request, content type, status, OperationOutcome code or None for a card list)
    "prefetched-operation-outcome-is-read-again": (_with_prefetch(labs=OUTCOME), "application/json", 200, None),
    "charset-in-content-type": (lambda body: body, "application/json; charset=utf-8", 200, None),
    "fhir-server-with-trailing-slash": (
        lambda body: {**_without("prefetch")(body), "fhirServer": body["fhirServer"] + "/"}, "application/json", 200,
        None,
    ),
    "no-prefetch-no-fhir-server": (_without("prefetch", "fhirServer"), "application/json", 412, "CDS-0012"),
    "fhir-server-not-allowlisted": (
        lambda body: {**_without("prefetch")(body), "fhirServer": "https://fhir.example.org/r4"},
        "application/json", 412, "CDS-0013",
    ),
    "fhir-authorization-without-fhir-server": (
        lambda body: {**_without("fhirServer")(body), "fhirAuthorization": TOKEN}, "application/json", 400, None,
    ),
    "hook-of-another-service": (
        lambda body: {**body, "hook": "encounter-start", "context": {**body["context"], "encounterId": "enc-1"}},
        "application/json", 400, "CDS-0004",
    ),
    "missing-patient-id": (
        lambda body: {**body, "context": {"userId": body["context"]["userId"]}}, "application/json", 400, None,
    ),
    "not-json-content-type": (lambda body: body, "text/plain", 415, "CDS-0011"),
    "truncated-json": (lambda body: json.dumps(body).encode()[:-7], "application/json", 400, "CDS-0001"),
    "json-array": (lambda body: [body], "application/json", 400, "CDS-0002"),
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_case_request(case: str, service, ehr, fhir_server) -> None:
    change, content_type, status, code = EDGE_CASES[case]
    fhir_server.load([patient(), *_on_furosemide_with_low_k(condition())])
    body, _ = ehr.request("patient-view", CONTEXT)
    resp = ehr.post("patient-view", change(body), content_type=content_type)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/")
    if status == 200:
        assert outcome(service, HookExchange(body, resp)) == HYPOKALEMIA
    else:
        assert_operation_outcome(resp.json(), code)


@pytest.mark.parametrize(("fault", "code"), [("fail", "CDS-0012"), ("hang", "CDS-0020")])
def test_failing_fhir_server_answers_412(fault: str, code: str, service, ehr, fhir_server) -> None:
    """Nothing prefetched and the FHIR server erroring or hanging: a prompt 412, not a server error."""
    fhir_server.load([patient(), *_on_furosemide_with_low_k(condition())])
    if fault == "fail":
        fhir_server.fail(500, count=1000)
    else:
        fhir_server.hang(5)
    exchange = ehr.call("patient-view", CONTEXT, prefetch=False)
    assert exchange.response.status_code == 412, exchange.response.text
    assert exchange.response.elapsed.total_seconds() < 3
    assert_operation_outcome(exchange.response.json(), code)


def test_pages_received_before_the_deadline_are_used(service, slow_pages) -> None:
    """The labs' first page (newest first) arrives at once, the next one never in time: the card still comes."""
    ehr = EhrSimulator(service.base_url, slow_pages.base_url)
    try:
        exchange = ehr.call("patient-view", CONTEXT, prefetch=False)
    finally:
        ehr.close()
    assert exchange.response.elapsed.total_seconds() < slow_pages.HOLD_SECONDS
    assert outcome(service, exchange) == HYPOKALEMIA
