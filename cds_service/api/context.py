"""Helpers every endpoint uses: the shared components, authentication, and reading the JSON body."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..security.auth import Claims
from ..wire.errors import UNSUPPORTED_MEDIA_TYPE, CdsError
from ..wire.json_body import parse_body
from .paths import endpoint_paths
from .state import EXTENSION_KEY, ServiceState

DEFAULT_PORTS = {"http": "80", "https": "443"}


def components() -> ServiceState:
    """The shared state of the app serving this request."""
    state: ServiceState = current_app.extensions[EXTENSION_KEY]
    return state


def authenticate() -> None:
    """``before_request`` for the CDS Hooks routes: verify the client's JWT when authentication is on.

    CORS preflights (OPTIONS) carry no token and are answered without one. The token's ``aud`` may name the URL
    as the client called it or the route's own spelling of it (``api/paths.py``), never another endpoint.
    """
    auth = components().authenticator
    if request.method == "OPTIONS" or not auth.enabled:
        return
    base = server_base_url(request.environ)
    audiences = [auth.audience_for(path, base) for path in _own_paths()]
    g.claims = auth.authenticate(request.headers.get("Authorization"), audiences)


def _own_paths() -> tuple[str, ...]:
    """The endpoint's spellings, or its route pattern when the path is not the service's own: the audience is
    logged when a JWT is refused (no token's ``aud`` names the pattern, so it is)."""
    rule = request.url_rule
    return endpoint_paths() if rule is None or path_is_own() else (rule.rule,)


def known_service_id() -> str | None:
    """The CDS service id the path names, when the service exists."""
    service_id = (request.view_args or {}).get("service_id")
    if isinstance(service_id, str) and components().runtime.registry.get(service_id) is not None:
        return service_id
    return None


def path_is_own() -> bool:
    """Every part of the path is the service's own (a route without variables, or a known service id). Anything
    else a client put in the URL may hold a token or a patient id, and is never logged."""
    rule = request.url_rule
    if rule is None:
        return False
    return not rule.arguments or (rule.arguments == {"service_id"} and known_service_id() is not None)


def server_base_url(environ: Mapping[str, Any]) -> str:
    """This server's own address as the WSGI server reports it: ``wsgi.url_scheme``, ``SERVER_NAME`` and
    ``SERVER_PORT``, which werkzeug and gunicorn fill from the listening socket, never from the Host header (a
    client's Host or X-Forwarded-Host header cannot change it; the scheme follows X-Forwarded-Proto only from a
    peer on gunicorn's ``forwarded_allow_ips``)."""
    scheme, host, port = environ["wsgi.url_scheme"], environ["SERVER_NAME"], str(environ["SERVER_PORT"])
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" if DEFAULT_PORTS.get(scheme) == port else f"{scheme}://{host}:{port}"


def claims() -> Claims | None:
    verified: Claims | None = g.get("claims")
    return verified


def json_body() -> dict[str, Any]:
    """The request body as a JSON object (415 for a non-JSON media type, 400 for bad JSON, 413 if too large)."""
    return parse_body(json_bytes(), max_depth=components().runtime.settings.max_json_depth)


def json_bytes() -> bytes:
    """The raw request body, once its media type says JSON (415 otherwise; 413 if too large)."""
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise CdsError(UNSUPPORTED_MEDIA_TYPE, "Send the body as application/json.")  # never echo the header
    raw = request.get_data(cache=False)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        raise RequestEntityTooLarge()  # a chunked body is cut at the limit by werkzeug, not refused
    return raw
