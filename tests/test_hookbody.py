"""Parsing a hook request while leaving old prefetched Observations unbuilt (cds_service.wire.request_body): the result
is the full parse less exactly the Observations no rule reads, the cards are the same, and whatever the lazy
reader cannot do exactly (bad JSON, repeated keys, surrogate escapes, mostly recent data) is parsed in full."""
from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from support.histories import long_history
from support.hookcalls import hook_request, searchset

from cds_service.config import load_config
from cds_service.evaluation import Runtime, answer_hook, read_request
from cds_service.facts.terminology import LOINC
from cds_service.record.model import PatientRecord
from cds_service.wire import request_body as hookbody
from cds_service.wire.errors import MALFORMED_JSON, NOT_AN_OBJECT, TOO_DEEP, TOO_MANY_ENTRIES, CdsError
from cds_service.wire.hook_request import PageDates
from cds_service.wire.json_body import parse_body
from cds_service.wire.request_body import parse_hook_body

NOW = datetime(2026, 11, 1, tzinfo=UTC)
DAY = "2025-10-01"  # a cut-off day for the parser-level tests
LIMITS = {"max_depth": 64, "max_entries": 50_000}
PREFETCH_OF = {"labs": "Observation", "conditions": "Condition", "medrequests": "MedicationRequest"}


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime.load(load_config(overrides={"now": NOW.isoformat()}))


def request_of(record: PatientRecord) -> dict[str, Any]:
    """The patient-view request an EHR would send for ``record``, every prefetch key filled."""
    prefetch = {key: searchset(*record.resources.get(kind, [])) for key, kind in PREFETCH_OF.items()}
    prefetch |= {"patient": record.resources["Patient"][0], "symptoms": searchset(), "medstatements": searchset()}
    return hook_request("patient-view", prefetch, context={"patientId": record.patient_id, "userId": "Practitioner/1"})


def without_old_observations(body: dict[str, Any], day: str) -> dict[str, Any]:
    """What the parser should give: ``body`` with the Observations dated before ``day`` taken out of its Bundles."""
    expected = copy.deepcopy(body)
    for value in expected["prefetch"].values():
        if isinstance(value, dict) and isinstance(value.get("entry"), list):
            value["entry"] = [e for e in value["entry"] if not _old(e.get("resource"), day)]
    return expected


def _old(resource: Any, day: str) -> bool:
    when = resource.get("effectiveDateTime") if isinstance(resource, dict) else None
    return resource.get("resourceType") == "Observation" and isinstance(when, str) and when[:10] < day


def entry_count(body: dict[str, Any]) -> int:
    return sum(len(v["entry"]) for v in body["prefetch"].values() if isinstance(v, dict) and "entry" in v)


@pytest.mark.parametrize("seed", range(8))
def test_old_observations_are_left_out_and_the_rest_is_the_full_parse(seed: int) -> None:
    raw = json.dumps(request_of(long_history(seed, NOW))).encode()
    parsed = parse_hook_body(raw, **LIMITS, observations_from=DAY)
    expected = without_old_observations(orjson.loads(raw), DAY)
    assert parsed == expected
    assert entry_count(parsed) < entry_count(orjson.loads(raw)) / 2  # the histories are mostly old


def dated_labs(*days: str | None) -> dict[str, Any]:
    """A searchset of Observations dated ``days`` (None: an undated one), in that order."""
    return searchset(*({"resourceType": "Observation", "id": f"o{i}"} | ({"effectiveDateTime": day} if day else {})
                       for i, day in enumerate(days)))


