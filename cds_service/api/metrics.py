"""``GET /metrics``: Prometheus exposition, added up over every worker of this instance.

Not authenticated, like the probes: it holds counts and latencies by service, rule and status, never patient
data, and scrapers (Prometheus, the Kubernetes annotations in deploy/) do not carry CDS Hooks JWTs. Expose it
only inside the cluster (deploy/ does) or turn it off with ``metrics_enabled = false``.
"""
from __future__ import annotations

from flask import Blueprint, Response

from ..server.metrics import exposition

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = exposition()
    return Response(body, content_type=content_type)
