"""``POST /cds-services/{id}/feedback``: clinicians' accepted and overridden cards, stored durably."""
from __future__ import annotations

from flask import Blueprint

from ..errors import INVALID_FEEDBACK, CdsError
from ..evaluation import service_for
from ..wire import first_error
from .context import authenticate, components, json_body

bp = Blueprint("feedback", __name__)
bp.before_request(authenticate)


@bp.post("/cds-services/<service_id>/feedback")
def post_feedback(service_id: str):
    parts = components()
    service = service_for(parts.runtime, service_id)
    body = json_body()
    problem = first_error("feedback", body)
    if problem:
        raise CdsError(INVALID_FEEDBACK, problem)
    stored = parts.feedback.record_feedback(service.id, body["feedback"])
    return {"received": stored.received, "stored": stored.new, "duplicates": stored.duplicates}