@pytest.mark.parametrize(("days", "expected"), [
    (("2026-10-02T08:00:00Z", "2026-10-02", "2025-01-01", "2019-05-01"), PageDates(True, "2019-05-01")),
    (("2026-10-02", "2019-05-01", "2019-06-01", "2019-04-01"), PageDates(False, None)),  # out of order, all old
    (("2026-10-02", None, "2019-05-01", "2019-04-01"), PageDates(False, None)),  # undated
    (("2026-10-02", "2019-05", "2019-04-01", "2019-03-01"), PageDates(False, None)),  # not dated to the day
    (("2026-10-02", "2019-04-01", "0000000000"), PageDates(False, None)),  # the oldest is no day
    ((), PageDates(False, None)),
])
def test_each_bundle_page_is_dated_as_sent_by_either_parse(days: tuple[str | None, ...], expected: PageDates) -> None:
    """The page's dates take in the entries the lean parse leaves out; the full parse (no cut-off day) gives the
    same."""
    labs = dated_labs(*days)
    raw = json.dumps(hook_request("patient-view", {"labs": labs, "conditions": searchset(), "symptoms": None})).encode()
    lean: dict[str, PageDates] = {}
    full: dict[str, PageDates] = {}
    parse_hook_body(raw, **LIMITS, observations_from=DAY, page_dates=lean)
    assert parse_hook_body(raw, **LIMITS, observations_from="", page_dates=full) == orjson.loads(raw)
    assert lean == full == {"labs": expected, "conditions": PageDates(False, None)}


def test_the_cards_are_those_of_the_full_parse(runtime: Runtime) -> None:
    service = runtime.registry.for_hook("patient-view")
    fired = 0
    for seed in range(40):
        raw = json.dumps(request_of(long_history(seed, NOW))).encode()
        lean, full = read_request(runtime, raw), parse_body(raw, max_depth=64)
        assert entry_count(lean) < entry_count(full)
        lean_cards, full_cards = (_cards(answer_hook(runtime, service, body).response) for body in (lean, full))
        assert lean_cards == full_cards
        fired += len(full_cards)
    assert fired > 20  # the histories are meant to fire rules, or the comparison says little


def _cards(response: dict[str, Any]) -> list[dict[str, Any]]:
    cards = []
    for card in response["cards"]:  # uuids are fresh on every call
        kept = {k: v for k, v in card.items() if k != "uuid"}
        kept["suggestions"] = [{k: v for k, v in s.items() if k != "uuid"} for s in card.get("suggestions", [])]
        cards.append(kept)
    return cards


def _lab(ident: str, days_ago: float, *codings: tuple[str | None, str]) -> dict[str, Any]:
    coding = [{"code": code} | ({"system": system} if system else {}) for system, code in codings]
    when = (NOW - timedelta(days=days_ago)).astimezone(timezone(timedelta(hours=-10)))
    return {
        "resourceType": "Observation", "id": ident, "code": {"coding": coding}, "effectiveDateTime": when.isoformat()
    }



def test_each_lab_result_is_kept_as_far_back_as_a_rule_reads_its_analyte(runtime: Runtime) -> None:
    """The shipped rules read CK 14 days back, potassium, calcium and albumin (corrected calcium) 30 days, TSH and
    eGFR 12 months, symptom Observations 90 days: an Observation is left out only past its own analyte's day."""
    kept = [
        _lab("ck-10d", 10, (LOINC, "2157-6")),
        _lab("potassium-20d", 20, (LOINC, "2823-3")),
        _lab("potassium-no-system-29d", 29, (None, "2823-3")),
        _lab("calcium-29d", 29, (LOINC, "17861-6")),
        _lab("albumin-29d", 29, (LOINC, "1751-7")),
        _lab("tsh-200d", 200, (LOINC, "3016-3")),
        _lab("tsh-then-potassium-200d", 200, (LOINC, "3016-3"), (LOINC, "2823-3")),
        _lab("local-then-tsh-200d", 200, ("urn:local", "2823-3"), (LOINC, "3016-3")),
        _lab("unknown-code-200d", 200, (LOINC, "0000-0")),
        _lab("cramp-60d", 60, ("http://snomed.info/sct", "55300003")),
    ]
    left_out = [
        _lab("ck-20d", 20, (LOINC, "2157-6")),
        _lab("potassium-40d", 40, (LOINC, "2823-3")),
        _lab("albumin-40d", 40, (LOINC, "1751-7")),
        _lab("potassium-then-tsh-200d", 200, (LOINC, "2823-3"), (LOINC, "3016-3")),
        _lab("local-then-potassium-200d", 200, ("urn:local", "3016-3"), (LOINC, "2823-3")),
        *(_lab(f"tsh-{i}-400d", 400, (LOINC, "3016-3")) for i in range(10)),
    ]
    raw = json.dumps(hook_request("patient-view", {"labs": searchset(*kept, *left_out)})).encode()
    parsed = read_request(runtime, raw)
    assert [e["resource"]["id"] for e in parsed["prefetch"]["labs"]["entry"]] == [r["id"] for r in kept]


