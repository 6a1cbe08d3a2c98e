"""The Flask application factory: configuration, shared runtime, blueprints, CORS and error handling."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from flask import Flask
from flask.json.provider import DefaultJSONProvider
from flask_cors import CORS

from .api import analytics, discovery, errors, feedback, health, hook_calls, metrics, observability
from .api.paths import MergedSlashes
from .api.state import EXTENSION_KEY, ServiceState
from .config import Settings, load_config
from .server.logs import configure_logging
from .server.metrics import metrics_address
from .viewer.blueprint import bp as viewer
from .wire.validation import compile_schemas


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON through orjson: compact, in the order the service built it, and faster than the standard
    library (non-ASCII text is sent as UTF-8 rather than escaped)."""

    def dumps(self, obj: Any, **_kwargs: Any) -> str:
        return orjson.dumps(obj, default=self.default).decode()

    def loads(self, s: str | bytes, **_kwargs: Any) -> Any:
        return orjson.loads(s)


def create_app(config: Settings | Mapping[str, Any] | None = None) -> Flask:
    """Build the service from ``config``: loaded settings, or a mapping that overrides the defaults, the TOML file
    named by ``CDS_CONFIG`` and ``CDS_*`` environment variables (see cds_service.config). Raises ConfigError, with a
    one-line message, for settings that cannot be used."""
    settings = config if isinstance(config, Settings) else load_config(overrides=config)
    configure_logging(settings.log_level)
    app = Flask(__name__, static_folder=None)
    # No spelling of a path is ever redirected (browsers drop a redirected CORS preflight without a word):
    # repeated slashes are merged before routing, and a trailing slash is accepted (see api/paths.py).
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.wsgi_app = MergedSlashes(app.wsgi_app)  # type: ignore[method-assign]
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json = OrjsonProvider(app)  # keeps the wire order of cards and their fields
    state = ServiceState.build(settings)
    app.extensions[EXTENSION_KEY] = state
    compile_schemas()

    CORS(
        app,
        resources={r"/cds-services*": {"origins": settings.cors_origins}},
        allow_headers=["Authorization", "Content-Type"],
        methods=["GET", "POST", "OPTIONS"],
        max_age=600,
        always_send=False,  # CORS headers only for browsers (which send Origin), not for an EHR's server calls
    )

    observability.register(app)
    errors.register(app)
    for blueprint in (health.bp, discovery.bp, hook_calls.bp, feedback.bp, analytics.bp):
        app.register_blueprint(blueprint)
    if settings.viewer_enabled and not state.authenticator.enabled:
        # The viewer's pages call the service without a token: development and demo deployments only.
        app.register_blueprint(viewer)
    if metrics_address(settings) is None and settings.metrics_enabled:
        app.register_blueprint(metrics.bp)  # with metrics_bind, `serve` serves them on that address instead
    return app
