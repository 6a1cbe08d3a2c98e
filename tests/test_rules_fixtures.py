"""The fixture requests (fixtures/requests/*.json) are valid CDS Hooks requests whose prefetch is valid FHIR R4,
and the whole non-HTTP chain answers each with the cards fixtures/expectations.json lists."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.patient import Patient
from support.governance import EVERY_CALL_ANEW

from cds_service.config import load_config
from cds_service.evaluation import Runtime, answer_hook
from cds_service.wire.validation import empty_elements, first_error, response_problems

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EXPECTATIONS = json.loads((FIXTURES / "expectations.json").read_text("utf-8"))
NAMES = sorted(EXPECTATIONS["fixtures"])


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime.load(load_config(overrides={"now": EXPECTATIONS["now"], **EVERY_CALL_ANEW}))


def _load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text("utf-8"))


def test_every_fixture_file_is_listed() -> None:
    requests = {f"requests/{p.name}" for p in (FIXTURES / "requests").glob("*.json")}
    bundles = {f"bundles/{p.name}" for p in (FIXTURES / "bundles").glob("*.json")}
    assert requests == set(NAMES)
    assert bundles == {EXPECTATIONS["fixtures"][n]["bundle"] for n in NAMES}


def test_every_rule_has_a_positive_fixture(runtime: Runtime) -> None:
    expected = {rule for n in NAMES for rule in EXPECTATIONS["fixtures"][n]["rules"]}
    assert {r.id for r in runtime.ruleset.rules} <= expected
    assert any(not EXPECTATIONS["fixtures"][n]["rules"] for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_is_a_valid_request_with_r4_prefetch(name: str) -> None:
    body = _load(name)
    assert first_error("request", body) is None
    assert list(empty_elements(body)) == []
    assert set(body["prefetch"]) == {"patient", "labs", "symptoms", "conditions", "medrequests", "medstatements"}
    Patient.model_validate(body["prefetch"]["patient"])
    for key in ("labs", "symptoms", "conditions", "medrequests", "medstatements"):
        assert Bundle.model_validate(body["prefetch"][key]).type == "searchset"
    Bundle.model_validate(_load(EXPECTATIONS["fixtures"][name]["bundle"]))


@pytest.mark.parametrize("name", NAMES)
def test_fixture_gets_the_expected_cards(runtime: Runtime, name: str) -> None:
    expected = EXPECTATIONS["fixtures"][name]
    body = _load(name)
    service = runtime.registry.for_hook(body["hook"])
    answer = answer_hook(runtime, service, body)
    assert response_problems(answer.response) == []
    assert [c.rule_id for c in answer.issued] == expected["rules"]
    assert [c.indicator for c in answer.issued] == expected["indicators"]
