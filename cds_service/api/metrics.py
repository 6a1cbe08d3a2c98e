"""``GET /metrics`` on the main port: Prometheus exposition, added up over every worker of this instance.

It holds counts and latencies by service, rule and status, never patient data; still, when authentication is on
it needs a JWT like the CDS Hooks routes, so the main port tells an outsider nothing. Scrapers carry no CDS Hooks
JWT: give them ``metrics_bind`` (a separate address, see cds_service.server.metrics), as deploy/kubernetes does.
"""
from __future__ import annotations

from flask import Blueprint, Response

from ..server.metrics import FiringRateAnomalies, exposition
from .context import authenticate, components

bp = Blueprint("metrics", __name__)
bp.before_request(authenticate)


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = exposition(FiringRateAnomalies(components().firing_rate_anomalies))
    return Response(body, content_type=content_type)
