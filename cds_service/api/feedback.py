"""``POST /cds-services/{id}/feedback``: clinicians' accepted and overridden cards, stored durably."""
from __future__ import annotations

from flask import Blueprint
from flask.typing import ResponseReturnValue

from ..evaluation import service_for
from ..server import metrics
from ..storage.feedback import timestamp_problem
from ..wire.errors import INVALID_FEEDBACK, CdsError
from ..wire.validation import first_error
from .context import authenticate, components, json_body
from .observability import annotate

bp = Blueprint("feedback", __name__)
bp.before_request(authenticate)


@bp.post("/cds-services/<service_id>/feedback")
def post_feedback(service_id: str) -> ResponseReturnValue:
    parts = components()
    service = service_for(parts.runtime, service_id)
    body = json_body()
    problem = first_error("feedback", body) or timestamp_problem(body["feedback"])
    if problem:
        raise CdsError(INVALID_FEEDBACK, problem)
    stored = parts.feedback.record_feedback(service.id, body["feedback"])
    metrics.count_feedback(service.id, (entry["outcome"] for entry in body["feedback"]), stored.duplicates)
    annotate(feedback=stored.received, stored=stored.new)
    return {"received": stored.received, "stored": stored.new, "duplicates": stored.duplicates}
