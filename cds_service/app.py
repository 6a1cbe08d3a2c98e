"""The Flask application factory: configuration, shared runtime, blueprints, CORS and error handling."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from flask import Flask
from flask.json.provider import DefaultJSONProvider
from flask_cors import CORS

from .config import database_url, load_config
from .evaluation import Runtime
from .feedback import FeedbackStore
from .issued import IssuedCardLog
from .logs import configure_logging
from .security.auth import Authenticator
from .store import make_engine
from .wire import compile_schemas


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON through orjson: compact, in the order the service built it, about 15 times faster than the
    standard library on a response with cards (non-ASCII text is sent as UTF-8 rather than escaped)."""

    def dumps(self, obj: Any, **_kwargs: Any) -> str:
        return orjson.dumps(obj, default=self.default).decode()

    def loads(self, s: str | bytes, **_kwargs: Any) -> Any:
        return orjson.loads(s)


class Components:
    """What the blueprints share, attached to the app as ``app.extensions["cds_service"]``."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.runtime = Runtime.load(config)
        self.engine = make_engine(database_url(config))
        self.issued = IssuedCardLog(self.engine, float(config["issued_cards_flush_seconds"]))
        self.feedback = FeedbackStore(self.engine, self.issued)
        self.authenticator = Authenticator(config, self.engine)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the service. ``config`` overrides the defaults, the TOML file named by ``CDS_CONFIG`` and ``CDS_*``
    environment variables (see cds_service.config)."""
    settings = load_config(overrides=config)
    configure_logging(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(settings["max_body_bytes"])
    app.json = OrjsonProvider(app)  # keeps the wire order of cards and their fields
    components = Components(settings)
    app.extensions["cds_service"] = components
    compile_schemas()

    CORS(
        app,
        resources={r"/cds-services*": {"origins": list(settings["cors_origins"])}},
        allow_headers=["Authorization", "Content-Type"],
        methods=["GET", "POST", "OPTIONS"],
        max_age=600,
        always_send=False,  # CORS headers only for browsers (which send Origin), not for an EHR's server calls
    )

    from .api import analytics, discovery, errors, feedback, health, hook_calls, metrics, observability

    observability.register(app)
    errors.register(app)
    for blueprint in (health.bp, discovery.bp, hook_calls.bp, feedback.bp, analytics.bp):
        app.register_blueprint(blueprint)
    if settings["viewer_enabled"] and not components.authenticator.enabled:
        # The viewer's pages call the service without a token: development and demo deployments only.
        from .viewer.blueprint import bp as viewer

        app.register_blueprint(viewer)
    if settings["metrics_enabled"]:
        app.register_blueprint(metrics.bp)
    return app
