"""Every error leaves as JSON: a FHIR OperationOutcome, never HTML and never a stack trace."""
from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import replace

from flask import Flask, Response, jsonify, request
from gunicorn.http.errors import ParseException
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from ..wire.errors import (
    HTTP_ERROR,
    INTERNAL,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    STORE_UNAVAILABLE,
    TOO_LARGE,
    CdsError,
    ErrorKind,
    operation_outcome,
)
from .observability import annotate, logged_path

log = logging.getLogger("cds_service.errors")


def _discard_unread_body(status: int) -> None:
    """Read and drop what is left of the request body, so that the connection stays usable after the answer.

    An error answered before the view read the body (415 for the media type, 404 for an unknown service) leaves
    the body on the connection. gunicorn answers ``Connection: keep-alive``, then drains at most 64 KiB of the
    body and closes the connection if more is left, so the client's next request on it fails (bench/soak.py met
    this for about one request in twenty). A body within the limit is read here instead; one declared over the
    limit (413) is not, nor is the body of a client that failed authentication (401).
    """
    declared, limit = request.content_length, request.max_content_length
    if status == 401 or (declared is not None and limit is not None and declared > limit):
        return
    with suppress(HTTPException, ParseException, OSError):  # over the limit after all, or the client has gone
        while request.stream.read(65536):
            pass


def _answer(kind: ErrorKind, detail: str | None = None, headers: dict[str, str] | None = None) -> Response:
    _discard_unread_body(kind.status)
    annotate(error=kind.code)
    response = jsonify(operation_outcome(kind, detail))
    response.status_code = kind.status
    response.content_type = "application/fhir+json"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register(app: Flask) -> None:
    @app.errorhandler(CdsError)
    def cds_error(error: CdsError) -> Response:
        level = logging.WARNING if error.status != 401 else logging.INFO
        log.log(level, "%s %s -> %s %s", request.method, logged_path(), error.status, error.kind.code)
        return _answer(error.kind, error.detail, error.headers)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_error: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        return _answer(TOO_LARGE, f"The limit is {limit} bytes.")

    @app.errorhandler(MethodNotAllowed)
    def method_not_allowed(error: MethodNotAllowed) -> Response:
        allowed = ", ".join(sorted(error.valid_methods or []))
        return _answer(METHOD_NOT_ALLOWED, f"Allowed: {allowed}.", {"Allow": allowed})

    @app.errorhandler(NotFound)
    def not_found(_error: NotFound) -> Response:
        return _answer(NOT_FOUND)

    @app.errorhandler(HTTPException)
    def other_http(error: HTTPException) -> Response:
        status = error.code or 500
        if status >= 500:
            return _answer(INTERNAL)
        return _answer(replace(HTTP_ERROR, status=status), error.name)

    @app.errorhandler(ParseException)
    def unreadable_body(_error: ParseException) -> Response:
        # gunicorn parses a chunked body while the view reads it: broken chunk framing is the client's error
        return _answer(HTTP_ERROR, "The request body's chunked transfer encoding is malformed.")

    @app.errorhandler(OperationalError)
    def store_down(error: OperationalError) -> Response:
        log.error("database unavailable: %s", type(error.orig).__name__ if error.orig else "error")
        return _answer(STORE_UNAVAILABLE)

    @app.errorhandler(Exception)
    def bug(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, logged_path())
        return _answer(INTERNAL)
