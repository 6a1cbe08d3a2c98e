"""Parse a hook request body, leaving out the prefetched Observations that are older than anything a rule reads.

An EHR prefetches a patient's whole lab history (CDS Hooks 2.0.1 templates cannot ask for recent results only),
while no rule looks back further than ``RuleSet.lab_lookback`` (12 months in the shipped rules). Building
Python objects for years of old results is most of the parsing cost of such a call, so simdjson first checks the
whole body (JSON syntax, UTF-8 and nesting depth) and gives lazy access into it; then only what is kept is built.

An Observation in a prefetch Bundle is left out when its ``effectiveDateTime`` text names a day before
``observations_from``: the same test, on the same text, by which the facts layer skips it
(``FactWindows.observations_read_from``). A lab result is also left out when that day is before its own
analyte's (``FactWindows.lab_results_read_from``: most rules read a lab 14 or 30 days back, only a few 12
months), the analyte being the one ``LabReader.take`` reads it as; the facts layer reads such a result when the
body is parsed in full, but no rule does. The cards are the same either way (tests/test_hookbody.py compares
them over long random histories). (An Observation that repeats ``resourceType``, ``effectiveDateTime``, ``code``
or a coding's ``code`` or ``system``, which JSON leaves undefined, is judged by the first value here and by the
last in a full parse.)

The body is parsed in full instead (``jsonbody.decode``) whenever leaving out is not clearly worth it or not
certain to give the same document: simdjson refuses the body (the full parse then says why, or accepts what
the standard library accepts, such as integers over 64 bits; simdjson refuses unpaired surrogate escapes,
which the full parse answers with 400), the body writes the escape ``\\u0001`` (``_within_depth`` says why), an
object the reader walks repeats a key, or fewer than half of the prefetched Bundle entries would be left out
(building the kept entries from simdjson costs more per entry than orjson's parse).

Either way the reader notes, per prefetched Bundle, the dates of its page as sent (``PageDates``), left-out
entries included: the record layer sees only what is kept, and needs to know whether a partial lab page lists
its results newest first back past the rules' look-back, so that nothing within the look-back lies on its next
pages (``cds_service.record.obtain``).
"""
from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, cast

import simdjson

from ..facts.build import LabReadFrom
from ..facts.terminology import LOINC
from .hook_request import PageDates
from .json_body import check_prefetch_size, check_text, decode, entry_limit_error

_Object, _Array = simdjson.Object, simdjson.Array
# A thread reuses its parser, and the parser its buffers, for bodies up to this size: allocating them afresh on
# every call cost more in page faults than the parse itself (bench/README.md, third round).
# A larger body gets a parser of its own, so that no thread keeps buffers sized for the largest body it saw.
REUSED_UP_TO = 1 << 20
_thread = threading.local()
# simdjson's fixed nesting limit (DEFAULT_MAX_DEPTH): it accepts 1024 nested empty arrays and refuses 1025.
SIMDJSON_DEPTH_LIMIT = 1024


def parse_hook_body(
    raw: bytes,
    *,
    max_depth: int,
    max_entries: int,
    observations_from: str,
    lab_results_from: LabReadFrom | None = None,
    page_dates: dict[str, PageDates] | None = None,
) -> dict[str, Any]:
    """The request as a JSON object: 400 for bad JSON or nesting, 413 for more prefetch entries than allowed
    (counting those left out). ``observations_from`` is a ``YYYY-MM-DD`` day, or "" to keep everything;
    ``lab_results_from`` leaves out more lab results, each by its own analyte's day. ``page_dates``, when given,
    receives the ``PageDates`` of each prefetch key that holds a Bundle with an entry list."""
    document = _within_depth(raw, max_depth)
    if document is None:  # not shown to be JSON within the depth limit: the exact checks say what is wrong, if any
        check_text(raw, max_depth)
    else:
        lean = _lean(document, observations_from, lab_results_from) if observations_from else None
        del document
        if lean is not None:
            body, entries, dates = lean
            if entries > max_entries:
                raise entry_limit_error(entries, max_entries)
            if page_dates is not None:
                page_dates.update(dates)
            return body
    body = decode(raw, max_depth)
    check_prefetch_size(body, max_entries)
    if page_dates is not None:
        page_dates.update(_dates_of_pages(body))
    return body


