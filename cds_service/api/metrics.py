"""``GET /metrics``: Prometheus exposition, added up over every worker of this instance.

Not authenticated, like the probes: it holds counts and latencies by service, rule and status, never patient
data, and scrapers (Prometheus, the Kubernetes annotations in deploy/) do not carry CDS Hooks JWTs. Expose it
only inside the cluster (deploy/ does) or turn it off with ``metrics_enabled = false``.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime

from flask import Blueprint, Response
from sqlalchemy.exc import SQLAlchemyError

from ..server.metrics import exposition
from ..storage.analytics import rule_anomalies
from .context import components

bp = Blueprint("metrics", __name__)
log = logging.getLogger("cds_service.metrics")


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = exposition(_anomalies())
    return Response(body, content_type=content_type)


def _anomalies() -> dict[str, bool] | None:
    """Today's firing-rate check of every rule that runs (active or silent); None while the database is down."""
    parts = components()
    evaluated = [rule for rule, how in parts.runtime.governance.deployment.items() if how != "off"]
    try:
        parts.issued.flush()
        return rule_anomalies(parts.engine, datetime.now(UTC).date(), evaluated)
    except SQLAlchemyError as exc:
        log.warning("firing-rate check left out of the metrics: %s", type(exc).__name__)
        return None
