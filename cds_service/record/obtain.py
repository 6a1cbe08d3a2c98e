"""Build the patient record for one hook call: prefetch first, the FHIR server for what is missing.

Prefetch semantics (CDS Hooks 2.0.1 §prefetch): a key holding a resource or a Bundle is used as given; a key
holding ``null`` means the EHR has no data (nothing is queried); a key that is absent, holds an
OperationOutcome, or holds something that is not a FHIR resource is queried from the FHIR server. A searchset
Bundle's ``next`` link is followed, on the same FHIR base and with the token, up to ``fhir_max_pages`` pages.

A prefetched Bundle with a ``next`` link is partial (an EHR may send the first page of a long lab history). For a
key whose searches the service narrows to its look-back (``Lookback.search``: the labs), what the Bundle lacks is
fetched with the service's own date-filtered search instead of the Bundle's pages, which in a long history mostly
hold results no rule reads; its resources join the prefetched ones, each id once. No completion is needed, and
none is made (it is listed in the request's log line as skipped, with the reason), when the page as the EHR sent
it (``PageDates``, from the body reader, which may have left its old entries out) lists its entries newest first
and reaches back before the look-back: its next pages hold only older results. For any other key the Bundle's
next link is followed, and paging stops at a page wholly older than the key's look-back (``_older``), prefetched
page included. A key whose completion fails or runs late is incomplete, as when a page fails.

All queries and completions of one call run in parallel and stop at one deadline (the hook budget minus a
margin). Each FHIR request is listed in the request's log line with why it was made (``client.FhirCall.via``).

Outcomes: when a key must be queried and there is no usable fhirServer, ``CdsError`` (412) says why. When keys
were queried and none of them gave any data, ``CdsError`` DEADLINE (timeouts) or RECORD_UNAVAILABLE (errors).
Otherwise the record lists in ``incomplete`` every key whose data is partial or missing, or holds resources of
an earlier FHIR version (counted in ``unread``, see ``versions.py``), and a warning on ``cds_service.record``
says which and why. The access token is never logged.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..wire.errors import DEADLINE, RECORD_UNAVAILABLE, CdsError
from ..wire.hook_request import HookCall, PageDates
from .access import FhirEndpoint, endpoint_for, is_absolute
from .client import COMPLETION, MEDICATION, PREFETCH_PAGE, QUERY, FetchFailed, FhirClient, note_skipped, submit
from .model import PatientRecord, Resource
from .settings import RecordSettings
from .templates import Lookback, fill, resource_type_of
from .versions import NOT_IN_R4, described, not_in_r4

log = logging.getLogger("cds_service.record")

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
MEDICATION_HOLDERS = ("MedicationRequest", "MedicationStatement")
DRAFT_ORDERS = "draftOrders"  # named in ``incomplete`` when a draft order or its Medication could not be read
T = TypeVar("T")


@dataclass(slots=True)
class KeyResult:
    """What one prefetch key yielded: its resources, whether they are whole, and why not."""

    key: str
    source: str  # "prefetch", "null", "server"
    resources: list[Resource] = field(default_factory=list)
    problem: str | None = None  # set when the data is partial or missing
    timed_out: bool = False
    got_data: bool = True  # False when nothing at all was obtained

    @property
    def complete(self) -> bool:
        return self.problem is None


def obtain_record(
    call: HookCall,
    templates: Mapping[str, str],
    settings: RecordSettings,
    *,
    deadline: float | None = None,
    lookbacks: Mapping[str, Lookback] | None = None,
    page_dates: Mapping[str, PageDates] | None = None,
) -> PatientRecord:
    """The patient record for ``call``; ``deadline`` (``time.monotonic()``) defaults to now + the fetch budget.

    ``lookbacks`` says per prefetch key how far back the rules read, ``page_dates`` how the prefetched Bundles'
    pages were dated as sent (see ``Lookback`` and the module's note on partial Bundles); prefetched data is
    taken as sent.
    """
    started = time.monotonic()
    deadline = started + settings.fetch_budget_seconds if deadline is None else deadline
    plan = _Plan.of(call, templates, lookbacks or {}, page_dates or {})
    endpoint = _endpoint(call, settings, needed=bool(plan.to_query)) if plan.to_query or call.fhir_server else None
    client = FhirClient(endpoint, settings, deadline) if endpoint else None
    results = _fetch(plan, client, deadline)
    queried = [results[key] for key in plan.to_query]
    if queried and not any(r.got_data for r in queried):
        _refuse_empty(call, queried)
    resources = _merge(results[key].resources for key in templates)
    _resolve_medications(call, templates, results, resources, client, deadline)
    unread = _not_in_r4(call, results, resources)
    record = PatientRecord(
        patient_id=call.patient_id,
        resources=resources,
        draft_orders=list(call.draft_orders),
        selections=call.selections,
        incomplete=frozenset(key for key, r in results.items() if not r.complete),
        warnings=[f"{key}: {r.problem}" for key, r in results.items() if r.problem],
        sources={key: r.source for key, r in results.items()},
        unread=unread,
    )
    if record.incomplete:
        log.warning(
            "hook %s: incomplete keys %s (rules relying on absence stay silent): %s",
            call.log_id,
            ",".join(sorted(record.incomplete)),
            "; ".join(record.warnings),
        )
    return record


@dataclass(slots=True)
class _Plan:
    """What the prefetch gave per key, and what remains to ask the FHIR server."""

    results: dict[str, KeyResult]  # keys settled by the prefetch (or unfillable)
    to_query: dict[str, str]  # key -> filled (and narrowed) template, to search or read
    to_complete: dict[str, str]  # key -> the narrowed search that completes its partial prefetched Bundle
    to_continue: dict[str, dict[str, Any]]  # key -> partial prefetched Bundle whose next link is followed
    since: dict[str, str]  # key -> the first day (YYYY-MM-DD) the rules read, for keys with a look-back

    @classmethod
    def of(
        cls,
        call: HookCall,
        templates: Mapping[str, str],
        lookbacks: Mapping[str, Lookback],
        page_dates: Mapping[str, PageDates],
    ) -> _Plan:
        plan = cls({}, {}, {}, {}, {key: lookback.since.isoformat() for key, lookback in lookbacks.items()})
        for key, template in templates.items():
            value = call.prefetch.get(key) if key in call.prefetch else _ABSENT
            lookback = lookbacks.get(key)
            if value is None:
                plan.results[key] = KeyResult(key, "null")
            elif _usable(value):
                plan.results[key] = result = KeyResult(key, "prefetch")
                page = _add_page(result, value)
                if _next_link(value) is None or _older(page, plan.since.get(key)):
                    continue
                path = fill(template, call.context) if lookback is not None and lookback.search else None
                if lookback is not None and path is not None:
                    if (passed := _reaches_past(page_dates.get(key), plan.since[key])) is not None:
                        note_skipped(resource_type_of(template), COMPLETION, passed)
                    else:
                        plan.to_complete[key] = lookback.narrowed(path)
                else:
                    plan.to_continue[key] = value
            elif (path := fill(template, call.context)) is None:
                plan.results[key] = KeyResult(key, "server", problem="a template token has no value", got_data=False)
            else:
                plan.to_query[key] = lookback.narrowed(path) if lookback is not None else path
        return plan


def _fetch(plan: _Plan, client: FhirClient | None, deadline: float) -> dict[str, KeyResult]:
    """Run the plan's queries, completions and continuations in parallel; every key of the plan has a result
    afterwards."""
    results = dict(plan.results)
    tasks: dict[str, Callable[[], KeyResult]] = {}
    if client is None:  # then to_query is empty (_endpoint raised)
        for key in [*plan.to_complete, *plan.to_continue]:
            results[key].problem = "what its next link holds was not fetched: no usable fhirServer"
    else:
        for key, path in plan.to_complete.items():
            tasks[key] = _search(client, results[key], path, COMPLETION, plan.since.get(key))
        for key, bundle in plan.to_continue.items():
            tasks[key] = _continuation(client, results[key], bundle, plan.since.get(key))
        for key, path in plan.to_query.items():
            results[key] = KeyResult(key, "server", got_data=False)
            tasks[key] = _search(client, results[key], path, QUERY, plan.since.get(key))
    _finished, late = _run_all(tasks, deadline)
    for key in late:
        # Keep the pages that arrived in time: a snapshot, since the task may add one more before it stops at
        # its own deadline (it holds the old KeyResult; list copies and extends are atomic under the GIL).
        partial = results[key]
        results[key] = KeyResult(
            key,
            partial.source,
            list(partial.resources),
            problem="the rest of its data did not arrive in time" if partial.got_data else "the time budget ran out",
            timed_out=True,
            got_data=partial.got_data,
        )
    return results


_ABSENT: Any = object()  # a key the prefetch does not hold (unlike a key that holds null)


def _usable(value: Any) -> bool:
    """A prefetch value that is a FHIR resource other than an OperationOutcome."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("resourceType"), str)
        and value["resourceType"] != "OperationOutcome"
    )