def _dates_of_pages(body: dict[str, Any]) -> dict[str, PageDates]:
    """The ``PageDates`` of each prefetched Bundle with an entry list in a fully parsed body."""
    prefetch = body.get("prefetch")
    if not isinstance(prefetch, dict):
        return {}
    return {
        key: _dates_of(_entry_day(entry, "", None)[0] for entry in value["entry"])
        for key, value in prefetch.items()
        if isinstance(value, dict) and value.get("resourceType") == "Bundle" and isinstance(value.get("entry"), list)
    }


def _dates_of(days: Iterable[str | None]) -> PageDates:
    """The ``PageDates`` of a page whose entries name ``days`` (``_entry_day``; None: an entry that names no date).
    The order is checked on the text; the oldest day, on which the record layer relies, must also be a day."""
    previous = None
    for day in days:
        if day is None or len(day) != DAY_LENGTH or (previous is not None and day > previous):
            return _UNORDERED
        previous = day
    return _UNORDERED if previous is None or not _DAY.fullmatch(previous) else PageDates(True, previous)


_UNORDERED = PageDates(newest_first=False, oldest=None)
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _entry_day(entry: Any, observations_from: str, lab_results_from: LabReadFrom | None) -> tuple[str | None, bool]:
    """The first ten characters of the ``effectiveDateTime`` of the Observation a Bundle entry (a simdjson Object
    or a dict) holds (a day, when the text names one; None for an entry that holds no Observation or one without
    that text), and whether the entry is left out (``_too_old``; never with ``observations_from`` "")."""
    if type(entry) not in _OBJECTS:
        return None, False
    resource = entry.get("resource")
    if type(resource) not in _OBJECTS or resource.get("resourceType") != "Observation":
        return None, False
    when = resource.get("effectiveDateTime")
    if type(when) is not str:
        return None, False
    day = when[:DAY_LENGTH]
    return day, _too_old(resource, day, observations_from, lab_results_from)


DAY_LENGTH = len("YYYY-MM-DD")
_OBJECTS = (_Object, dict)


def _within_depth(raw: bytes, max_depth: int) -> Any:
    """simdjson's lazy value for ``raw`` when it is one JSON value nested at most ``max_depth`` levels; None when
    that is not shown (bad JSON, too deep, nested close to the limit, a limit beyond simdjson's own, or a body
    that writes the end marker below).

    simdjson refuses a document whose values, scalars included, nest deeper than its fixed limit. Parsed inside
    enough single-element arrays to leave ``max_depth`` levels below that limit, ``raw`` is accepted only when its
    arrays and objects nest at most ``max_depth`` levels: a check at the speed of the parse, where measuring the
    nesting on the text costs four parses. That one parse also gives the lazy reader (a second parse of ``raw``
    alone cost as much again, and evicted from the CPU caches what the rules read next).

    Text that closes the wrapping arrays and opens new ones (``{}],[{}``), or holds several values (``{},{}``),
    would be accepted inside them too, so an end marker follows ``raw`` inside the innermost wrapping array: the
    string "\\u0001". ``raw`` is one value exactly when that array holds its first value and the marker and nothing
    else: text that went on after its first value would have closed that array before the marker (``]``) or put
    more elements into it (``,``), unless the next element were that same string; a string holding U+0001 must be
    written with the escape ``\\u0001`` (JSON forbids raw control characters), so a body with that escape is left
    to the exact checks. The marker starts with a comma, so no string of ``raw`` can run on into it.
    """
    padding = SIMDJSON_DEPTH_LIMIT - max_depth
    if padding < 1 or (b"\\" in raw and _END_MARKER_ESCAPE in raw):
        return None
    opening, closing, innermost = _padding(padding)
    try:
        wrapped = _parse(b"".join((opening, raw, _END_MARKER, closing)), _parser(len(raw)))[0]
        values = wrapped.at_pointer(innermost)
    except (ValueError, RuntimeError):  # simdjson reports some refusals (too deep, a 65-bit integer) as RuntimeError
        return None
    if len(values) != 2 or values[1] != "\x01":
        return None
    return values[0]


_END_MARKER_ESCAPE = b"\\u0001"
_END_MARKER = b',"' + _END_MARKER_ESCAPE + b'"'


@cache
def _padding(levels: int) -> tuple[bytes, bytes, str]:
    """The text that opens and closes ``levels`` wrapping arrays, and the JSON pointer to the innermost one."""
    return b"[" * levels, b"]" * levels, "/0" * (levels - 1)


