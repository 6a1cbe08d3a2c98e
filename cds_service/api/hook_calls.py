"""``POST /cds-services/{id}``: one hook call, handed to cds_service.evaluation."""
from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime

from flask import Blueprint, g

from ..evaluation import answer_hook, service_for, validate_envelope
from ..jsonbody import check_prefetch_size
from .context import authenticate, claims, components, json_body

bp = Blueprint("hook_calls", __name__)
bp.before_request(authenticate)
log = logging.getLogger("cds_service.hooks")


def patient_hash(patient_id: str) -> str:
    """A short one-way hash of the patient id, so logs can correlate calls without naming the patient."""
    return hashlib.sha256(patient_id.encode()).hexdigest()[:16]


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str):
    started = time.perf_counter()
    parts = components()
    service = service_for(parts.runtime, service_id)
    body = json_body()
    check_prefetch_size(body, int(parts.config["max_prefetch_entries"]))
    validate_envelope(body)
    g.hook_instance = body["hookInstance"]
    identity = claims()
    answer = answer_hook(
        parts.runtime, service, body, allowed_fhir_servers=identity.fhir_servers if identity else None
    )
    parts.feedback.record_issued(
        service.id,
        ((i.card["uuid"], i.rule_id, i.indicator) for i in answer.issued),
        datetime.now(UTC),
    )
    log.info(
        "hook answered",
        extra={
            "hookInstance": answer.call.hook_instance,
            "service": service.id,
            "patient": patient_hash(answer.call.patient_id),
            "cards": len(answer.issued),
            "rules": [i.rule_id for i in answer.issued],
            "incomplete": sorted(answer.incomplete),
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            **{k: round(v, 1) for k, v in answer.timings.items()},
        },
    )
    return answer.response
