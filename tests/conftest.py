"""Shared pytest fixtures. Fixture modules live in tests/support/ and are imported here."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import create_app

FIXTURE_NOW = "2026-11-01T00:00:00Z"  # the evaluation time the project's fixtures are written for
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def make_app(tmp_path: Path):
    """Build the real app with its own data directory; keyword arguments override configuration."""

    def build(**config: Any) -> Flask:
        settings = {"data_dir": str(tmp_path / "data"), "now": FIXTURE_NOW, **config}
        app = create_app(settings)
        app.testing = True
        return app

    return build


@pytest.fixture
def app(make_app) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as test_client:
        yield test_client


from support.fhir_server import *  # noqa: E402,F401,F403  (fhir_server, counting_server)
