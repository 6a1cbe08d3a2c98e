"""``POST /cds-services/{id}``: one hook call, handed to cds_service.evaluation."""
from __future__ import annotations

from flask import Blueprint
from flask.typing import ResponseReturnValue

from ..evaluation import answer_hook, read_request, service_for, validate_envelope
from ..server import metrics
from ..server.logs import fingerprint, loggable_hook_instance
from ..storage.issued_cards import IssuedRow
from ..wire.hook_request import PageDates
from .context import authenticate, claims, components, json_bytes
from .observability import annotate, record_summary

bp = Blueprint("hook_calls", __name__)
bp.before_request(authenticate)


MAX_LOGGED_WARNINGS = 20  # a record with hundreds of unreadable resources still gets a log line of bounded size


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> ResponseReturnValue:
    parts = components()
    service = service_for(parts.runtime, service_id)
    page_dates: dict[str, PageDates] = {}
    body = read_request(parts.runtime, json_bytes(), page_dates)
    validate_envelope(body)
    annotate(hookInstance=loggable_hook_instance(body["hookInstance"]))
    identity = claims()
    answer = answer_hook(
        parts.runtime,
        service,
        body,
        allowed_fhir_servers=identity.fhir_servers if identity else None,
        seen=parts.issued.seen,
        page_dates=page_dates,
    )
    patient = fingerprint(answer.call.patient_id)
    issued = [(i, "active") for i in answer.issued] + [(i, "silent") for i in answer.silent]
    parts.issued.add(
        service.id,
        (IssuedRow(i.card["uuid"], i.rule_id, i.indicator, how, answer.findings[i.card["uuid"]]) for i, how in issued),
        answer.issued_at,
        patient,
    )
    record = answer.record
    metrics.count_cards(
        service.id,
        ((i.rule_id, i.indicator, how) for i, how in issued),
        (i.rule_id for i in answer.repeats),
        bool(record.incomplete),
    )
    if record.unread:
        metrics.count_unread(record.unread)
        annotate(unread=record.unread)
    if answer.warnings:
        annotate(warnings=list(answer.warnings[:MAX_LOGGED_WARNINGS]))
    annotate(
        patient=patient,
        cards=len(answer.issued),
        rules=[i.rule_id for i in answer.issued],
        silent=[i.rule_id for i in answer.silent],
        repeats=[i.rule_id for i in answer.repeats],
        incomplete=sorted(record.incomplete),
        **record_summary(record),
        **{k: round(v, 1) for k, v in answer.timings.items()},
    )
    return answer.response