def test_what_is_not_a_dated_observation_is_kept() -> None:
    old = "2019-05-01T10:00:00Z"
    kept = [
        {"resourceType": "Condition", "id": "c", "onsetDateTime": old},
        {"resourceType": "Observation", "id": "period", "effectivePeriod": {"start": old, "end": old}},
        {"resourceType": "Observation", "id": "instant", "effectiveInstant": old},
        {"resourceType": "Observation", "id": "issued", "issued": old},
        {"resourceType": "Observation", "id": "undated"},
        {"resourceType": "Observation", "id": "recent", "effectiveDateTime": "2026-10-30"},
        {"resourceType": "Observation", "id": "odd-date", "effectiveDateTime": 20190501},
    ]
    dropped = [{"resourceType": "Observation", "id": f"old-{i}", "effectiveDateTime": old} for i in range(10)]
    body = hook_request("patient-view", {"labs": searchset(*kept, *dropped), "symptoms": None})
    body["prefetch"]["labs"]["entry"] += ["not an entry", {"fullUrl": "no resource"}]
    parsed = parse_hook_body(json.dumps(body).encode(), **LIMITS, observations_from=DAY)
    entries = parsed["prefetch"]["labs"]["entry"]
    assert [e["resource"]["id"] for e in entries[:-2]] == [r["id"] for r in kept]
    assert entries[-2:] == ["not an entry", {"fullUrl": "no resource"}]
    assert parsed["prefetch"]["symptoms"] is None and parsed["context"] == body["context"]


def test_mostly_recent_data_is_parsed_in_full() -> None:
    recent = [{"resourceType": "Observation", "id": f"r{i}", "effectiveDateTime": "2026-10-01"} for i in range(6)]
    old = [{"resourceType": "Observation", "id": f"o{i}", "effectiveDateTime": "2019-10-01"} for i in range(5)]
    raw = json.dumps(hook_request("patient-view", {"labs": searchset(*recent, *old)})).encode()
    assert parse_hook_body(raw, **LIMITS, observations_from=DAY) == orjson.loads(raw)


def test_a_document_still_held_from_an_earlier_call_does_not_stop_the_next() -> None:
    """A thread reuses its parser; lazy objects of its last document that are still alive (a traceback may hold
    them) make simdjson refuse to reuse it, and a fresh parser takes over."""
    raw = json.dumps(request_of(long_history(3, NOW))).encode()
    held = hookbody._parse(b'{"held": [1, 2]}', hookbody._parser(16))[0]
    assert parse_hook_body(raw, **LIMITS, observations_from=DAY) == without_old_observations(orjson.loads(raw), DAY)
    assert held["held"].as_list() == [1, 2]


def test_a_large_body_gets_a_parser_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread's parser keeps buffers for small bodies only (it is busy here: a new one would replace it)."""
    raw = json.dumps(request_of(long_history(4, NOW))).encode()
    held = hookbody._parse(b'{"held": true}', hookbody._parser(14))[0]
    kept = hookbody._thread.parser
    monkeypatch.setattr(hookbody, "REUSED_UP_TO", len(raw) - 1)
    assert parse_hook_body(raw, **LIMITS, observations_from=DAY) == without_old_observations(orjson.loads(raw), DAY)
    assert hookbody._thread.parser is kept
    del held


def test_no_cut_off_day_keeps_everything() -> None:
    raw = json.dumps(request_of(long_history(1, NOW))).encode()
    assert parse_hook_body(raw, **LIMITS, observations_from="") == orjson.loads(raw)


def test_entries_left_out_still_count_toward_the_limit() -> None:
    raw = json.dumps(request_of(long_history(2, NOW))).encode()
    total = entry_count(orjson.loads(raw))
    with pytest.raises(CdsError) as refused:
        parse_hook_body(raw, max_depth=64, max_entries=total - 1, observations_from=DAY)
    assert refused.value.kind is TOO_MANY_ENTRIES and f"{total} entries" in refused.value.detail
    assert entry_count(parse_hook_body(raw, max_depth=64, max_entries=total, observations_from=DAY)) < total


