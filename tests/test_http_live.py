"""The production server (``cds-service serve``: gunicorn) over real HTTP on a free loopback port."""
from __future__ import annotations

import http.client
import json
import uuid
from urllib.parse import urlsplit

import pytest
import requests
from support.hookcalls import (
    SERVICE_IDS,
    assert_operation_outcome,
    assert_valid_discovery,
    assert_valid_response,
    hook_request,
)
from support.live import serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    with serve(tmp, env={"CDS_NOW": "2026-11-01T00:00:00Z", "CDS_MAX_BODY_BYTES": "200000"}) as base:
        yield base


def test_discovery_over_http(server):
    response = requests.get(f"{server}/cds-services", timeout=5)
    assert response.status_code == 200
    assert_valid_discovery(response.json())
    assert len(response.json()["services"]) == 4


@pytest.mark.parametrize("hook", sorted(SERVICE_IDS))
def test_each_hook_over_http(server, hook):
    response = requests.post(f"{server}/cds-services/{SERVICE_IDS[hook]}", json=hook_request(hook), timeout=5)
    assert response.status_code == 200, response.text
    assert_valid_response(response.json())


def test_malformed_json_over_http(server):
    response = requests.post(f"{server}/cds-services/{SERVICE_IDS['patient-view']}", data=b"{nope",
                             headers={"Content-Type": "application/json"}, timeout=5)
    assert response.status_code == 400
    assert_operation_outcome(response.json(), "CDS-0001")


def test_body_over_the_limit_over_http(server):
    body = hook_request("patient-view")
    body["padding"] = "x" * 300_000
    response = requests.post(f"{server}/cds-services/{SERVICE_IDS['patient-view']}", data=json.dumps(body),
                             headers={"Content-Type": "application/json"}, timeout=5)
    assert response.status_code == 413
    assert_operation_outcome(response.json(), "CDS-0010")


REFUSED_UNREAD = [
    ("wrong media type", f"/cds-services/{SERVICE_IDS['patient-view']}", "text/plain", 415),
    ("unknown service", "/cds-services/no-such-service", "application/json", 404),
]


@pytest.mark.parametrize(("path", "content_type", "status"), [r[1:] for r in REFUSED_UNREAD],
                         ids=[r[0] for r in REFUSED_UNREAD])
def test_a_keep_alive_connection_survives_a_refusal_that_leaves_the_body_unread(server, path, content_type, status):
    """A refusal answered before the body is read leaves that body on the connection; gunicorn drains only 64 KiB
    of it before closing the connection it had just answered with ``Connection: keep-alive``."""
    body = hook_request("patient-view")
    body["padding"] = "x" * 150_000  # over gunicorn's drain, under this server's body limit
    conn = http.client.HTTPConnection(urlsplit(server).hostname, urlsplit(server).port, timeout=10)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": content_type})
    refused = conn.getresponse()
    refused.read()
    assert refused.status == status
    assert refused.getheader("Connection") == "keep-alive"
    sock = conn.sock
    conn.request("POST", f"/cds-services/{SERVICE_IDS['patient-view']}", body=json.dumps(hook_request("patient-view")),
                 headers={"Content-Type": "application/json"})
    assert conn.getresponse().status == 200
    assert conn.sock is sock  # the same connection, not a new one
    conn.close()


def test_feedback_over_http_is_idempotent(server):
    entry = {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-11-01T10:00:00Z"}
    url = f"{server}/cds-services/{SERVICE_IDS['patient-view']}/feedback"
    first = requests.post(url, json={"feedback": [entry]}, timeout=5)
    second = requests.post(url, json={"feedback": [entry]}, timeout=5)
    assert first.json() == {"received": 1, "stored": 1, "duplicates": 0}
    assert second.json() == {"received": 1, "stored": 0, "duplicates": 1}


@pytest.mark.parametrize("path", ["/cds-services/", "/cds-services//", "//cds-services/"])
def test_preflight_over_http(server, path):
    """Also on the paths a client builds from a discovery URL typed with a trailing slash: never a redirect,
    which a browser would drop without a visible error."""
    response = requests.options(
        f"{server}{path}{SERVICE_IDS['patient-view']}",
        headers={"Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"},
        allow_redirects=False,
        timeout=5,
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
    answered = requests.post(f"{server}{path}{SERVICE_IDS['patient-view']}", json=hook_request("patient-view"),
                             allow_redirects=False, timeout=5)
    assert answered.status_code == 200, answered.text
    assert_valid_response(answered.json())


def test_readiness_over_http(server):
    assert requests.get(f"{server}/readyz", timeout=5).json()["status"] == "ready"


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /cds-services/" + b"x" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    (b"GET /cds-services HTTP/1.1\r\nHost: t\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n", 431),
    (b"GET /cds-services HTTP/1.1\r\nHost: t\r\nExpect: 200-maybe\r\n\r\n", 417),
    (b"POST /cds-services/muscle-cramps-patient-view HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
])
def test_errors_gunicorn_answers_itself_are_operation_outcomes(server, request_bytes, status):
    """Refused by gunicorn's HTTP parser before Flask sees them, yet still JSON with a code."""
    import socket

    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request_bytes)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), head
    assert b"Content-Type: application/fhir+json" in head.replace(b"content-type", b"Content-Type")
    assert_operation_outcome(json.loads(body), "CDS-0021")
