"""The project's JSON Schemas (draft 2020-12): the CDS Hooks documents, rule and case files, and value sets."""
from __future__ import annotations

import json
from functools import cache
from importlib import resources

from jsonschema import Draft202012Validator


@cache
def validator(name: str) -> Draft202012Validator:
    """The compiled validator for ``<name>.schema.json`` in this package."""
    text = resources.files(__package__).joinpath(f"{name}.schema.json").read_text("utf-8")
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)
