"""JSON OperationOutcome bodies for the errors gunicorn answers itself, before Flask sees the request.

A request line over gunicorn's limit (414), oversized headers (431), an unknown ``Expect`` (417) or broken HTTP
framing (400) is refused by gunicorn's parser, which writes an HTML page through ``gunicorn.util.write_error``.
Integrators and the CDS Hooks 3.0 ballot expect an OperationOutcome on every error, so ``serve`` replaces that
one writer. Gunicorn's message is not echoed: it quotes the request line, which may carry a query string.
"""
from __future__ import annotations

import json
import socket
from dataclasses import replace

from gunicorn import util

from ..wire.errors import HTTP_ERROR, INTERNAL, operation_outcome


def write_json_error(sock: socket.socket, status_int: int, reason: str, _mesg: str) -> None:
    """Drop-in for ``gunicorn.util.write_error``: the same status line, a FHIR OperationOutcome body."""
    kind = INTERNAL if status_int >= 500 else replace(HTTP_ERROR, status=status_int)
    body = json.dumps(operation_outcome(kind, None if status_int >= 500 else f"{status_int} {reason}.")).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/fhir+json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install() -> None:
    """Make gunicorn's own error responses JSON in this process (and the workers it forks)."""
    util.write_error = write_json_error
