"""What every endpoint shares, built once by the application factory and attached to the Flask app."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..config import Settings, database_url
from ..evaluation import Runtime
from ..security.auth import Authenticator
from ..storage.analytics import rule_anomalies
from ..storage.database import open_database
from ..storage.feedback import FeedbackStore
from ..storage.issued_cards import IssuedCardLog

EXTENSION_KEY = "cds_service"  # app.extensions[EXTENSION_KEY] holds the ServiceState

log = logging.getLogger("cds_service.metrics")


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
        runtime = Runtime.load(settings)  # rules and the settings about them are checked before the database is touched
        engine = open_database(database_url(settings))
        issued = IssuedCardLog(engine, settings.issued_cards_flush_seconds)
        return cls(
            runtime=runtime,
            engine=engine,
            issued=issued,
            feedback=FeedbackStore(engine, issued),
            authenticator=Authenticator(settings, engine),
        )

    def firing_rate_anomalies(self) -> dict[str, bool] | None:
        """Today's firing-rate check of every rule that runs (active or silent), for the metrics; None while the
        database cannot be read."""
        evaluated = [rule for rule, how in self.runtime.governance.deployment.items() if how != "off"]
        try:
            self.issued.flush()  # this process's cards of a moment ago count
            return rule_anomalies(self.engine, datetime.now(UTC).date(), evaluated)
        except SQLAlchemyError as exc:
            log.warning("firing-rate check left out of the metrics: %s", type(exc).__name__)
            return None
