"""Which hooks a population scan can answer, and the context each patient's call carries beyond the patient.

patient-view needs only the patient. encounter-start needs an ``encounterId``: the scan takes each patient's most
recent Encounter in the export (the latest ``period.start`` not after ``now``; undated Encounters rank below dated
ones; cancelled and entered-in-error ones are no visit) and reads Encounter files only for this hook. A patient
with no such Encounter is counted as not evaluated with the reason: an encounter is never invented.
order-select and order-sign are about a clinician's draft orders, which a population export does not have.
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import orjson

from ..evaluation import Runtime
from ..facts.fhir import period_start
from ..wire.hook_request import ENCOUNTER_START, ORDER_SELECT, ORDER_SIGN, PATIENT_VIEW
from .routing import Router

SCANNABLE = (PATIENT_VIEW, ENCOUNTER_START)
ENCOUNTER_ID = "encounterId"
CONTEXT_RESOURCES = {ENCOUNTER_START: {ENCOUNTER_ID: "Encounter"}}  # hook -> context field -> resource type
NOT_A_VISIT = frozenset({"cancelled", "entered-in-error"})
NO_ENCOUNTER = "encounter-start: the export has no Encounter for the patient"
NO_USABLE_ENCOUNTER = ("encounter-start: every Encounter of the patient is cancelled, entered in error, without an "
                       "id or later than now")


class HookNotScannable(ValueError):
    """``--hook`` names a hook the scan cannot answer for a population (the message says why and which can)."""


def check_hook(hook: str) -> None:
    """Raise HookNotScannable unless a population export holds what ``hook``'s calls need."""
    if hook in SCANNABLE:
        return
    answered = " and ".join(SCANNABLE)
    if hook in (ORDER_SELECT, ORDER_SIGN):
        raise HookNotScannable(f"--hook {hook} is about a clinician's draft orders, which a population export does "
                               f"not have; the scan answers {answered}")
    raise HookNotScannable(f"--hook {hook} is not a hook this service answers; the scan answers {answered}")


def router_for(runtime: Runtime, hook: str) -> Router:
    """The router of ``hook``'s service: its prefetch keys, and the resources its context is taken from."""
    service = runtime.registry.for_hook(hook)
    return Router.of(service.prefetch if service else {}, CONTEXT_RESOURCES.get(hook, {}))


def hook_context(hook: str, lines: dict[str, list[bytes]], now: datetime) -> dict[str, str] | str:
    """The context fields ``hook`` needs besides userId and patientId, from the lines routed to each field; or
    why the patient cannot be evaluated."""
    if hook != ENCOUNTER_START:
        return {}
    encounters = lines.get(ENCOUNTER_ID, [])
    if not encounters:
        return NO_ENCOUNTER
    chosen = latest_encounter(encounters, now)
    return {ENCOUNTER_ID: chosen} if chosen else NO_USABLE_ENCOUNTER


def latest_encounter(lines: Iterable[bytes], now: datetime) -> str | None:
    """The id of the most recent Encounter among ``lines`` that could be starting at ``now`` (ties: the greatest
    id, so every run picks the same one)."""
    best: tuple[bool, datetime, str] | None = None
    for line in lines:
        encounter = orjson.loads(line)
        rid = encounter.get("id")
        if not isinstance(rid, str) or not rid or encounter.get("status") in NOT_A_VISIT:
            continue
        start = period_start(encounter.get("period"))
        if start is not None and start > now:
            continue
        rank = (start is not None, start or now, rid)
        if best is None or rank > best:
            best = rank
    return best[2] if best else None
