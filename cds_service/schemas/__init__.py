"""The project's JSON Schemas (draft 2020-12): the CDS Hooks documents, rule and case files, and value sets.

Each schema is compiled twice: by jsonschema-rs, which answers valid or not quickly (and refuses a schema that
breaks its meta-schema when compiling it), and by python-jsonschema, which only explains a refusal, since its
errors carry the paths and ``best_match`` the messages use.
"""
from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match


@cache
def schema(name: str) -> dict[str, Any]:
    """The document ``<name>.schema.json`` in this package."""
    text = resources.files(__package__).joinpath(f"{name}.schema.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


@cache
def fast_validator(name: str) -> jsonschema_rs.Validator:
    """The schema compiled by jsonschema-rs (after checking it against the draft 2020-12 meta-schema)."""
    return jsonschema_rs.validator_for(schema(name))


@cache
def validator(name: str) -> Draft202012Validator:
    """The schema for python-jsonschema: what explains a document that ``fast_validator`` refuses."""
    return Draft202012Validator(schema(name))


def first_violation(name: str, document: Any) -> ValidationError | None:
    """The most relevant violation of ``<name>.schema.json`` by ``document``, or None when it is valid."""
    if fast_validator(name).is_valid(document):
        return None
    error: ValidationError | None = best_match(validator(name).iter_errors(document))
    return error
