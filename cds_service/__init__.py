"""cds_service: a CDS Hooks 2.0.1 service that flags treatable causes of documented muscle cramps and spasms."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["create_app"]


def create_app(config: Any = None) -> Flask:
    """Build the Flask application (see cds_service.app.create_app)."""
    from .app import create_app as factory

    return factory(config)
