"""The CDS Hooks wire format: the project's JSON Schemas and the 2.0.1 rules a schema cannot state.

``schemas/*.schema.json`` (draft 2020-12) describe the request, response, discovery and feedback documents.
``response_problems`` adds the rules that apply everywhere inside a response (no null or empty element, at most
one recommended suggestion when only one may be chosen); the service drops a card that breaks them rather than
send it, and the tests check every response they produce with the same function.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema_rs
from jsonschema.exceptions import ValidationError

from ..schemas import fast_validator, first_violation, schema, validator

SCHEMA_NAMES = ("request", "response", "discovery", "feedback")


def compile_schemas() -> None:
    """Compile every schema now rather than in the first hook call that needs one, which has a
    time budget; with gunicorn's preload the workers inherit them compiled."""
    for name in SCHEMA_NAMES:
        validator(name)
        fast_validator(name)
    _schema_names()
    _sound_cards()


def describe(error: ValidationError) -> str:
    """One line naming where a violation is and what the schema expects there.

    Never the offending value nor a property name the schemas do not define: a careless client may have put an
    access token or a patient id exactly there, and error bodies end up in EHR and gateway logs. Only the
    schema's own words (its property names, types and constraints) and array positions are used.
    """
    return f"at {_where(error)}: {_expected(error)}"


def first_error(name: str, document: Any) -> str | None:
    """A one-line description of the most relevant schema violation, or None when the document is valid."""
    error = first_violation(name, document)
    return describe(error) if error is not None else None


def _where(error: ValidationError) -> str:
    """The path to the violation: array positions and schema-defined property names; any other name is ``*``."""
    names = _schema_names()
    parts = [str(p) if isinstance(p, int) or p in names else "*" for p in error.absolute_path]
    return "/".join(parts) or "(root)"


_LIMITS = frozenset({
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains",
    "maxContains", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
})
_CHOICES = {"anyOf": "matches none of the allowed forms", "oneOf": "does not match exactly one allowed form"}
_NAMELESS = {
    "additionalProperties": "holds a property that is not allowed here",
    "unevaluatedProperties": "holds a property that is not allowed here",
    "unevaluatedItems": "holds an item that is not allowed here",
    "propertyNames": "holds a property name that is not allowed here",
    "uniqueItems": "expected unique items",
    "not": "has a form that is not allowed here",
    None: "is not allowed here",  # a ``false`` schema
}


def _expected(error: ValidationError) -> str:
    """What the schema asks for at the violation, in the schema's own terms (``validator_value`` is schema)."""
    kind = error.validator if isinstance(error.validator, str) else None  # None: a ``false`` schema
    rule: Any = error.validator_value
    instance = error.instance
    if kind == "type":
        return "expected type " + " or ".join(map(str, rule if isinstance(rule, list) else [rule]))
    if kind == "required":
        missing = [name for name in rule if not isinstance(instance, dict) or name not in instance]
        return f"{', '.join(missing)} is required"
    if kind == "dependentRequired":
        present = [name for name in rule if isinstance(instance, dict) and name in instance]
        return "; ".join(f"{name} requires {', '.join(rule[name])}" for name in present)
    if kind == "enum":
        return "expected one of " + ", ".join(_short(json.dumps(value)) for value in rule)
    if kind == "const":
        return "expected " + _short(json.dumps(rule))
    if kind == "pattern":
        return f"expected a string matching {_short(str(rule))}"
    if kind == "format":
        return f"expected format {rule}"
    if kind in _LIMITS:
        return f"expected {kind} {rule}"
    if kind in _CHOICES:
        return _CHOICES[kind]
    return _NAMELESS.get(kind, f"does not satisfy the schema's {kind}")


@cache
def _schema_names() -> frozenset[str]:
    """Every property name the project's CDS Hooks schemas define (``properties``, ``required``, ...)."""
    names: set[str] = set()
    for name in SCHEMA_NAMES:
        _collect_names(validator(name).schema, names)
    return frozenset(names)


def _collect_names(schema: Any, names: set[str]) -> None:
    if isinstance(schema, list):
        for item in schema:
            _collect_names(item, names)
        return
    if not isinstance(schema, dict):
        return
    for keyword, value in schema.items():
        if keyword in ("properties", "dependentRequired") and isinstance(value, dict):
            names.update(value)
        elif keyword == "required" and isinstance(value, list):
            names.update(v for v in value if isinstance(v, str))
        if keyword not in ("enum", "const"):
            _collect_names(value, names)


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def empty_elements(value: Any, path: str = "") -> Iterator[str]:
    """Paths of null or empty (``""``, ``[]``, ``{}``) elements, which CDS Hooks 2.0.1 forbids in a response."""
    if _is_empty(value):
        yield path or "(root)"
        return
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(item, (dict, list)) or _is_empty(item):  # a filled scalar needs no path (most of a card)
            yield from empty_elements(item, f"{path}/{key}")


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


# The response schema with every card also required to hold no null or empty element at any depth: one
# jsonschema-rs call answers whether a card is sound, faster than walking it in Python. Only a
# card it refuses is examined again, to name each problem.
_FILLED = {
    "not": {"enum": [None, "", [], {}]},
    "items": {"$ref": "#/$defs/filled"},
    "additionalProperties": {"$ref": "#/$defs/filled"},
}


@cache
def _sound_cards() -> jsonschema_rs.Validator:
    response = copy.deepcopy(schema("response"))
    response["$defs"]["filled"] = _FILLED
    cards = response["properties"]["cards"]
    cards["items"] = {"allOf": [cards["items"], {"$ref": "#/$defs/filled"}]}
    return jsonschema_rs.validator_for(response)


def card_problems(card: dict[str, Any]) -> list[str]:
    """Every 2.0.1 rule a single card breaks (schema, emptiness, recommendation count)."""
    if _sound_cards().is_valid({"cards": [card]}) and not _several_recommended(card):
        return []
    problems = [f"{p}" for p in _schema_problems({"cards": [card]})]
    problems += [f"empty element at {p}" for p in empty_elements(card)]
    if _several_recommended(card):
        problems.append("more than one suggestion isRecommended with selectionBehavior at-most-one")
    return problems


def _several_recommended(card: dict[str, Any]) -> bool:
    if card.get("selectionBehavior") != "at-most-one":
        return False
    return sum(1 for s in card.get("suggestions", []) if s.get("isRecommended")) > 1


def response_problems(response: dict[str, Any]) -> list[str]:
    """Every 2.0.1 rule a whole response breaks; empty means the response is valid."""
    problems = list(_schema_problems(response))
    for index, card in enumerate(response.get("cards", []) if isinstance(response, dict) else []):
        problems += [f"cards/{index}: {p}" for p in card_problems(card) if not p.startswith("at ")]
    return problems


def _schema_problems(document: Any) -> Iterator[str]:
    if fast_validator("response").is_valid(document):
        return
    for error in validator("response").iter_errors(document):
        yield describe(error)