def _resources_of(value: dict[str, Any]) -> tuple[list[Resource], int]:
    """The resources a prefetch value or server answer holds, and how many of its entries hold none.

    Bundle entries are read leniently: a lone entry sent as an object instead of a list is read, and outcome
    entries (OperationOutcome) are dropped. An entry with no resource that has a resourceType is counted, not
    guessed at: the caller marks the key incomplete, so no rule concludes from the absence of what it held.
    The test of ``_usable`` is written out in the loop: this runs once per entry, thousands of times a call.
    """
    if value.get("resourceType") != "Bundle":
        return [value], 0
    entries = value.get("entry")
    if entries is None:
        return [], 0
    if isinstance(entries, dict):
        entries = [entries]
    elif not isinstance(entries, list):
        return [], 1
    kept = []
    unreadable = 0
    for entry in entries:
        if isinstance(entry, dict):
            resource = entry.get("resource")
            if isinstance(resource, dict):
                kind = resource.get("resourceType")
                if isinstance(kind, str):
                    if kind != "OperationOutcome":
                        kept.append(resource)
                    continue
        unreadable += 1
    return kept, unreadable


def _unread(count: int) -> str | None:
    """The problem of a key some of whose Bundle entries held no readable resource."""
    return f"{count} of its Bundle entries hold no FHIR resource and were not read" if count else None


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    if bundle.get("resourceType") != "Bundle" or not isinstance(links, list):
        return None
    for link in links:
        url = link.get("url") if isinstance(link, dict) and link.get("relation") == "next" else None
        if isinstance(url, str):
            return url
    return None


