"""``GET /cds-services``: the discovery document."""
from __future__ import annotations

from flask import Blueprint
from flask.typing import ResponseReturnValue

from .context import authenticate, components

bp = Blueprint("discovery", __name__)
bp.before_request(authenticate)


@bp.get("/cds-services")
def discovery() -> ResponseReturnValue:
    return components().runtime.registry.discovery()
