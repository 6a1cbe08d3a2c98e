"""Liveness and readiness probes; never authenticated."""
from __future__ import annotations

from flask import Blueprint
from flask.typing import ResponseReturnValue

from ..storage.database import is_reachable
from .context import components

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """The process is alive and answering."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Rules are loaded and the database answers: the instance may take traffic."""
    parts = components()
    checks = {
        "rules": len(parts.runtime.ruleset.rules) > 0,
        "database": is_reachable(parts.engine),
    }
    ready = all(checks.values())
    return {"status": "ready" if ready else "not-ready", "checks": checks}, 200 if ready else 503
