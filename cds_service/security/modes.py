"""Open or authenticated: whether the service checks JWTs, and where it may run without doing so.

With no trusted issuer the service is open, which is meant for local development (the sandbox on one's own
machine). ``serve`` refuses to listen on anything but a loopback address in that mode unless ``--insecure`` is
given.
"""
from __future__ import annotations

import logging

from ..config import Settings, is_loopback

logger = logging.getLogger("cds_service.security")


def auth_enabled(settings: Settings) -> bool:
    """``auth_required`` when set; otherwise on as soon as an issuer is trusted."""
    if settings.auth_required is not None:
        return settings.auth_required
    return bool(settings.trusted_issuers) or settings.allow_sandbox_issuer


def check_bind_safety(host: str, settings: Settings, insecure: bool) -> str | None:
    """The message to refuse ``serve`` with, or None when binding to ``host`` is acceptable."""
    if auth_enabled(settings) or is_loopback(host):
        return None
    if insecure:
        logger.warning("serving on %s WITHOUT authentication (--insecure): anyone who can reach it may call it", host)
        return None
    return (
        f"refusing to serve on {host} without authentication: configure trusted_issuers "
        "(or allow_sandbox_issuer for a demo), bind to 127.0.0.1, or pass --insecure"
    )
