"""One hook call from request body to response, shared by the HTTP endpoint and ``cds-service evaluate``.

request body -> HookCall -> PatientRecord -> PatientFacts -> rules -> cards -> response. No Flask here.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from .config import ConfigError, Settings
from .facts.build import FactWindows, build_facts, first_day_within
from .facts.concept_maps import read_site_maps
from .facts.model import PatientFacts
from .facts.terminology import SystemCode, Terminology
from .governance import Governance, SeenLookup, finding_fingerprint, with_override_reasons
from .record.model import PatientRecord
from .record.obtain import obtain_record
from .record.settings import RecordSettings
from .record.templates import LABS, SYMPTOMS, Lookback, build_prefetch_templates
from .rules.criteria import Memo
from .rules.engine import IssuedCard, RuleSet, evaluate
from .schemas import first_violation
from .wire.errors import (
    AUTHORIZATION_WITHOUT_SERVER,
    HOOK_MISMATCH,
    INVALID_CONTEXT,
    INVALID_REQUEST,
    UNKNOWN_SERVICE,
    CdsError,
)
from .wire.hook_request import HookCall, PageDates
from .wire.request_body import parse_hook_body
from .wire.services import Service, ServiceRegistry
from .wire.validation import card_problems, describe

log = logging.getLogger("cds_service.evaluation")


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a process loads once and every hook call shares: terminology, rules, services, settings."""

    settings: Settings
    terminology: Terminology
    ruleset: RuleSet  # every rule loaded, with the site's override reasons
    governance: Governance  # which of them run, shown or silent
    registry: ServiceRegistry
    record_settings: RecordSettings
    fact_windows: FactWindows

    @classmethod
    def load(cls, settings: Settings) -> Runtime:
        """Everything a hook call needs; raises ConfigError when the site's code maps have a problem."""
        terminology, loaded, registry = _knowledge(settings.rules_dir)
        if settings.concept_maps_dir is not None:
            terminology = site_terminology(terminology, settings.concept_maps_dir)
            registry = ServiceRegistry(build_prefetch_templates(
                terminology, [SystemCode(*code) for code in terminology.site_lab_codes]))
        ruleset = with_override_reasons(loaded, settings.override_reasons)
        return cls(
            settings=settings,
            terminology=terminology,
            ruleset=ruleset,
            governance=Governance.of(ruleset, settings),
            registry=registry,
            record_settings=RecordSettings.from_settings(settings),
            fact_windows=FactWindows.for_rules(ruleset.lab_lookbacks, terminology.lab_codes),
        )

    def now(self) -> datetime:
        """The evaluation time: the configured ``now`` (for reproducible runs over old data) or the clock."""
        return self.settings.now or datetime.now(UTC)


@cache
def _knowledge(rules_dir: Path | None) -> tuple[Terminology, RuleSet, ServiceRegistry]:
    """Value sets, rules and services: read and checked once per process (they never change while it runs)."""
    terminology = Terminology.load()
    ruleset = RuleSet.load(rules_dir, terminology)
    return terminology, ruleset, ServiceRegistry(build_prefetch_templates(terminology))


def site_terminology(terminology: Terminology, folder: Path) -> Terminology:
    """``terminology`` reading the local codes of the site's ConceptMaps in ``folder``; a ConfigError with one
    line per problem (file and entry) when any map cannot be used."""
    maps = read_site_maps(folder, terminology)
    if maps.problems:
        lines = "\n".join(f"  {problem}" for problem in maps.problems)
        raise ConfigError(f"concept_maps_dir = {str(folder)!r}: {len(maps.problems)} problem(s) "
                          f"(cds-service terminology check):\n{lines}")
    return terminology.with_site_maps({code: mapping.target for code, mapping in maps.mappings.items()})


@dataclass(slots=True)
class HookAnswer:
    """The response plus what the log line, metrics and the issued-card record need about it."""

    response: dict[str, Any]
    issued: list[IssuedCard]  # the cards shown
    call: HookCall
    record: PatientRecord
    issued_at: datetime  # the real clock (also when ``now`` is configured): repeat windows are measured on it
    silent: list[IssuedCard] = field(default_factory=list)  # silent rules' would-be cards, never returned
    findings: dict[str, str] = field(default_factory=dict)  # card uuid -> finding fingerprint, shown and silent
    repeats: list[IssuedCard] = field(default_factory=list)  # left out as repeats, shown or silent
    timings: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # what the facts layer could not read or found unclear


def read_request(runtime: Runtime, raw: bytes, page_dates: dict[str, PageDates] | None = None) -> dict[str, Any]:
    """The request body as a JSON object within the configured limits (400, 413); prefetched Observations older
    than anything the rules read may be left out while it is parsed (cds_service.wire.request_body).
    ``page_dates``, when given, receives how each prefetched Bundle's page was dated as sent, for ``answer_hook``."""
    settings, now = runtime.settings, runtime.now()
    return parse_hook_body(
        raw,
        max_depth=settings.max_json_depth,
        max_entries=settings.max_prefetch_entries,
        observations_from=runtime.fact_windows.observations_read_from(now),
        lab_results_from=runtime.fact_windows.lab_results_read_from(now),
        page_dates=page_dates,
    )


