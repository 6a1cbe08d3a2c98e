"""The project's JSON Schemas: sound draft 2020-12 documents, and the quick and explaining checks agree."""
from __future__ import annotations

from importlib import resources

import pytest
from jsonschema import Draft202012Validator

from cds_service.schemas import fast_validator, first_violation, schema

NAMES = sorted(p.name.removesuffix(".schema.json")
               for p in resources.files("cds_service.schemas").iterdir() if p.name.endswith(".schema.json"))


def test_every_schema_is_found() -> None:
    assert NAMES == ["cases", "discovery", "feedback", "request", "response", "rule", "valueset"]


@pytest.mark.parametrize("name", NAMES)
def test_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    Draft202012Validator.check_schema(schema(name))  # python-jsonschema's meta-schema check, which loading skips
    fast_validator(name)  # jsonschema-rs checks it too when compiling


@pytest.mark.parametrize("name", NAMES)
def test_a_refused_document_is_explained(name: str) -> None:
    """Every schema requires an object: a list is refused by the quick check and explained by the slow one."""
    assert not fast_validator(name).is_valid([])
    error = first_violation(name, [])
    assert error is not None and error.validator == "type"


def test_a_valid_document_has_no_violation() -> None:
    request = {"hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "hook": "patient-view",
               "context": {"userId": "Practitioner/1", "patientId": "1"}}
    assert first_violation("request", request) is None
