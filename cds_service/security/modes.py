"""Open or authenticated: whether the service checks JWTs, and where it may run without doing so.

With no trusted issuer the service is open, which is meant for local development (the sandbox on one's own
machine). ``serve`` refuses to listen on anything but a loopback address in that mode unless ``--insecure`` is
given, and in the authenticated mode without ``public_base_url``.
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
    """The message to refuse ``serve`` with, or None when binding to ``host`` is acceptable.

    Beyond loopback, authentication needs ``public_base_url``: the ``aud`` every token must carry is built from
    it, and the bound address (0.0.0.0, a pod's IP) is not what clients call.
    """
    if is_loopback(host):
        return None
    if auth_enabled(settings):
        if settings.public_base_url:
            return None
        return (
            f"refusing to serve on {host} without public_base_url: set it to the URL clients call "
            "(https://cds.example.org), which JWT aud is checked against"
        )
    if insecure:
        logger.warning("serving on %s WITHOUT authentication (--insecure): anyone who can reach it may call it", host)
        return None
    return (
        f"refusing to serve on {host} without authentication: configure trusted_issuers "
        "(or allow_sandbox_issuer for a demo), bind to 127.0.0.1, or pass --insecure"
    )