def _endpoint(call: HookCall, settings: RecordSettings, *, needed: bool) -> FhirEndpoint | None:
    """The usable endpoint; when keys must be queried and there is none, the 412 (logged with its reason)."""
    try:
        return endpoint_for(call, settings)
    except CdsError as refused:
        if needed:
            log.warning(
                "hook %s: answering %s %s: %s", call.log_id, refused.status, refused.kind.code, refused.detail
            )
            raise
        log.info("hook %s: fhirServer not used: %s", call.log_id, refused.detail)
        return None


def _search(
    client: FhirClient, result: KeyResult, path: str, via: str, since: str | None
) -> Callable[[], KeyResult]:
    """A task adding what the search ``path`` finds to ``result`` (empty for a key the prefetch lacked; the
    prefetched entries for a completion, which the record's merge keeps once each) page by page, so what arrived
    before the deadline is kept if it runs late."""

    def run() -> KeyResult:
        try:
            answer = client.fetch(path, via=via)
        except FetchFailed as failure:
            lacking = "" if via == QUERY else "the search for what its prefetched Bundle lacks: "
            result.problem = f"{lacking}{failure.reason}"
            result.timed_out = failure.timed_out
            return result
        page = _add_page(result, answer)
        result.got_data = True
        return result if _older(page, since) else _follow_pages(client, result, answer, via, since)

    return run


def _continuation(
    client: FhirClient, prefetched: KeyResult, bundle: dict[str, Any], since: str | None
) -> Callable[[], KeyResult]:
    """A task adding the pages after a prefetched Bundle to its ``KeyResult``."""

    def run() -> KeyResult:
        return _follow_pages(client, prefetched, bundle, PREFETCH_PAGE, since)

    return run


