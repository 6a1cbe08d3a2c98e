"""What every endpoint shares, built once by the application factory and attached to the Flask app."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from ..config import Settings, database_url
from ..evaluation import Runtime
from ..security.auth import Authenticator
from ..storage.database import open_database
from ..storage.feedback import FeedbackStore
from ..storage.issued_cards import IssuedCardLog

EXTENSION_KEY = "cds_service"  # app.extensions[EXTENSION_KEY] holds the ServiceState


@dataclass(frozen=True, slots=True)
class ServiceState:
    """The evaluation runtime (rules, terminology, settings) plus storage and authentication."""

    runtime: Runtime
    engine: Engine
    issued: IssuedCardLog
    feedback: FeedbackStore
    authenticator: Authenticator

    @classmethod
    def build(cls, settings: Settings) -> ServiceState:
        engine = open_database(database_url(settings))
        issued = IssuedCardLog(engine, settings.issued_cards_flush_seconds)
        return cls(
            runtime=Runtime.load(settings),
            engine=engine,
            issued=issued,
            feedback=FeedbackStore(engine, issued),
            authenticator=Authenticator(settings, engine),
        )