def _lean(
    document: Any, observations_from: str, lab_results_from: LabReadFrom | None
) -> tuple[dict[str, Any], int, dict[str, PageDates]] | None:
    """The body without the old Observations, the number of prefetch entries it had, and the dates of its
    Bundles' pages as sent; None: parse in full."""
    if type(document) is not _Object:
        return None  # the full parse refuses it with its reason
    keys = _distinct_keys(document)
    prefetch = document.get("prefetch")
    if keys is None or type(prefetch) is not _Object or (prefetch_keys := _distinct_keys(prefetch)) is None:
        return None
    kept: dict[str, Any] = {}  # prefetch key -> (Bundle, entries kept) or the value as it is
    total = left_out = 0
    dates: dict[str, PageDates] = {}
    for key in prefetch_keys:
        value = prefetch[key]
        entries = value.get("entry") if type(value) is _Object else None
        if type(entries) is not _Array:
            kept[key] = value
            continue
        bundle = cast(simdjson.Object, value)  # only an Object has an entry Array
        if _distinct_keys(bundle) is None:
            return None
        total += len(entries)  # every entry list counts toward the limit, as in check_prefetch_size
        if bundle.get("resourceType") != "Bundle":
            kept[key] = value
            continue
        chosen = []
        days = []
        for entry in entries:
            day, too_old = _entry_day(entry, observations_from, lab_results_from)
            days.append(day)
            if not too_old:
                chosen.append(entry)
        left_out += len(entries) - len(chosen)
        dates[key] = _dates_of(days)
        kept[key] = (value, chosen)
    if left_out * 2 < total:
        return None
    body = {key: _built(document[key]) for key in keys if key != "prefetch"}
    body["prefetch"] = {key: _bundle(*value) if type(value) is tuple else _built(value) for key, value in kept.items()}
    return body, total, dates


def _parser(size: int) -> simdjson.Parser:
    """This thread's parser for a body up to ``REUSED_UP_TO`` bytes, a new one for a larger body."""
    if size > REUSED_UP_TO:
        return simdjson.Parser()
    parser = getattr(_thread, "parser", None)
    if parser is None:
        parser = _thread.parser = simdjson.Parser()
    return parser


def _parse(text: bytes, parser: simdjson.Parser) -> tuple[Any, simdjson.Parser]:
    """simdjson's lazy document for ``text``, and the parser that holds it."""
    try:
        return parser.parse(text), parser
    except RuntimeError:
        # Either lazy objects of the parser's last document still exist (a traceback may hold them), or simdjson
        # refuses the text and says so with a RuntimeError: a fresh parser tells which (and raises again if so).
        fresh = simdjson.Parser()
        document = fresh.parse(text)
        if parser is getattr(_thread, "parser", None):
            _thread.parser = fresh
        return document, fresh


def _too_old(observation: Any, day: str, observations_from: str, lab_results_from: LabReadFrom | None) -> bool:
    """Whether the Observation, whose ``effectiveDateTime`` text starts with ``day``, is left out."""
    if day < observations_from:
        return True
    if lab_results_from is None or day >= lab_results_from.latest:
        return False
    index = _lab_window(observation, lab_results_from.window_of)
    return index is not None and day < lab_results_from.days[index]


def _lab_window(observation: Any, window_of: Mapping[str, int]) -> int | None:
    """The look-back index of the analyte ``LabReader.take`` reads the Observation as: that of its first coding
    whose code is a lab code, in LOINC or with no system; None when it is not a lab."""
    code = observation.get("code")
    if type(code) is not _Object:
        return None
    codings = code.get("coding")
    for coding in codings if type(codings) is _Array else (codings,):
        if type(coding) is _Object:
            loinc = coding.get("code")
            index = window_of.get(loinc) if type(loinc) is str else None
            if index is not None and coding.get("system", LOINC) == LOINC:
                return index
    return None


def _bundle(bundle: Any, entries: list[Any]) -> dict[str, Any]:
    built = {key: _built(bundle[key]) for key in bundle.keys() if key != "entry"}  # noqa: SIM118 - a simdjson Object
    built["entry"] = [_built(entry) for entry in entries]
    return built


def _built(value: Any) -> Any:
    """A lazy simdjson value as Python objects (scalars already are)."""
    kind = type(value)
    if kind is _Object:
        return value.as_dict()
    if kind is _Array:
        return value.as_list()
    return value


def _distinct_keys(value: Any) -> list[str] | None:
    """The object's keys, or None when one repeats (a lookup would find the first, a full parse keeps the last)."""
    keys = list(value.keys())
    return keys if len(set(keys)) == len(keys) else None