def _follow_pages(
    client: FhirClient, result: KeyResult, bundle: dict[str, Any], via: str, since: str | None
) -> KeyResult:
    """Add the pages after ``bundle`` to ``result`` until there is no next link, a page wholly older than
    ``since`` (``_older``: the rest is older still, and the key is complete), the page cap, or a failure."""
    pages = 1
    while (url := _next_link(bundle)) is not None:
        if pages >= client.settings.fhir_max_pages:
            result.problem = f"stopped at the page cap ({pages} pages)"
            break
        if not client.endpoint.owns(url):
            result.problem = "its next link points outside the fhirServer and was not followed"
            break
        try:
            bundle = client.get(url, via=via)
        except FetchFailed as failure:
            result.problem, result.timed_out = f"page {pages + 1}: {failure.reason}", failure.timed_out
            break
        pages += 1
        if _older(_add_page(result, bundle), since):
            break
    return result


def _add_page(result: KeyResult, bundle: dict[str, Any]) -> list[Resource]:
    """Add what a prefetch value or a server page holds to ``result``, noting entries that held no resource;
    return the resources added."""
    resources, unreadable = _resources_of(bundle)
    result.resources.extend(resources)
    result.problem = result.problem or _unread(unreadable)
    return resources


_DATED_BY = ("effectiveDateTime", "effectiveInstant", "issued")


def _older(page: list[Resource], since: str | None) -> bool:
    """True when every resource of ``page`` is dated before the day ``since`` and the page lists them newest
    first: the order the dated templates ask for (``_sort=-date``), in which the pages after it are older still.

    Searchset order is the server's to choose (a server may ignore ``_sort``), so it is checked, not assumed:
    an empty page, a page in any other order, or a resource without a date never stops paging. Not caught: a
    server that ignores the sort and pages one resource at a time, whose pages show no order.
    """
    if since is None or not page:
        return False
    previous = None
    for resource in page:
        day = _latest_day(resource)
        if day is None or day >= since[: len(day)] or (previous is not None and day > previous):
            return False
        previous = day
    return True


def _reaches_past(dates: PageDates | None, since: str) -> str | None:
    """Why a partial prefetched page needs no completion from ``since`` on: it lists its entries newest first
    and its oldest is dated before ``since``, so its next pages (searchset order being kept across pages) hold
    nothing from ``since`` on; None when that is not shown."""
    if dates is None or not dates.newest_first or dates.oldest is None or dates.oldest >= since:
        return None
    return f"the prefetched page lists its entries newest first back to {dates.oldest}, before the look-back"


def _latest_day(resource: Resource) -> str | None:
    """The latest day (``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD`` text) that ``resource`` names in effective[x] or
    ``issued``; None when it names none, or has an effectivePeriod without an end (still going on)."""
    days = [value[:10] for name in _DATED_BY if isinstance(value := resource.get(name), str) and len(value) >= 4]
    period = resource.get("effectivePeriod")
    if isinstance(period, dict):
        end = period.get("end")
        if not isinstance(end, str) or len(end) < 4:
            return None
        days.append(end[:10])
    return max(days, default=None)


def _run_all(tasks: Mapping[str, Callable[[], T]], deadline: float) -> tuple[dict[str, T], list[str]]:
    """Run the tasks in parallel until the deadline: the results of those done, and the keys of those not."""
    if not tasks:  # every key came with the prefetch (the usual call): no waiting machinery to set up
        return {}, []
    futures: dict[str, Future[T]] = {key: submit(task) for key, task in tasks.items()}
    wait(futures.values(), timeout=max(deadline - time.monotonic(), 0.0))
    late = [key for key, future in futures.items() if not future.done()]
    for key in late:
        futures[key].cancel()  # not started yet: never runs; running: stops at its own deadline
    return {key: f.result() for key, f in futures.items() if key not in late}, late


def _refuse_empty(call: HookCall, queried: list[KeyResult]) -> None:
    """Every queried key failed outright: answer 412, DEADLINE when any of them ran out of time."""
    timed_out = any(r.timed_out for r in queried)
    kind = DEADLINE if timed_out else RECORD_UNAVAILABLE
    reasons = "; ".join(f"{r.key}: {r.problem}" for r in queried)
    log.warning(
        "hook %s: answering %s %s: no queried key gave data (%s)", call.log_id, kind.status, kind.code, reasons
    )
    raise CdsError(kind, f"The FHIR server gave no data ({queried[0].problem}).")


