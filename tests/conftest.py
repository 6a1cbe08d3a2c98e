"""Shared pytest fixtures. Fixture modules live in tests/support/ and are imported here."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from support.governance import EVERY_CALL_ANEW

from cds_service import create_app
from cds_service.facts.terminology import Terminology

FIXTURE_NOW = "2026-11-01T00:00:00Z"  # the evaluation time the project's fixtures are written for
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def terminology() -> Terminology:
    """The shipped value sets, loaded once per test module."""
    return Terminology.load()


class _RuleFailures(logging.Handler):
    """Collects what the service logs when a rule crashes or builds a card that breaks the CDS Hooks rules."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def no_rule_failures(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every response any test produces in-process obeys the 2.0.1 card rules: the service checks each card
    before sending it and drops (and logs) one that breaks them, so a logged drop or rule crash fails the test
    (unless the test is marked ``expects_rule_failure``)."""
    if request.node.get_closest_marker("expects_rule_failure"):
        yield
        return
    handler = _RuleFailures()
    loggers = [logging.getLogger("cds_service.evaluation"), logging.getLogger("cds_service.rules")]
    for logger in loggers:
        logger.addHandler(handler)
    yield
    for logger in loggers:
        logger.removeHandler(handler)
    assert not handler.messages, handler.messages


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Any]:
    """Build the real app with its own data directory, every rule's card shown on every call
    (support/governance.py); keyword arguments override configuration. The apps' queued issued-card rows are
    written when the test ends, while its data directory still exists."""
    apps: list[Flask] = []

    def build(**config: Any) -> Flask:
        settings = {"data_dir": str(tmp_path / "data"), "now": FIXTURE_NOW, **EVERY_CALL_ANEW, **config}
        app = create_app(settings)
        app.testing = True
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["cds_service"].issued.close()


@pytest.fixture
def app(make_app) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as test_client:
        yield test_client


from support.fhir_server import *  # noqa: E402, F403  (fhir_server, counting_server)
from support.rule_files import rules_copy  # noqa: E402, F401  (a fixture)