def test_entries_of_a_value_that_is_not_typed_as_a_bundle_count_too() -> None:
    """The limit counts every prefetch value's entry list, as the full parse does, Bundle or not."""
    untyped = {"entry": [{"resource": {"resourceType": "Observation", "id": f"u{i}"}} for i in range(3)]}
    old = [{"resourceType": "Observation", "id": f"o{i}", "effectiveDateTime": "2019-10-01"} for i in range(4)]
    raw = json.dumps(hook_request("patient-view", {"labs": searchset(*old), "other": untyped})).encode()
    with pytest.raises(CdsError) as full:
        parse_hook_body(raw, max_depth=64, max_entries=6, observations_from="")  # no cut-off: the full parse
    with pytest.raises(CdsError) as lean:
        parse_hook_body(raw, max_depth=64, max_entries=6, observations_from=DAY)
    assert lean.value.kind is full.value.kind is TOO_MANY_ENTRIES and lean.value.detail == full.value.detail


OLD_LABS = [{"resourceType": "Observation", "id": f"o{i}", "effectiveDateTime": "2019-10-01"} for i in range(4)]


def _text(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "raw",
    [
        # a repeated key: a lookup finds the first value, a full parse keeps the last; the full parse decides
        _text(hook_request("patient-view", {"labs": searchset(*OLD_LABS)}))[:-1] + b', "hook": "order-sign"}',
        _text(hook_request("patient-view", {"labs": searchset(*OLD_LABS)})).replace(
            b'"prefetch": {', b'"prefetch": {"labs": null, ', 1),
        _text(hook_request("patient-view", {"labs": searchset(*OLD_LABS)})).replace(
            b'"type": "searchset"', b'"type": "searchset", "entry": []', 1),
        # what simdjson refuses and the standard library accepts
        _text(hook_request("patient-view", {"labs": searchset(*OLD_LABS)}))[:-1] + b', "x": NaN}',
        _text(hook_request("patient-view", {"labs": searchset(*OLD_LABS)}))[:-1] + b', "x": 123456789012345678901}',
    ],
    ids=["repeated top-level key", "repeated prefetch key", "repeated Bundle key", "NaN", "integer over 64 bits"],
)
def test_what_the_lazy_reader_cannot_do_exactly_is_parsed_in_full(raw: bytes) -> None:
    assert parse_hook_body(raw, **LIMITS, observations_from=DAY) == parse_body(raw, max_depth=64)


def test_an_escaped_surrogate_pair_is_read_as_the_character_it_names() -> None:
    emoji = {"resourceType": "Observation", "id": "e", "note": [{"text": "\U0001F600"}]}
    raw = _text(hook_request("patient-view", {"labs": searchset(*OLD_LABS, emoji)}))
    assert b"\\ud83d\\ude00" in raw  # json.dumps writes ASCII only: the emoji as an escaped pair
    parsed = parse_hook_body(raw, **LIMITS, observations_from=DAY)
    assert parsed == without_old_observations(orjson.loads(raw), DAY)
    assert parsed["prefetch"]["labs"]["entry"] == [{"fullUrl": "Observation/e", "resource": emoji}]


def with_nesting(levels: int, innermost: bytes) -> bytes:
    """A request worth reading lazily (old labs) whose arrays and objects nest exactly ``levels`` deep."""
    text = _text(hook_request("patient-view", {"labs": searchset(*OLD_LABS)}))
    return text[:-1] + b', "deep": ' + b"[" * (levels - 2) + innermost + b"]" * (levels - 2) + b"}"


def test_simdjson_refuses_exactly_what_nests_deeper_than_its_limit() -> None:
    """The depth shortcut relies on this limit: a pysimdjson release that changed it must fail here."""
    limit = hookbody.SIMDJSON_DEPTH_LIMIT
    assert hookbody.simdjson.Parser().parse(b"[" * limit + b"]" * limit).mini
    with pytest.raises((ValueError, RuntimeError), match="DEPTH"):
        hookbody.simdjson.Parser().parse(b"[" * (limit + 1) + b"]" * (limit + 1))