def _merge(groups: Iterable[list[Resource]]) -> dict[str, list[Resource]]:
    """Resources grouped by type, the first of each type+id kept (resources without an id are all kept)."""
    by_type: dict[str, list[Resource]] = {}
    seen: dict[str, set[str]] = {}  # ids kept, per type (no tuple per resource: thousands of labs per call)
    for group in groups:
        for resource in group:
            rtype, rid = resource["resourceType"], resource.get("id")
            kept = by_type.get(rtype)
            if kept is None:
                kept = by_type[rtype] = []
                ids = seen[rtype] = set()
            else:
                ids = seen[rtype]
            if isinstance(rid, str):
                if rid in ids:
                    continue
                ids.add(rid)
            kept.append(resource)
    return by_type


def _resolve_medications(
    call: HookCall,
    templates: Mapping[str, str],
    results: dict[str, KeyResult],
    resources: dict[str, list[Resource]],
    client: FhirClient | None,
    deadline: float,
) -> None:
    """Read the Medications referenced but neither contained nor included; mark their keys incomplete if not."""
    known = {m["id"] for m in resources.get("Medication", []) if isinstance(m.get("id"), str)}
    wanted: dict[str, set[str]] = {}  # Medication id -> where it is referenced: a resource type or DRAFT_ORDERS
    holders = [(r, rtype) for rtype in MEDICATION_HOLDERS for r in resources.get(rtype, [])]
    for holder, label in [*holders, *((order, DRAFT_ORDERS) for order in call.draft_orders)]:
        med_id = _medication_id(holder, client.endpoint if client else None)
        if med_id is not None and med_id not in known:
            wanted.setdefault(med_id, set()).add(label)
    if not wanted:
        return
    missing: dict[str, str] = {}
    if client is None:
        missing = dict.fromkeys(wanted, "no usable fhirServer")
    else:
        read, late = _run_all({med_id: _read_medication(client, med_id) for med_id in wanted}, deadline)
        missing = dict.fromkeys(late, "the time budget ran out")
        for med_id, outcome in read.items():
            if isinstance(outcome, dict):
                resources.setdefault("Medication", []).append(outcome)
            else:
                missing[med_id] = outcome
    for med_id, reason in missing.items():
        problem = f"a referenced Medication was not read: {reason}"
        if DRAFT_ORDERS in wanted[med_id]:
            results.setdefault(DRAFT_ORDERS, KeyResult(DRAFT_ORDERS, "context", problem=problem))
        for key, template in templates.items():
            if resource_type_of(template) in wanted[med_id]:
                results[key].problem = results[key].problem or problem


def _not_in_r4(
    call: HookCall, results: dict[str, KeyResult], resources: Mapping[str, list[Resource]]
) -> dict[str, dict[str, int]]:
    """The resources of types FHIR R4 does not have, counted by where they came; each such place is incomplete:
    what it holds is unknown to the rules."""
    found: dict[str, dict[str, int]] = {}
    if drafts := not_in_r4(call.draft_orders):
        found[DRAFT_ORDERS] = drafts
    if not NOT_IN_R4.isdisjoint(resources):  # the usual record holds none: no second pass over its resources
        for key, result in results.items():
            if counts := not_in_r4(result.resources):
                found[key] = counts
    for where, counts in found.items():
        result = results.setdefault(where, KeyResult(where, "context"))
        result.problem = result.problem or described(counts)
    return found


def _medication_id(holder: Mapping[str, Any], endpoint: FhirEndpoint | None) -> str | None:
    """The id of the Medication a request/statement references on the FHIR server (not contained, not urn:)."""
    ref = holder.get("medicationReference")
    reference = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(reference, str) or reference.startswith(("#", "urn:")):
        return None
    if is_absolute(reference):
        if endpoint is None or not endpoint.owns(reference):
            return None
        reference = reference[len(endpoint.base) :].lstrip("/")
    kind, _, med_id = reference.partition("/")
    med_id = med_id.split("/_history", 1)[0]
    return med_id if kind == "Medication" and _FHIR_ID.fullmatch(med_id) else None


def _read_medication(client: FhirClient, med_id: str) -> Callable[[], Resource | str]:
    def run() -> Resource | str:
        try:
            resource = client.fetch(f"Medication/{med_id}", via=MEDICATION)
        except FetchFailed as failure:
            return failure.reason
        return resource if resource.get("resourceType") == "Medication" else "the answer is not a Medication"

    return run
