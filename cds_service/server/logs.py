"""Structured logging: every log line is one JSON object on stderr, for the service and for gunicorn alike.

A line carries ``ts`` (UTC, RFC 3339 with milliseconds), ``level``, ``logger``, ``pid``, ``msg`` and every field
passed with ``extra={...}``; an exception adds ``exc``. Callers never put names, tokens or raw patient ids in a
line: the per-request line (cds_service/api/observability.py) carries the patient id only hashed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson


def fingerprint(value: str) -> str:
    """The first 16 hex digits of the SHA-256 of ``value``: lets log lines be correlated without holding it."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def loggable_hook_instance(hook_instance: str) -> str:
    """``hookInstance`` as a log line may hold it: a UUID (what CDS Hooks asks for) as it is, anything else only
    fingerprinted, since a careless client may have put a token or a patient id there."""
    try:
        if str(uuid.UUID(hook_instance)) == hook_instance.lower():
            return hook_instance
    except ValueError:
        pass
    return "sha256:" + fingerprint(hook_instance)


# The HTTP client libraries log request URLs (a FHIR search names the patient: ``Observation?patient=<id>``) at
# DEBUG, and urllib3 again in its WARNING lines about retries and unreadable headers. They are held at ERROR
# whatever ``log_level`` says; their ERROR lines hold no URL.
QUIET_LIBRARIES = ("urllib3", "requests", "charset_normalizer")
QUIET_LEVEL = "ERROR"


# Attributes every LogRecord has; anything else on a record came from ``extra`` and is written as a field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the ``extra`` fields, and exc for exceptions."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,  # which gunicorn worker
            "msg": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(line, default=str).decode()  # a tenth of json.dumps' cost on a request line
        except orjson.JSONEncodeError:  # a lone surrogate, an integer over 64 bits or a number key
            return json.dumps(line, default=str)  # ASCII, so that even a lone surrogate can be written


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each line (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def logging_dict(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` document: the root and gunicorn's loggers write JSON to stderr.

    gunicorn takes the same document as its ``logconfig_dict``, so its master and worker lines are JSON too.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"()": StderrHandler, "formatter": "json"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            **{name: {"level": QUIET_LEVEL} for name in QUIET_LIBRARIES},
        },
    }


def configure_logging(level: str) -> None:
    """Send every log line to stderr as JSON at ``level`` (a ``logging`` level name); ``QUIET_LIBRARIES`` at ERROR.

    Idempotent, and it leaves other handlers on the root logger in place (a test runner's capture, say).
    """
    root = logging.getLogger()
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(QUIET_LEVEL)
    if not any(isinstance(handler, StderrHandler) for handler in root.handlers):
        handler = StderrHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
