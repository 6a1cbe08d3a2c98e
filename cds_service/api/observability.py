"""One structured log line and one latency observation per HTTP request, whatever its outcome.

Views add what they know with :func:`annotate` (hookInstance, the hashed patient id, cards, rule ids, ...); the
error handlers add the error code; the FHIR requests the record layer made for this request are collected with
their durations. ``after_request`` runs for answers and error answers alike, so every request gets its line,
with its status and duration. Probes and scrapes are logged at DEBUG to keep the log about real traffic.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

from flask import Flask, Response, g, request

from ..record.client import SKIPPED, start_recording, stop_recording
from ..record.model import PatientRecord
from ..server import metrics
from .context import known_service_id, path_is_own
from .paths import path_as_called

log = logging.getLogger("cds_service.requests")
QUIET_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "metrics.metrics"})


def record_summary(record: PatientRecord) -> dict[str, Any]:
    """Where the record's data came from (prefetch keys by source) and how many resources of each type."""
    by_source: dict[str, list[str]] = {}
    for key, source in record.sources.items():
        by_source.setdefault(source, []).append(key)
    return {"sources": by_source, "resources": {kind: len(items) for kind, items in sorted(record.resources.items())}}


def annotate(**fields: Any) -> None:
    """Add fields to this request's log line."""
    g.setdefault("log_fields", {}).update(fields)


def _service_label() -> str:
    """The CDS service id of the path, when it names a known service (a bounded metrics label)."""
    return known_service_id() or "-"


def logged_path() -> str:
    """The path when it is the service's own (``path_is_own``); otherwise the route pattern, or "(no route)"."""
    rule = request.url_rule
    if rule is None:
        return "(no route)"
    return request.path if path_is_own() else rule.rule


def register(app: Flask) -> None:
    @app.before_request
    def start() -> None:
        g.started = time.perf_counter()
        g.fhir_calls = start_recording()

    @app.after_request
    def finish(response: Response) -> Response:
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        endpoint = request.endpoint or "unmatched"
        service = _service_label()
        metrics.observe_request(endpoint, service, response.status_code, seconds)
        fields: dict[str, Any] = {
            "method": request.method,
            "path": logged_path(),
            "service": service,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 1),
            **g.get("log_fields", {}),
        }
        called = path_as_called()
        if called is not None and fields["path"] == request.path:
            fields["path_as_called"] = called  # repeated slashes: the client's URL is worth fixing
        calls = list(g.get("fhir_calls") or ())
        for call in calls:
            if call.outcome != SKIPPED:
                metrics.observe_fhir(call.resource, call.outcome, call.ms / 1000)
        if calls:
            fields["fhir_calls"] = [{k: v for k, v in asdict(call).items() if v is not None} for call in calls]
        log.log(logging.DEBUG if endpoint in QUIET_ENDPOINTS else logging.INFO, "request", extra=fields)
        return response

    @app.teardown_request
    def end(_error: BaseException | None) -> None:
        stop_recording()  # gunicorn reuses the thread for the next request
