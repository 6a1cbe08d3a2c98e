"""How the service reads a request path: repeated slashes count as one, and nothing is ever redirected.

A browser does not follow a redirect in answer to a CORS preflight, and says nothing visible about it. A CDS
client that joins a discovery URL typed with a trailing slash and a service id calls
``/cds-services//muscle-cramps-patient-view``; werkzeug would answer that path with a 308 to the single-slash
spelling, and every hook call from the CDS Hooks sandbox would fail silently. So :class:`MergedSlashes` merges
repeated slashes before routing, and the app's URL map neither merges nor redirects itself (``app.py``). The
path as the client wrote it stays in the WSGI environ: a client JWT's ``aud`` may name it (``security``).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flask import request

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

PATH_AS_CALLED = "cds_service.path_as_called"  # environ key, set only when the path was changed
_REPEATED_SLASHES = re.compile(r"//+")


class MergedSlashes:
    """WSGI middleware: the request's ``PATH_INFO`` with every run of slashes merged into one."""

    def __init__(self, app: WSGIApplication):
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        merged = _REPEATED_SLASHES.sub("/", path)
        if merged != path:
            environ[PATH_AS_CALLED] = path
            environ["PATH_INFO"] = merged
        return self.app(environ, start_response)


def path_as_called() -> str | None:
    """This request's path as the client wrote it, when that differs from the path it was routed by."""
    path: Any = request.environ.get(PATH_AS_CALLED)
    # WSGI carries the path as latin-1 text; werkzeug reads it as UTF-8 the same way for request.path
    return path.encode("latin-1").decode(errors="replace") if isinstance(path, str) else None


def endpoint_paths() -> tuple[str, ...]:
    """The spellings of this request's endpoint a client may name (as a JWT's ``aud``): the route's own path,
    and the path as the client wrote it when that differs (repeated slashes, a trailing slash)."""
    routed = request.path
    rule = request.url_rule
    canonical = (routed.rstrip("/") or "/") if rule is not None and not rule.rule.endswith("/") else routed
    return tuple(dict.fromkeys((canonical, path_as_called() or routed)))
