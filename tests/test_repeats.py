"""Repeat suppression across instances: two ``cds-service serve`` instances (gunicorn, two workers each) on one
PostgreSQL (Debian's packages; the test skips, saying so, only when the binaries are absent).

A card shown through instance A is left out by instance B once A's batch of issued cards is written (at most
``issued_cards_flush_seconds`` later, as README's Operations section says); a critical card shows on both.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, func, select
from support.governance import GOVERNED, as_environment, potassium_request
from support.hookcalls import SERVICE_IDS
from support.infra import ServiceInstance, missing_binaries, postgres_cluster, service_instances

from cds_service.storage.database import issued_cards

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing_binaries(nginx=False) is not None, reason=str(missing_binaries(nginx=False))),
]

PV = SERVICE_IDS["patient-view"]
FLUSH_SECONDS = 0.25


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[ServiceInstance], str]]:
    with postgres_cluster() as postgres:
        env = {
            **as_environment(GOVERNED),
            "CDS_DATABASE_URL": postgres.url,
            "CDS_NOW": "2026-11-01T00:00:00Z",
            "CDS_ISSUED_CARDS_FLUSH_SECONDS": str(FLUSH_SECONDS),
        }
        with service_instances(tmp_path_factory.mktemp("repeats"), 2, env) as running:
            yield running, postgres.url


def cards(instance: ServiceInstance, body: dict[str, Any]) -> list[dict[str, Any]]:
    body = {**body, "hookInstance": str(uuid.uuid4())}
    response = requests.post(f"{instance.base_url}/cds-services/{PV}", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["cards"]


def wait_for_rows(database_url: str, count: int) -> None:
    """Until the issued-card table holds ``count`` rows (A's batch is written a moment after its answer)."""
    engine = create_engine(database_url)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(select(func.count()).select_from(issued_cards)).scalar_one() >= count:
                    return
            time.sleep(FLUSH_SECONDS / 5)
        raise AssertionError(f"fewer than {count} issued-card rows after 10 s")
    finally:
        engine.dispose()


def test_a_card_shown_by_one_instance_is_left_out_by_the_other(instances) -> None:
    (first, second), database_url = instances
    warning = potassium_request(3.0)
    assert [c["indicator"] for c in cards(first, warning)] == ["warning"]
    wait_for_rows(database_url, 1)
    assert cards(second, warning) == []
    assert cards(first, warning) == []
    critical = potassium_request(2.4)
    assert [c["indicator"] for c in cards(first, critical)] == ["critical"]
    wait_for_rows(database_url, 2)
    assert [c["indicator"] for c in cards(second, critical)] == ["critical"]  # critical cards always show
