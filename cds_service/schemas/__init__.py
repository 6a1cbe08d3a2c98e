"""The project's JSON Schemas (draft 2020-12): the CDS Hooks documents, rule and case files, and value sets."""
from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator


@cache
def schema(name: str) -> dict[str, Any]:
    """The document ``<name>.schema.json`` in this package, checked against the draft 2020-12 meta-schema."""
    text = resources.files(__package__).joinpath(f"{name}.schema.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    Draft202012Validator.check_schema(document)
    return document


@cache
def validator(name: str) -> Draft202012Validator:
    """The compiled validator for ``<name>.schema.json`` in this package."""
    return Draft202012Validator(schema(name))
