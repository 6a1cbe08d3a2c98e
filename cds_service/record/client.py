"""HTTP to the FHIR server: one pooled ``requests.Session`` and one thread pool per process, bounded by a deadline.

Searches longer than ``MAX_GET_URL`` are sent as ``POST [type]/_search`` with a form body (FHIR R4 3.1.0.8).
Every request carries ``Accept: application/fhir+json`` and, when the EHR sent one, the bearer token (set per
request, never on the shared session, never logged). Each request's connect and read timeouts are cut to the
time left before the deadline, a response head still arriving at the deadline is hung up on (``hangup``), and
bodies are streamed and abandoned past the size cap or the deadline; redirects
are never followed (a FHIR base on the allowlist must not send the token elsewhere); connection errors and
502/503/504 are retried a bounded number of times with a short backoff while time remains.
"""
from __future__ import annotations

import contextvars
import json
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

import requests
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from . import hangup
from .access import FhirEndpoint
from .hangup import DeadlineAdapter
from .settings import RecordSettings

FHIR_JSON = "application/fhir+json"
RETRY_STATUSES = frozenset({502, 503, 504})
BACKOFF_SECONDS = 0.05  # doubled on each retry
MIN_ATTEMPT_SECONDS = 0.02  # do not start a request with less time than this left
POOL_THREADS = 16
CHUNK_BYTES = 64 * 1024
MAX_GET_URL = 2048  # longer searches go as POST _search: many servers and proxies refuse longer URLs

T = TypeVar("T")


class FetchFailed(Exception):
    """One FHIR request that gave no usable resource. The message is safe to log (no token, no URL query)."""

    def __init__(self, reason: str, *, timed_out: bool = False, status: int | None = None, retry: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out
        self.status = status
        self.retryable = retry or status in RETRY_STATUSES

    @property
    def outcome(self) -> str:
        """A one-word reason for metrics and logs: timeout, redirect, http_4xx, http_5xx, connection or invalid."""
        if self.timed_out:
            return "timeout"
        if self.status is None:
            return "connection" if self.retryable else "invalid"
        if 300 <= self.status < 400:
            return "redirect"
        return f"http_{self.status // 100}xx" if self.status >= 400 else "invalid"


QUERY = "query"  # the search or read of a prefetch key the EHR did not prefetch, and its next pages
COMPLETION = "completion"  # the service's own narrowed search completing a prefetched Bundle, and its next pages
PREFETCH_PAGE = "prefetch_page"  # a page after a prefetched Bundle, reached by its next link
MEDICATION = "medication"  # the read of a referenced Medication
SKIPPED = "skipped"  # the outcome of a request the record layer found needless and did not make


@dataclass(frozen=True, slots=True)
class FhirCall:
    """One FHIR request as logs and metrics see it: the resource type it asked for and why (``via``: one of the
    constants above), never its query or ids."""

    resource: str
    outcome: str  # "ok", FetchFailed.outcome, or SKIPPED
    ms: float
    via: str
    reason: str | None = None  # why a request was SKIPPED


_RESOURCE_IN_PATH = re.compile(r"([A-Z][A-Za-z]+)(?:[/?]|$)")
KNOWN_RESOURCES = frozenset(
    {"Patient", "Observation", "Condition", "MedicationRequest", "MedicationStatement", "Medication", "Encounter"}
)
_calls: contextvars.ContextVar[list[FhirCall] | None] = contextvars.ContextVar("fhir_calls", default=None)


def start_recording() -> list[FhirCall]:
    """Collect the FHIR requests made from now on in this context (and on the fetch pool for it) in a new list."""
    calls: list[FhirCall] = []
    _calls.set(calls)
    return calls


def stop_recording() -> None:
    """Stop collecting in this context (its thread serves other requests next)."""
    _calls.set(None)


def _resource_of(endpoint: FhirEndpoint, url: str) -> str:
    """The resource type ``url`` names below the endpoint's base; "other" for anything else (a bounded label)."""
    path = url[len(endpoint.base) :].lstrip("/") if url.startswith(endpoint.base) else ""
    match = _RESOURCE_IN_PATH.match(path)
    return match.group(1) if match and match.group(1) in KNOWN_RESOURCES else "other"


def _note(endpoint: FhirEndpoint, url: str, outcome: str, seconds: float, via: str) -> None:
    call = FhirCall(_resource_of(endpoint, url), outcome, round(seconds * 1000, 1), via)
    calls = _calls.get()
    if calls is not None:
        calls.append(call)


def note_skipped(resource: str, via: str, reason: str) -> None:
    """List a request that was not made, and why, with the requests of this context."""
    calls = _calls.get()
    if calls is not None:
        calls.append(FhirCall(resource, SKIPPED, 0.0, via, reason))


@dataclass(slots=True)
class _ProcessState:
    pid: int
    session: requests.Session
    pool: ThreadPoolExecutor


_state: _ProcessState | None = None
_state_lock = threading.Lock()


def _process_state() -> _ProcessState:
    """This process's session and pool, made afresh after a fork (gunicorn workers must not share sockets)."""
    global _state  # noqa: PLW0603 - one session and pool per process, made anew in a forked child
    pid = os.getpid()
    if _state is None or _state.pid != pid:
        with _state_lock:
            if _state is None or _state.pid != pid:
                session = requests.Session()
                adapter = DeadlineAdapter(pool_connections=8, pool_maxsize=POOL_THREADS, max_retries=0)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="fhir-fetch")
                _state = _ProcessState(pid, session, pool)
    return _state


