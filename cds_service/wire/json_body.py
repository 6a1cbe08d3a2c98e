"""Parse a JSON request body within the service's input limits (nesting depth, prefetch entries)."""
from __future__ import annotations

import json
import re
from typing import Any

import orjson

from .errors import MALFORMED_JSON, NOT_AN_OBJECT, TOO_DEEP, TOO_MANY_ENTRIES, CdsError


def parse_body(raw: bytes, *, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object; 400 with a clear OperationOutcome for anything else."""
    check_text(raw, max_depth)
    return decode(raw, max_depth)


def check_text(raw: bytes, max_depth: int) -> None:
    """400 for an empty body or one nested deeper than ``max_depth``, before anything is built from it."""
    if not raw.strip():
        raise CdsError(MALFORMED_JSON, "The body is empty.")
    if _deeper_than(raw, max_depth):
        raise CdsError(TOO_DEEP, f"The limit is {max_depth} levels.")


def decode(raw: bytes, max_depth: int) -> dict[str, Any]:
    """The body, already through ``check_text``, as a JSON object; 400 naming the problem otherwise."""
    try:
        body = orjson.loads(raw)  # faster than the standard library on prefetch-sized bodies (bench/README.md)
    except orjson.JSONDecodeError:
        body = _standard_loads(raw, max_depth)  # the standard library decides what orjson refuses, and says why
    if not isinstance(body, dict):
        raise CdsError(NOT_AN_OBJECT)
    if b"\\" in raw and _SURROGATE_ESCAPE.search(raw) and _holds_lone_surrogate(body):
        raise CdsError(MALFORMED_JSON, "A string holds an unpaired surrogate escape (\\uD800-\\uDFFF).")
    return body


def _standard_loads(raw: bytes, max_depth: int) -> Any:
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise CdsError(TOO_DEEP, f"The limit is {max_depth} levels.") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise CdsError(MALFORMED_JSON, _position(exc)) from exc


def _position(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}, column {exc.colno}."
    if isinstance(exc, UnicodeDecodeError):
        return "The body is not UTF-8 text."
    return "A number has more digits than this service reads."  # int() refuses over 4300 digits


# json.loads accepts an escaped surrogate that is not half of a pair ("\ud800"); such a string cannot be encoded as
# UTF-8, so it could be neither stored, hashed nor logged. It is looked for only when the raw text holds an escape
# in the surrogate range (escaped pairs, as ASCII-only encoders write emoji, are common and legal). A body
# without any backslash (most bodies) is told apart by one byte search, without running the regex.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _holds_lone_surrogate(document: Any) -> bool:
    pending = [document]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


# Nesting is measured on the raw bytes at C speed (a walk over the parsed tree costs more than the parse itself):
# escaped backslashes and quotes are dropped, everything but brackets and quotes is deleted, brackets are folded
# to one kind, string contents are removed, then one level of empty pairs is removed per pass. Removing ``""``
# first (empty strings, and adjacent strings with no bracket between them) keeps the bracket structure outside
# strings and leaves only the few strings that hold brackets (LOINC names, UCUM annotations) to split out.
# JSON syntax itself is checked by json.loads.
_ALL_BUT_BRACKETS_AND_QUOTES = bytes(c for c in range(256) if c not in b'[]{}"')
_FOLD_BRACKETS = bytes.maketrans(b"[]", b"{}")


def _deeper_than(raw: bytes, limit: int) -> bool:
    """True when arrays and objects nest more than ``limit`` levels in the JSON text ``raw``."""
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = raw.translate(_FOLD_BRACKETS, _ALL_BUT_BRACKETS_AND_QUOTES).replace(b'""', b"")
    if b'"' in brackets:  # some string holds brackets: drop string contents exactly
        brackets = b"".join(brackets.split(b'"')[::2])
    for _ in range(limit):
        inner_removed = brackets.replace(b"{}", b"")
        if len(inner_removed) == len(brackets):  # balanced and done, or unbalanced: json.loads says so
            return False
        brackets = inner_removed
    return bool(brackets)


def check_prefetch_size(body: dict[str, Any], max_entries: int) -> None:
    """413 when the prefetch Bundles hold more entries than the service accepts."""
    prefetch = body.get("prefetch")
    if not isinstance(prefetch, dict):
        return
    total = 0
    for value in prefetch.values():
        if isinstance(value, dict) and isinstance(value.get("entry"), list):
            total += len(value["entry"])
    if total > max_entries:
        raise entry_limit_error(total, max_entries)


def entry_limit_error(total: int, max_entries: int) -> CdsError:
    return CdsError(TOO_MANY_ENTRIES, f"{total} entries; the limit is {max_entries}.")
