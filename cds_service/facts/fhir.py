"""Lenient readers for the FHIR R4 shapes real clients send: one place that forgives odd shapes.

A list where an object was expected (or the reverse), a number sent as a string, a date without a time, a
dateTime without a zone: each reader returns a plain value or None and never raises.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, time
from functools import lru_cache
from math import isfinite
from typing import Any, TypeVar

Resource = dict[str, Any]
T = TypeVar("T")
# What reading an unexpected shape can raise; anything else is a bug and propagates.
READ_ERRORS = (AttributeError, KeyError, IndexError, TypeError, ValueError, OverflowError)


def as_list(value: Any) -> list[Any]:
    """``value`` as a list: a list as is, a single item wrapped, None/absent as empty."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def codings(concept: Any) -> list[tuple[str, str, str]]:
    """(system, code, display) of each coding of a CodeableConcept (or a list of them), skipping broken ones.

    Hot path: plain type checks, and a list rather than a generator.
    """
    if type(concept) is dict:
        items: Any = (concept,)
    elif type(concept) is list:
        items = concept
    else:
        return []
    found = []
    for item in items:
        if type(item) is not dict:
            continue
        coding_list = item.get("coding")
        if type(coding_list) is not list:
            if type(coding_list) is not dict:
                continue
            coding_list = (coding_list,)
        for coding in coding_list:
            if type(coding) is not dict:
                continue
            code = coding.get("code")
            if type(code) is not str:
                if type(code) is not int and type(code) is not float:
                    continue
                code = str(code)
            code = code.strip()
            if not code:
                continue
            system = coding.get("system")
            display = coding.get("display")
            found.append((system if type(system) is str else "", code, display if type(display) is str else ""))
    return found


def concept_text(concept: Any) -> str:
    """``CodeableConcept.text``, else the first coding display, else ""."""
    for item in as_list(concept):
        text = item.get("text") if isinstance(item, dict) else None
        if isinstance(text, str) and text.strip():
            return text.strip()
    for _, _, display in codings(concept):
        if display:
            return display
    return ""


def code_of(concept: Any) -> str | None:
    """The first code of a simple coded element (``clinicalStatus``, ``verificationStatus``), or None."""
    if isinstance(concept, str):
        return concept
    if type(concept) is dict:  # the usual shape, read without building the codings list
        coding_list = concept.get("coding")
        if type(coding_list) is list and coding_list and type(coding_list[0]) is dict:
            code = coding_list[0].get("code")
            if type(code) is str and code and not code[0].isspace() and not code[-1].isspace():
                return code
    found = codings(concept)
    return found[0][1] if found else None


def status_of(resource: Mapping[str, Any]) -> Any:
    """A resource's ``status`` code without the whitespace around it (Oracle Health's published R4 Observation
    example sends ``"entered-in-error "``: read as is, such a result would count); anything else as it is."""
    status = resource.get("status")
    return status.strip() if type(status) is str else status


def number(value: Any) -> float | None:
    """A JSON number, or a string holding one ("4.1"); None for anything else (booleans, "<2.0", NaN)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            result = float(value)
        except OverflowError:  # an integer beyond any float (JSON allows 10**400)
            return None
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return result if isfinite(result) else None  # NaN is not finite either


def moment(value: Any) -> datetime | None:
    """A FHIR date, dateTime or instant as a timezone-aware datetime (no zone → UTC; a date → its midnight UTC).

    Partial dates (``2020``, ``2020-06``) count from their first day. Anything unreadable gives None. Parsed
    strings are cached: a record repeats its timestamps (a panel's results, an encounter's orders).
    """
    return _parse_time(value) if type(value) is str else None


@lru_cache(maxsize=8192)
def _parse_time(value: str) -> datetime | None:
    text = value.strip()
    try:
        if len(text) == 4:
            return datetime(int(text), 1, 1, tzinfo=UTC)
        if len(text) == 7:
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), UTC)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def period_end(period: Any) -> datetime | None:
    return moment(period.get("end")) if isinstance(period, dict) else None


def period_start(period: Any) -> datetime | None:
    return moment(period.get("start")) if isinstance(period, dict) else None


def effective_time(observation: Mapping[str, Any]) -> datetime | None:
    """When an Observation was made: ``effectiveDateTime``, ``effectivePeriod`` (end, else start),
    ``effectiveInstant``, then ``issued`` (clinical-reference.md §5); the first that parses wins."""
    found = moment(observation.get("effectiveDateTime"))
    if found is None:
        period = observation.get("effectivePeriod")
        found = (period_end(period) or period_start(period) or moment(observation.get("effectiveInstant"))
                 or moment(observation.get("issued")))
    return found


def not_a_resource(kind: str, index: int, item: Any) -> str:
    return f"{kind} item {index}: not a FHIR resource ({type(item).__name__}), skipped"


def reference_name(resource: Mapping[str, Any]) -> str:
    """``Type/id`` of a resource, for warnings and for the facts' ``resource`` fields."""
    kind = resource.get("resourceType")
    ident = resource.get("id")
    return f"{kind if isinstance(kind, str) else 'Resource'}/{ident if isinstance(ident, (str, int)) else '?'}"


def guarded(
    kind: str, resources: Iterable[Any], read: Callable[[Resource], T | None], warnings: list[str]
) -> Iterator[T]:
    """``read`` applied to each resource (of type ``kind``); a non-object item, or a shape ``read`` chokes on,
    is skipped with a warning that names it, so one odd resource never costs the others."""
    for index, resource in enumerate(resources):
        if not isinstance(resource, dict):
            warnings.append(not_a_resource(kind, index, resource))
            continue
        try:
            result = read(resource)
        except READ_ERRORS as exc:
            warnings.append(f"{reference_name(resource)}: could not be read ({type(exc).__name__}: {exc}), skipped")
            continue
        if result is not None:
            yield result
