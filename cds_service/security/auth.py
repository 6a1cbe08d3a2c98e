"""The web layer's single entry point for authentication: ``Authenticator.authenticate``.

Every failure answers the same 401 (``WWW-Authenticate: Bearer``, no reason in the body, as the CDS Hooks
best practices ask); the reason goes to the ``cds_service.security`` log. The token itself is never logged.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from ..config import ConfigError, Settings, is_loopback
from ..wire.errors import UNAUTHORIZED, CdsError
from .issuers import load_issuers
from .jwt import Claims, InvalidToken, TokenVerifier
from .modes import auth_enabled
from .replay import ReplayGuard

__all__ = ["Authenticator", "Claims"]

logger = logging.getLogger("cds_service.security")

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _bearer_token(authorization_header: str | None) -> str:
    if not authorization_header or not authorization_header.strip():
        raise InvalidToken("no Authorization header")
    scheme, _, token = authorization_header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("Authorization is not 'Bearer <token>'")  # the scheme is not logged: it may be a token
    return token


class Authenticator:
    """Verifies client JWTs when authentication is on; see ``security/issuers.py`` for the issuer settings."""

    def __init__(self, settings: Settings, engine: Engine):
        self._public_base_url = (settings.public_base_url or "").rstrip("/")
        self._verifier: TokenVerifier | None = None
        if not auth_enabled(settings):
            logger.warning(
                "authentication is OFF: no trusted issuer is configured, every caller is accepted "
                "(fine for local development only)"
            )
            return
        issuers = load_issuers(settings)
        if not issuers:
            raise ConfigError("auth_required is true but no trusted issuer is configured")
        self._verifier = TokenVerifier(
            issuers,
            algorithms=settings.jwt_algorithms,
            leeway_seconds=settings.jwt_leeway_seconds,
            max_lifetime_seconds=settings.jwt_max_lifetime_seconds,
            replay=ReplayGuard(engine),
        )
        logger.info("authentication is on; trusted issuers: %s", ", ".join(sorted(issuers)))

    @property
    def enabled(self) -> bool:
        return self._verifier is not None

    def authenticate(self, authorization_header: str | None, audience: str | Sequence[str]) -> Claims | None:
        """The verified claims, or None when authentication is off; raises a 401 CdsError on any failure.

        ``audience`` is the endpoint's URL, or its spellings: the token's ``aud`` must name one of them."""
        if self._verifier is None:
            return None
        endpoint = audience if isinstance(audience, str) else " or ".join(audience)  # for the log
        try:
            claims = self._verifier.verify(_bearer_token(authorization_header), audience)
        except InvalidToken as exc:
            logger.warning("JWT refused for %s: %s", endpoint, exc)
            raise CdsError(UNAUTHORIZED, headers=dict(CHALLENGE)) from None
        except OperationalError:
            raise  # the replay store is unreachable: the web layer answers 503, the request is not served
        except Exception as exc:
            logger.error("JWT verification failed for %s: %s", endpoint, type(exc).__name__, exc_info=True)
            raise CdsError(UNAUTHORIZED, headers=dict(CHALLENGE)) from None
        logger.debug("JWT accepted: iss=%s tenant=%s jti=%s", claims.iss, claims.tenant, claims.jti)
        return claims

    def audience_for(self, path: str, server_base_url: str) -> str:
        """The ``aud`` a token must carry to call ``path``: ``public_base_url`` plus the path; without it, the
        server's own bound address (never the request's Host header), and only when that is a loopback address,
        as ``serve`` insists: otherwise (an app served some other way) every token is refused with a 401."""
        base = self._public_base_url
        if not base:
            if not is_loopback(urlsplit(server_base_url).hostname or ""):
                logger.warning("JWT refused: public_base_url is not set and this server is not bound to loopback")
                raise CdsError(UNAUTHORIZED, headers=dict(CHALLENGE))
            base = server_base_url.rstrip("/")
        return base + (path if path.startswith("/") else "/" + path)
