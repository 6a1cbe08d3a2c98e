"""Property-based fuzzing of request bodies over real HTTP: whatever arrives, the answer is below 500 and JSON
(an OperationOutcome for every error). Bounded (100-200 examples per target) and derandomized: repeatable."""
from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support.hookcalls import SERVICE_IDS, hook_request
from support.wsgi_server import running

from cds_service import create_app

FEEDBACK = {
    "feedback": [
        {
            "card": "5f1d1f44-7f5e-4c3e-9a53-55e5e1b0a0a1",
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": "c4b0b6e4-2b1c-4a8e-9d7e-0d3c1f2e5a6b"}],
            "outcomeTimestamp": "2026-01-01T00:00:00Z",
        }
    ]
}


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """hook -> service URL, on an open app that calls no FHIR server (its allowlist is empty)."""
    app = create_app({"data_dir": str(tmp_path_factory.mktemp("fuzz"))})
    with running(app) as base:
        yield {hook: f"{base}/cds-services/{service_id}" for hook, service_id in SERVICE_IDS.items()}


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)
FIELD_NAMES = [
    "hookInstance", "hook", "fhirServer", "fhirAuthorization", "context", "prefetch", "extension",
    "patientId", "userId", "encounterId", "draftOrders", "selections", "resourceType", "entry", "feedback",
    "card", "outcome", "acceptedSuggestions", "overrideReason", "outcomeTimestamp",
]


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    """``base`` with a few fields anywhere in it replaced, removed or added."""
    body = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        containers = list(_containers(body))
        target = draw(st.sampled_from(containers))
        if isinstance(target, list):
            if target and draw(st.booleans()):
                target[draw(st.integers(0, len(target) - 1))] = draw(json_values)
            else:
                target.append(draw(json_values))
            continue
        key = draw(st.sampled_from(sorted(target) + FIELD_NAMES))
        if key in target and draw(st.booleans()):
            del target[key]
        else:
            target[key] = draw(json_values)
    return json.dumps(body).encode()


def _containers(value: Any) -> Iterator[dict[str, Any] | list[Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _containers(item)
    elif isinstance(value, list):
        yield value
        for item in value:
            yield from _containers(item)


def nested(depth: int, kind: str) -> bytes:
    opening, closing = ('{"a":', "}") if kind == "object" else ("[", "]")
    return (opening * depth + "1" + closing * depth).encode()


raw_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.builds(nested, st.integers(min_value=1, max_value=20000), st.sampled_from(["object", "array"])),
    st.sampled_from(
        [b"", b"null", b"NaN", b'{"hook": NaN}', b'{"hook": Infinity}', b'{"a": 1e999}', b"\xff\xfe{}",
         b'{"a":"\\ud800"}']
    ),
)


def assert_json_answer(response: requests.Response) -> None:
    event(f"HTTP {response.status_code}")  # see the spread with --hypothesis-show-statistics
    assert response.status_code < 500, response.text[:500]
    body = response.json()
    if response.status_code >= 400:
        assert body["resourceType"] == "OperationOutcome"
        assert body["issue"] and body["issue"][0]["severity"] in {"error", "fatal"}
    else:
        assert isinstance(body, dict)


FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.slow
HOOKS = sorted(SERVICE_IDS)


@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_mutated_hook_requests_never_fail_the_server(services: dict[str, str], data: st.DataObject) -> None:
    hook = data.draw(st.sampled_from(HOOKS))
    body = data.draw(mutated(hook_request(hook)))
    response = requests.post(services[hook], data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert_json_answer(response)


def test_the_unmutated_requests_are_answered(services: dict[str, str]) -> None:
    """The fuzzing above starts from requests that reach the rules, not from ones refused at the door."""
    for hook, url in services.items():
        response = requests.post(url, json=hook_request(hook), timeout=10)
        assert response.status_code == 200, response.text


@settings(FUZZ, max_examples=100)
@given(body=raw_bodies, hook=st.sampled_from(HOOKS), content_type=st.sampled_from(["application/json", "text/plain"]))
def test_arbitrary_bodies_never_fail_the_server(
    services: dict[str, str], body: bytes, hook: str, content_type: str
) -> None:
    response = requests.post(services[hook], data=body, headers={"Content-Type": content_type}, timeout=10)
    assert_json_answer(response)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_mutated_feedback_never_fails_the_server(services: dict[str, str], data: st.DataObject) -> None:
    body = data.draw(st.one_of(mutated(FEEDBACK), raw_bodies))
    url = services["patient-view"] + "/feedback"
    response = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert_json_answer(response)
