"""gunicorn's logger for ``serve``: gunicorn's own lines as JSON, and no access log.

The service writes one JSON line per request itself (cds_service/api/observability.py). gunicorn's access log
is switched off by ``accesslog = None`` only when no logging configuration is given either; with the
``logconfig_dict`` that makes its lines JSON, gunicorn built every access line's fields (all request headers,
a formatted time, the status) and then dropped the line on a silent logger (its cost: bench/README.md,
seventh round).
"""
from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger


class ServiceLogger(Logger):
    """gunicorn's logger without the access log."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None