def submit(task: Callable[[], T]) -> Future[T]:
    """Run ``task`` on this process's fetch pool, in a copy of the caller's context (see ``start_recording``)."""
    return _process_state().pool.submit(contextvars.copy_context().run, task)


class FhirClient:
    """Reads JSON from one FHIR endpoint until a monotonic ``deadline``."""

    def __init__(self, endpoint: FhirEndpoint, settings: RecordSettings, deadline: float):
        self.endpoint = endpoint
        self.settings = settings
        self.deadline = deadline

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def fetch(self, path: str, *, via: str) -> dict[str, Any]:
        """Read or search ``path`` (relative to the base): GET, or POST ``_search`` when the URL would be long."""
        url = self.endpoint.absolute(path)
        target, _, query = url.partition("?")
        if query and len(url) > MAX_GET_URL:
            return self.get(f"{target}/_search", via=via, form=urlencode(parse_qsl(query, keep_blank_values=True)))
        return self.get(url, via=via)

    def get(self, url: str, *, via: str, form: str | None = None) -> dict[str, Any]:
        """GET ``url`` (absolute, under the endpoint's base), or POST it ``form``; return the FHIR resource.
        ``via`` says in the request's FHIR call list why it was made."""
        started = time.perf_counter()
        try:
            resource = self._get_with_retries(url, form)
        except FetchFailed as failure:
            _note(self.endpoint, url, failure.outcome, time.perf_counter() - started, via)
            raise
        _note(self.endpoint, url, "ok", time.perf_counter() - started, via)
        return resource

    def _get_with_retries(self, url: str, form: str | None) -> dict[str, Any]:
        headers = {"Accept": FHIR_JSON}
        if self.endpoint.token:
            headers["Authorization"] = f"Bearer {self.endpoint.token}"
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        attempt = 0
        while True:
            try:
                return self._attempt(url, headers, form)
            except FetchFailed as failure:
                backoff = BACKOFF_SECONDS * 2**attempt
                if not failure.retryable or attempt >= self.settings.fhir_retries:
                    raise
                if self.remaining() < backoff + MIN_ATTEMPT_SECONDS:
                    raise FetchFailed(f"{failure.reason}; no time left to retry", timed_out=True) from failure
                time.sleep(backoff)
                attempt += 1

    def _attempt(self, url: str, headers: dict[str, str], form: str | None) -> dict[str, Any]:
        left = self.remaining()
        if left < MIN_ATTEMPT_SECONDS:
            raise FetchFailed("the time budget ran out", timed_out=True)
        timeout = (min(self.settings.fhir_connect_timeout, left), min(self.settings.fhir_read_timeout, left))
        session = _process_state().session
        try:
            method = "GET" if form is None else "POST"
            with hangup.deadline(self.deadline), session.request(
                method, url, data=form, headers=headers, timeout=timeout, stream=True, allow_redirects=False
            ) as resp:
                status = resp.status_code
                body = self._read_body(resp) if 200 <= status < 300 else b""  # error bodies are not read
        except requests.ConnectTimeout:
            raise FetchFailed("connect timeout", timed_out=True, retry=True) from None
        except requests.Timeout:
            raise FetchFailed("read timeout", timed_out=True) from None
        except requests.ConnectionError as exc:
            if exc.args and isinstance(exc.args[0], ReadTimeoutError):  # a timeout while streaming the body
                raise FetchFailed("read timeout", timed_out=True) from None
            raise FetchFailed("connection failed", retry=True) from None
        except requests.RequestException as exc:
            raise FetchFailed(f"request failed ({type(exc).__name__})") from None
        if 300 <= status < 400:
            raise FetchFailed(f"HTTP {status} redirect not followed", status=status)
        if not 200 <= status < 300:
            raise FetchFailed(f"HTTP {status}", status=status)
        try:
            resource = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise FetchFailed("the response is not valid JSON") from None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise FetchFailed("the response is not a FHIR resource")
        if resource["resourceType"] == "OperationOutcome":
            raise FetchFailed("the server answered with an OperationOutcome")
        return resource

    def _read_body(self, resp: requests.Response) -> bytes:
        cap = self.settings.fhir_max_response_bytes
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            raise FetchFailed(f"the response is larger than {cap} bytes")
        chunks: list[bytes] = []
        size = 0
        while chunk := _read_some(resp):
            size += len(chunk)
            if size > cap:
                raise FetchFailed(f"the response is larger than {cap} bytes")
            if self.remaining() <= 0:
                raise FetchFailed("the time budget ran out while reading", timed_out=True)
            chunks.append(chunk)
        return b"".join(chunks)


def _read_some(resp: requests.Response) -> bytes:
    """The next bytes of the body as they arrive (at most ``CHUNK_BYTES``; empty at the end).

    One socket read each: ``iter_content`` would wait for a whole chunk, and a server trickling its body a byte
    at a time never trips the per-read timeout, so it would hold the fetch thread past the deadline (and, with
    enough such calls, every thread of the pool). Between reads the caller checks the deadline.
    """
    try:
        return resp.raw.read1(CHUNK_BYTES, decode_content=True)
    except ReadTimeoutError:
        raise FetchFailed("read timeout", timed_out=True) from None
    except (Urllib3Error, OSError):
        raise FetchFailed("the connection failed while reading the body") from None
