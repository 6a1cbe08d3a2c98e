"""Two service instances behind nginx on one shared PostgreSQL, one killed mid-load (all real processes).

PostgreSQL and nginx are the Debian packages; the test skips, saying so, only when their binaries are absent.
What it shows: feedback acknowledged before the crash is in the database afterwards, the surviving instance
keeps answering through nginx, and a JWT id used on one instance is refused by the other.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests
from sqlalchemy import create_engine, select
from support.hookcalls import SERVICE_IDS, hook_request
from support.infra import ServiceInstance, missing_binaries, nginx_proxy, postgres_cluster, service_instances
from support.tokens import claims, jwks, make_key, sign

from cds_service.storage.database import feedback as feedback_table

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing_binaries() is not None, reason=str(missing_binaries())),
]

PV = SERVICE_IDS["patient-view"]
ISSUER = "https://ehr.example.org"
PUBLIC = "https://cds.example.org"  # the load balancer's external URL: tokens are addressed to it, not an instance
KEY = make_key("ES384")
CLIENTS = 4
REQUESTS_PER_CLIENT = 40
KILL_AFTER_ACKS = 40


def bearer(path: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + sign(KEY, claims(ISSUER, PUBLIC + path))}


@dataclass
class Cluster:
    nginx: str
    instances: list[ServiceInstance]
    database_url: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("multi")
    with postgres_cluster() as postgres:
        env = {
            "CDS_DATABASE_URL": postgres.url,
            "CDS_PUBLIC_BASE_URL": PUBLIC,
            "CDS_TRUSTED_ISSUERS": json.dumps([{"iss": ISSUER, "jwks": jwks(KEY)}]),
            "CDS_NOW": "2026-11-01T00:00:00Z",
        }
        with (
            service_instances(home, 2, env) as instances,
            nginx_proxy([f"127.0.0.1:{i.port}" for i in instances]) as nginx,
        ):
            yield Cluster(nginx, instances, postgres.url)


def test_a_jti_used_on_one_instance_is_refused_by_the_other(cluster: Cluster) -> None:
    first, second = cluster.instances
    path = f"/cds-services/{PV}"
    headers = bearer(path)
    answer = requests.post(first.base_url + path, json=hook_request("patient-view"), headers=headers, timeout=10)
    assert answer.status_code == 200
    replay = requests.post(second.base_url + path, json=hook_request("patient-view"), headers=headers, timeout=10)
    assert replay.status_code == 401
    assert replay.headers["WWW-Authenticate"] == "Bearer"


@dataclass
class Outcome:
    kind: str  # "feedback" or "hook"
    sent: float
    done: float
    status: int | None
    card: str | None = None


@dataclass
class Load:
    """A bounded load through nginx: each client alternates feedback and hook calls, a fixed number of each."""

    nginx: str
    outcomes: list[Outcome] = field(default_factory=list)
    acknowledged: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, number: int) -> None:
        with requests.Session() as session:
            for i in range(REQUESTS_PER_CLIENT):
                outcome = self._feedback(session) if (i + number) % 2 == 0 else self._hook(session)
                with self.lock:
                    self.outcomes.append(outcome)
                if outcome.kind == "feedback" and outcome.status == 200:
                    self.acknowledged.release()

    def _feedback(self, session: requests.Session) -> Outcome:
        card = str(uuid.uuid4())
        path = f"/cds-services/{PV}/feedback"
        body = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-01T10:00:00Z"}]}
        sent = time.monotonic()
        status = self._post(session, path, body)
        return Outcome("feedback", sent, time.monotonic(), status, card)

    def _hook(self, session: requests.Session) -> Outcome:
        path = f"/cds-services/{PV}"
        sent = time.monotonic()
        status = self._post(session, path, hook_request("patient-view"))
        return Outcome("hook", sent, time.monotonic(), status)

    def _post(self, session: requests.Session, path: str, body: dict) -> int | None:
        try:
            return session.post(self.nginx + path, json=body, headers=bearer(path), timeout=15).status_code
        except requests.RequestException:
            return None


def test_killing_an_instance_mid_load_loses_no_acknowledged_feedback(cluster: Cluster) -> None:
    victim, survivor = cluster.instances
    load = Load(cluster.nginx)
    clients = [threading.Thread(target=load.client, args=(n,)) for n in range(CLIENTS)]
    for thread in clients:
        thread.start()
    for _ in range(KILL_AFTER_ACKS):
        assert load.acknowledged.acquire(timeout=60), "the load stalled before the kill"
    victim.kill()
    killed_at = time.monotonic()
    for thread in clients:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in clients)

    outcomes = load.outcomes
    assert len(outcomes) == CLIENTS * REQUESTS_PER_CLIENT
    acked_before_kill = {o.card for o in outcomes if o.kind == "feedback" and o.status == 200 and o.done < killed_at}
    assert len(acked_before_kill) >= KILL_AFTER_ACKS
    assert _answered_feedback(victim) > 0, "the killed instance should have taken part of the load"

    engine = create_engine(cluster.database_url)
    with engine.connect() as conn:
        stored = set(conn.execute(select(feedback_table.c.card_uuid)).scalars())
    engine.dispose()
    acked = {o.card for o in outcomes if o.kind == "feedback" and o.status == 200}
    assert acked_before_kill <= stored, f"lost: {sorted(acked_before_kill - stored)}"
    assert acked <= stored

    after = [o for o in outcomes if o.sent > killed_at]
    assert after, "the load should go on after the kill"
    assert {o.status for o in after} == {200}, [o for o in after if o.status != 200][:5]
    in_flight = [o for o in outcomes if o.sent <= killed_at < o.done and o.status != 200]
    assert len(in_flight) <= CLIENTS  # at most the requests the dying instance held, and nginx retries those
    assert requests.get(survivor.base_url + "/readyz", timeout=5).status_code == 200


def _answered_feedback(instance: ServiceInstance) -> int:
    """Feedback requests the instance's JSON log says it answered with 200."""
    count = 0
    for text in instance.log_path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        count += line.get("path", "").endswith("/feedback") and line.get("status") == 200
    return count
