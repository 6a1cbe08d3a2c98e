"""Routes of the card viewer, under ``/viewer``: its pages, its static files and the shipped example requests.

The pages call the real endpoints (``/cds-services``, ``/cds-services/{id}``, ``.../feedback``, ``/analytics``)
from the browser, with no token, so the viewer is registered only when authentication is off (see
``cds_service.app``). The pages link to their scripts, styles and the service relative to ``/viewer/``, so each
page answers only at its own spelling (``strict_slashes``): ``/viewer`` answers a 404 that names ``/viewer/``,
never a redirect (see ``api/paths.py``). Every answer carries a strict Content-Security-Policy: only this origin's
scripts, styles and connections, so even a card that slipped markup past the Markdown renderer could not run a script.
"""
from __future__ import annotations

from flask import Blueprint, Response

from ..api.context import components
from ..wire.errors import NOT_FOUND, CdsError
from .examples import shift_days, shifted, shipped_examples

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

bp = Blueprint("viewer", __name__, url_prefix="/viewer", static_folder="static", static_url_path="/static")


@bp.after_request
def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@bp.get("", strict_slashes=True)
def without_slash() -> Response:
    raise CdsError(NOT_FOUND, "The card viewer is at /viewer/ (with the trailing slash).")


@bp.get("/", strict_slashes=True)
def cards_page() -> Response:
    return bp.send_static_file("index.html")


@bp.get("/analytics", strict_slashes=True)
def analytics_page() -> Response:
    return bp.send_static_file("analytics.html")


@bp.get("/examples")
def list_examples() -> dict[str, object]:
    return {"examples": [example.summary() for example in shipped_examples().values()]}


@bp.get("/examples/<name>")
def get_example(name: str) -> dict[str, object]:
    """The example request moved to the service's evaluation time (see ``viewer/examples.py``)."""
    example = shipped_examples().get(name)
    if example is None:
        raise CdsError(NOT_FOUND, "No example request has this name; see /viewer/examples.")
    days = shift_days(components().runtime.now())
    return {"name": example.name, "hook": example.hook, "shiftedDays": days, "request": shifted(example.request, days)}