@pytest.mark.parametrize("max_depth", [10, 64, 300])
def test_nesting_up_to_the_limit_is_accepted_and_one_more_level_refused(max_depth: int) -> None:
    limits = {"max_depth": max_depth, "max_entries": 50_000}
    at_limit = with_nesting(max_depth, b"[]")
    assert parse_hook_body(at_limit, **limits, observations_from=DAY) == without_old_observations(
        orjson.loads(at_limit), DAY)
    # a scalar in the deepest array is one level too many for simdjson: the exact check decides, and accepts
    with_scalar = with_nesting(max_depth, b"[1]")
    assert parse_hook_body(with_scalar, **limits, observations_from=DAY) == orjson.loads(with_scalar)
    for too_deep in (with_nesting(max_depth + 1, b"[]"), with_nesting(max_depth + 1, b"[1]")):
        with pytest.raises(CdsError) as refused:
            parse_hook_body(too_deep, **limits, observations_from=DAY)
        assert refused.value.kind is TOO_DEEP


def test_a_limit_beyond_simdjsons_is_checked_on_the_text() -> None:
    limits = {"max_depth": hookbody.SIMDJSON_DEPTH_LIMIT, "max_entries": 50_000}
    raw = with_nesting(1500, b"[]")
    with pytest.raises(CdsError) as refused:
        parse_hook_body(raw, **limits, observations_from=DAY)
    assert refused.value.kind is TOO_DEEP
    shallow = with_nesting(3, b"[]")
    assert parse_hook_body(shallow, **limits, observations_from=DAY) == orjson.loads(shallow)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"", MALFORMED_JSON),
        (b'{"hook": ', MALFORMED_JSON),
        (b'{"a": "\xff"}', MALFORMED_JSON),
        (b'{"a": "\\ud800"}', MALFORMED_JSON),
        (b"[1, 2]", NOT_AN_OBJECT),
        (b'"text"', NOT_AN_OBJECT),
        (b"[" * 65 + b"]" * 65, TOO_DEEP),
        (b"   ", MALFORMED_JSON),
        (b'{"a": 1}], [{"b": 2}', MALFORMED_JSON),
        (b'{"a": 1}' + b"]" * 960 + b", [" * 960 + b"{}", MALFORMED_JSON),
        (b'{"a": 1}, {"b": 2}', MALFORMED_JSON),
        (_text(hook_request("patient-view", {"labs": searchset(*OLD_LABS)})) + b', "\\u0001"], [{"b": 2}',
         MALFORMED_JSON),
    ],
    ids=["empty", "cut short", "not UTF-8", "unpaired surrogate", "array", "string", "too deep", "blank",
         "closes an array it did not open", "closes every padding array", "two values",
         "writes the end marker, then closes an array it did not open"],
)
def test_bad_bodies_are_refused_as_by_the_full_parse(raw: bytes, kind: Any) -> None:
    with pytest.raises(CdsError) as lean:
        parse_hook_body(raw, **LIMITS, observations_from=DAY)
    with pytest.raises(CdsError) as full:
        parse_body(raw, max_depth=64)
    assert lean.value.kind is full.value.kind is kind and lean.value.detail == full.value.detail


def test_a_body_that_writes_the_end_marker_is_left_to_the_exact_checks() -> None:
    """U+0001 in a string can only be written as the marker's escape: such a body is not read through the wrapping
    (it could end one value and start another, as in the case above), and is still read in full and correctly."""
    odd = {"resourceType": "Observation", "id": "c", "note": [{"text": "a\x01b"}]}
    raw = _text(hook_request("patient-view", {"labs": searchset(*OLD_LABS, odd)}))
    assert b"\\u0001" in raw
    assert hookbody._within_depth(raw, 64) is None
    assert parse_hook_body(raw, **LIMITS, observations_from=DAY) == orjson.loads(raw)


def test_one_value_is_read_from_the_wrapped_parse() -> None:
    raw = _text(hook_request("patient-view", {"labs": searchset(*OLD_LABS)}))
    assert hookbody._within_depth(b" \n" + raw + b"\t ", 64).as_dict() == orjson.loads(raw)