def validate_envelope(body: Any) -> None:
    """Raise a 400 CdsError naming the first problem when the body is not a valid CDS Hooks request: CDS-0006
    for fhirAuthorization without fhirServer, CDS-0005 for a hook context that is wrong, CDS-0003 otherwise."""
    error = first_violation("request", body)
    if error is None:
        return
    if error.validator == "dependentRequired" and not error.absolute_path:
        raise CdsError(AUTHORIZATION_WITHOUT_SERVER)
    in_context = list(error.absolute_path)[:1] == ["context"] and isinstance(body.get("context"), dict)
    raise CdsError(INVALID_CONTEXT if in_context else INVALID_REQUEST, describe(error))


def answer_hook(
    runtime: Runtime,
    service: Service,
    body: Mapping[str, Any],
    *,
    allowed_fhir_servers: tuple[str, ...] | None = None,
    seen: SeenLookup | None = None,
    page_dates: Mapping[str, PageDates] | None = None,
) -> HookAnswer:
    """Answer one validated request for ``service``; raises CdsError for anything the client must fix.

    ``seen`` looks up findings issued before (the issued-card record); without it nothing counts as a repeat.
    ``page_dates`` (from ``read_request``) lets a partial lab prefetch that reaches back past the look-back go
    without its completing search; without it every partial lab prefetch is completed.
    """
    if body["hook"] != service.hook:
        raise CdsError(HOOK_MISMATCH, f"This service answers {service.hook}, not the hook the request names.")
    started = time.perf_counter()
    call = HookCall.from_request(service.id, body)
    settings = runtime.record_settings
    if allowed_fhir_servers is not None:
        settings = settings.for_issuer(allowed_fhir_servers)
    now = runtime.now()
    lookbacks = _lookbacks(runtime.fact_windows, now)
    record = obtain_record(call, service.prefetch, settings, lookbacks=lookbacks, page_dates=page_dates)
    fetched = time.perf_counter()
    facts = build_facts(record, runtime.terminology, now, runtime.fact_windows)
    built = time.perf_counter()
    governance, issued_at = runtime.governance, datetime.now(UTC)
    memo: Memo = {}  # criteria the active and silent rules share are evaluated once
    shown = [card for card in _every_card(governance.active, facts, call.hook, memo) if _well_formed(card)]
    silent = _every_card(governance.silent, facts, call.hook, memo)
    findings = {c.card["uuid"]: finding_fingerprint("active", call.patient_id, call.user_id, c) for c in shown}
    findings |= {c.card["uuid"]: finding_fingerprint("silent", call.patient_id, call.user_id, c) for c in silent}
    repeats: list[IssuedCard] = []
    if seen is not None:
        new = {c.card["uuid"] for c in governance.new_findings([*shown, *silent], findings, issued_at, seen)}
        repeats = [c for c in (*shown, *silent) if c.card["uuid"] not in new]
        shown, silent = [c for c in shown if c.card["uuid"] in new], [c for c in silent if c.card["uuid"] in new]
    shown = shown[: runtime.settings.max_cards]
    done = time.perf_counter()
    return HookAnswer(
        response={"cards": [c.card for c in shown]},
        issued=shown,
        call=call,
        record=record,
        issued_at=issued_at,
        silent=silent,
        findings=findings,
        repeats=repeats,
        warnings=facts.warnings,
        timings={
            "record_ms": (fetched - started) * 1000,
            "facts_ms": (built - fetched) * 1000,
            "rules_ms": (done - built) * 1000,
        },
    )


def _every_card(ruleset: RuleSet, facts: PatientFacts, hook: str, memo: Memo) -> list[IssuedCard]:
    """Every card of ``ruleset``, in order: the cap applies once repeats are left out."""
    return evaluate(ruleset, facts, hook, max_cards=len(ruleset.rules), memo=memo)


def _lookbacks(windows: FactWindows, now: datetime) -> dict[str, Lookback]:
    """How far back the rules read the dated prefetch keys. Labs: no older than any rule looks back; the FHIR
    server may leave older ones out of the service's own searches (``date`` searches Observation.effective[x];
    the facts layer drops the same labs from prefetched data). Symptom Observations: within their window; their
    searches are not narrowed, only paging stops at a page wholly older than it."""
    found = {SYMPTOMS: Lookback(first_day_within(now, windows.observation_window), search=False)}
    if windows.lab_lookback is not None:
        found[LABS] = Lookback(first_day_within(now, windows.lab_lookback), search=True)
    return found


def _well_formed(issued: IssuedCard) -> bool:
    """A card that breaks the 2.0.1 rules is a bug in its rule: log it and leave it out, never send it."""
    problems = card_problems(issued.card)
    if problems:
        log.error("rule %s produced an invalid card, not sent: %s", issued.rule_id, "; ".join(problems[:5]))
    return not problems


def service_for(runtime: Runtime, service_id: str) -> Service:
    service = runtime.registry.get(service_id)
    if service is None:
        raise CdsError(UNKNOWN_SERVICE, "Known services are listed at /cds-services.")
    return service
