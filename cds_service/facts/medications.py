"""MedicationRequest, MedicationStatement and draft orders → ``MedicationUse``, classified by ingredient.

Which orders count as current (clinical-reference.md §2 "How to match"):

* MedicationRequest ``active`` or ``on-hold``; ``completed`` only while ``dispenseRequest.validityPeriod``
  covers now; never one with ``doNotPerform`` true;
* MedicationStatement ``active`` or ``intended``, or any other status whose effective period ended within the
  last ``statement_grace`` (30 days, a chosen default, not a guideline figure); never ``entered-in-error``
  or ``not-taken``;
* every draft order of an order hook (``selected`` says whether it is in ``context.selections``).

The medication history (``medication_history``) keeps every request and statement that records a course, current
or not, with its start and, for a stopped or completed one, its recorded end: timing criteria read it.

The medication is read from ``medicationCodeableConcept`` or from the ``Medication`` that
``medicationReference`` points at: contained (``#id``), or in the record (``Medication/x``, ``urn:uuid:x``, or a
full URL ending in ``Medication/x``), where the record layer also puts Medications it read from the FHIR server.
Ingredients come from RxNorm codes (ingredient codes directly, clinical and branded products through the shipped
tables) and ATC codes of every coding (a local code beside them is ignored); when no code is known, from
ingredient and brand names in the text and displays (whole words; ``Terminology.medication_text``), with a
warning when those names point at different classes.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from .fhir import (
    as_list,
    codings,
    concept_text,
    guarded,
    moment,
    period_end,
    period_start,
    reference_name,
    status_of,
)
from .model import Coding, MedicationUse
from .terminology import ATC, RXNORM, Terminology

Kind = Literal["request", "statement", "draft"]
CURRENT_REQUEST = frozenset({"active", "on-hold"})
CURRENT_STATEMENT = frozenset({"active", "intended"})
NEVER_STATEMENT = frozenset({"entered-in-error", "not-taken"})
NEVER_TAKEN = NEVER_STATEMENT | {"cancelled", "draft"}  # a course that never happened: not in the history
ENDED_REQUEST = frozenset({"completed", "stopped"})  # a request whose validity period end is when it ended


@dataclass(frozen=True, slots=True)
class Medicine:
    """What a request or statement is for: its codings and best name, classified by ingredient."""

    codes: tuple[Coding, ...]
    name: str
    ingredients: frozenset[str]
    classes: frozenset[str]
    unresolved: str | None = None  # a medicationReference that could not be followed
    ambiguity: str | None = None  # text-only names of different classes (Terminology.medication_text)


@dataclass(slots=True)
class Candidate:
    """A current order or statement before de-duplication (the MedicationUse is built only for the kept ones)."""

    kind: Kind
    status: str
    when: datetime | None
    medicine: Medicine
    resource: Mapping[str, Any]
    selected: bool = False
    ended: datetime | None = None

    def use(self) -> MedicationUse:
        medicine = self.medicine
        return MedicationUse(
            name=medicine.name or "unnamed medication",
            ingredients=medicine.ingredients,
            classes=medicine.classes,
            kind=self.kind,
            status=self.status,
            selected=self.selected,
            date=self.when,
            reference=reference_name(self.resource),
            codes=medicine.codes,
            ended=self.ended,
            as_needed=as_needed(self.resource),
        )


class MedicationReader:
    """Reads one record's medication requests, statements and drafts; ``medications`` are the record's
    ``Medication`` resources, which ``medicationReference`` may point at."""

    def __init__(self, terminology: Terminology, medications: Iterable[Any], warnings: list[str]) -> None:
        self._terminology = terminology
        self._warnings = warnings
        self._by_id: dict[str, Mapping[str, Any]] = {}
        self._known: dict[tuple[tuple[tuple[str, str, str], ...], str], Medicine] = {}  # the same drug recurs
        for medication in medications:
            if isinstance(medication, dict) and isinstance(medication.get("id"), str):
                self._by_id[medication["id"]] = medication

    def request(self, resource: Mapping[str, Any], now: datetime) -> Candidate | None:
        status = status_of(resource)
        if resource.get("doNotPerform") is True:
            return None  # an order NOT to give the medicine
        if status not in CURRENT_REQUEST and not (status == "completed" and _validity_covers(resource, now)):
            return None
        return self._candidate(resource, "request", status, moment(resource.get("authoredOn")))

    def statement(self, resource: Mapping[str, Any], now: datetime, grace: timedelta) -> Candidate | None:
        status = status_of(resource)
        if status in NEVER_STATEMENT:
            return None
        period = resource.get("effectivePeriod")
        ended = period_end(period)
        if status not in CURRENT_STATEMENT:
            ended = ended or moment(resource.get("effectiveDateTime"))
            if ended is None or ended < now - grace:
                return None
        elif ended is not None and ended < now - grace:
            return None  # an 'active' statement whose period ended long ago was never updated: not current
        started = (moment(resource.get("effectiveDateTime")) or period_start(period)
                   or moment(resource.get("dateAsserted")))
        return self._candidate(resource, "statement", status, started)

    def past_or_present(self, resource: Mapping[str, Any]) -> MedicationUse | None:
        """A request or statement of any status as a course with its start and (when recorded) its end; None for
        one that never happened (entered in error, not taken, cancelled, a draft, an order not to give)."""
        status = status_of(resource)
        if resource.get("doNotPerform") is True or status in NEVER_TAKEN:
            return None
        if resource.get("resourceType") == "MedicationStatement":
            period = resource.get("effectivePeriod")
            started = (moment(resource.get("effectiveDateTime")) or period_start(period)
                       or moment(resource.get("dateAsserted")))
            ended = period_end(period)
            kind: Kind = "statement"
        else:
            dispense = resource.get("dispenseRequest")
            validity = dispense.get("validityPeriod") if isinstance(dispense, dict) else None
            started = moment(resource.get("authoredOn")) or period_start(validity)
            ended = period_end(validity) if status in ENDED_REQUEST else None
            kind = "request"
        found = self._candidate(resource, kind, status, started, warn_missing=False, warn_unresolved=False)
        if found is None:
            return None
        found.ended = ended
        return found.use()

    def draft(self, resource: Mapping[str, Any], selections: frozenset[str]) -> MedicationUse | None:
        if resource.get("resourceType") not in ("MedicationRequest", "MedicationStatement"):
            return None  # draft ServiceRequests and the like carry no medication
        if resource.get("doNotPerform") is True:
            return None
        found = self._candidate(resource, "draft", status_of(resource), moment(resource.get("authoredOn")),
                                warn_missing=False)
        if found is None:
            return None
        found.selected = reference_name(resource) in selections
        return found.use()

    def _candidate(
        self, resource: Mapping[str, Any], kind: Kind, status: object, when: datetime | None, *,
        warn_missing: bool = True, warn_unresolved: bool = True,
    ) -> Candidate | None:
        medicine = self._medicine(resource)
        if medicine is None:
            if warn_missing:
                self._warn(resource, "no medication (neither medicationCodeableConcept nor medicationReference)")
            return None
        if medicine.unresolved and warn_unresolved:
            self._warn(resource, f"medication reference {medicine.unresolved!r} not found; classified by its text")
        if medicine.ambiguity and warn_unresolved:
            self._warn(resource, f"ambiguous medication text: {medicine.ambiguity}")
        shown = status if isinstance(status, str) else "unknown"
        return Candidate(kind, shown, when, medicine, resource)

    def _medicine(self, resource: Mapping[str, Any]) -> Medicine | None:
        concept = resource.get("medicationCodeableConcept")
        if isinstance(concept, (dict, list)) and concept:
            return self._describe(codings(concept), concept_text(concept))
        if isinstance(concept, str) and concept.strip():  # not FHIR, but its meaning is plain
            return self._describe([], concept.strip())
        ref = resource.get("medicationReference")
        if not isinstance(ref, dict):
            return None
        target = ref.get("reference")
        medication = self._resolve(resource, target) if isinstance(target, str) else None
        if medication is not None:
            code = medication.get("code")
            found = codings(code)
            for item in as_list(medication.get("ingredient")):  # Medication.ingredient[].itemCodeableConcept
                if isinstance(item, dict):
                    found.extend(codings(item.get("itemCodeableConcept")))
            text = concept_text(code)
            if found or text:
                return self._describe(found, text)
        display = ref.get("display")
        if not isinstance(target, str) and not isinstance(display, str):
            return None
        described = self._describe([], display if isinstance(display, str) else "")
        return replace(described, unresolved=target) if medication is None else described

    def _resolve(self, resource: Mapping[str, Any], reference: str) -> Mapping[str, Any] | None:
        if reference.startswith("#"):
            for contained in as_list(resource.get("contained")):
                if isinstance(contained, dict) and contained.get("id") == reference[1:]:
                    return contained
            return None
        if reference.startswith("urn:uuid:"):
            return self._by_id.get(reference[len("urn:uuid:"):])
        head, _, ident = reference.rstrip("/").rpartition("/")
        if head == "Medication" or head.endswith("/Medication"):
            return self._by_id.get(ident.split("/_history")[0])
        return None

    def _describe(self, found: list[tuple[str, str, str]], text: str) -> Medicine:
        """The medicine named by these codings and text, classified: RxNorm (ingredient, or product through the
        shipped tables) and ATC codes, and local codes a site maps onto them, first; when no code is known,
        ingredient and brand names in the text and the codings' displays (an unmapped local code is carried but
        not read)."""
        key = (tuple(found), text)
        known = self._known.get(key)
        if known is not None:
            return known
        terminology = self._terminology
        ingredients: set[str] = set()
        for system, code, _ in found:
            if system in (RXNORM, ATC) or system in terminology.site_systems:
                ingredients |= terminology.ingredients_for(system, code)
        words = " ".join([text, *(display for _, _, display in found if display)])
        matched = None if ingredients else terminology.medication_text(words)
        named = matched.ingredients if matched else frozenset(ingredients)
        medicine = self._known[key] = Medicine(
            codes=tuple(Coding(s, c, d) for s, c, d in found),
            name=text,
            ingredients=named,
            classes=terminology.ingredient_classes(named, words),
            ambiguity=matched.ambiguity if matched else None,
        )
        return medicine

    def _warn(self, resource: Mapping[str, Any], message: str) -> None:
        self._warnings.append(f"{reference_name(resource)}: {message}")


def as_needed(resource: Mapping[str, Any]) -> bool | None:
    """Whether the medicine is taken only as needed: True when every dosage (``dosageInstruction`` of a request,
    ``dosage`` of a statement) says so (``asNeededBoolean`` true or an ``asNeededCodeableConcept``), False when a
    dosage is recorded and one is regular, None when no dosage is recorded."""
    dosages = [d for d in as_list(resource.get("dosageInstruction") or resource.get("dosage")) if isinstance(d, dict)]
    if not dosages:
        return None
    return all(d.get("asNeededBoolean") is True or bool(d.get("asNeededCodeableConcept")) for d in dosages)


def _validity_covers(resource: Mapping[str, Any], now: datetime) -> bool:
    dispense = resource.get("dispenseRequest")
    period = dispense.get("validityPeriod") if isinstance(dispense, dict) else None
    start, end = period_start(period), period_end(period)
    return end is not None and end >= now and (start is None or start <= now)


def current_medications(
    reader: MedicationReader,
    requests: Iterable[Any],
    statements: Iterable[Any],
    drafts: Iterable[Any],
    selections: frozenset[str],
    now: datetime,
    statement_grace: timedelta,
    warnings: list[str],
) -> tuple[MedicationUse, ...]:
    """Current requests and statements (one per kind and ingredient set, the newest), then every draft."""
    kept: dict[tuple[str, object], Candidate] = {}
    candidates = [*guarded("MedicationRequest", requests, lambda r: reader.request(r, now), warnings),
                  *guarded("MedicationStatement", statements, lambda r: reader.statement(r, now, statement_grace),
                           warnings)]
    for candidate in candidates:
        key = (candidate.kind, candidate.medicine.ingredients or candidate.medicine.name.casefold())
        known = kept.get(key)
        if known is None or _newer(candidate, known):
            kept[key] = candidate
    drafted = guarded("draft order", drafts, lambda r: reader.draft(r, selections), warnings)
    return (*(c.use() for c in kept.values()), *drafted)


def medication_history(
    reader: MedicationReader, requests: Iterable[Any], statements: Iterable[Any]
) -> tuple[MedicationUse, ...]:
    """Every request and statement that records a course, current or not, with its start and end dates
    (a resource that cannot be read was already reported by ``current_medications``)."""
    unreported: list[str] = []
    return (*guarded("MedicationRequest", requests, reader.past_or_present, unreported),
            *guarded("MedicationStatement", statements, reader.past_or_present, unreported))


def _newer(candidate: Candidate, known: Candidate) -> bool:
    if candidate.when is None:
        return False
    return known.when is None or candidate.when > known.when

