"""Prometheus metrics: what the service records, and the exposition for ``GET /metrics``.

Where: ``GET /metrics`` on the main port (behind a JWT when authentication is on), or, with ``metrics_bind``, on
a separate address served by prometheus-client's HTTP server in ``serve``'s master process (for the scraper).

Under ``cds-service serve`` several gunicorn workers each keep their own values; ``PROMETHEUS_MULTIPROC_DIR``
(set by the CLI before this module is first imported) makes prometheus-client write them to per-process files
that :func:`exposition` adds up, so any worker answers ``/metrics`` for all of them. Without that variable (tests,
``cds-service evaluate``) the values live in this process.

Label values come from small fixed sets (service ids, rule ids, indicators, FHIR resource types, outcome words,
prefetch keys), never from request data, so the number of series stays bounded.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ..config import Settings, host_and_port

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# EHRs drop a hook's cards after about a second, so the interesting resolution is below that.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0)

REQUEST_SECONDS = Histogram(
    "cds_request_duration_seconds",
    "Time from request to response, by endpoint, CDS service id ('-' for none) and HTTP status.",
    ["endpoint", "service", "status"],
    buckets=LATENCY_BUCKETS,
)
CARDS = Counter(
    "cds_cards",
    "Cards issued, by rule, indicator and deployment: active (returned to the EHR) or silent (recorded only).",
    ["rule", "indicator", "deployment"],
)
REPEATS = Counter("cds_card_repeats", "Cards left out as repeats of a finding issued recently, by rule.", ["rule"])
INCOMPLETE = Counter(
    "cds_hook_incomplete_records",
    "Hook calls answered while some prefetch key's data was partial or missing, by service.",
    ["service"],
)
FHIR_SECONDS = Histogram(
    "cds_fhir_request_duration_seconds",
    "Time of each request to an EHR's FHIR server (retries included), by resource type and outcome.",
    ["resource", "outcome"],
    buckets=LATENCY_BUCKETS,
)
FHIR_ERRORS = Counter(
    "cds_fhir_errors",
    "FHIR requests that gave no usable resource, by resource type and reason.",
    ["resource", "reason"],
)
UNREAD = Counter(
    "cds_unread_resources",
    "Resources of types FHIR R4 does not have (such as DSTU2 MedicationOrder), not read, by type and where they "
    "came: draftOrders or a prefetch key.",
    ["resource", "where"],
)
FEEDBACK = Counter("cds_feedback_entries", "Feedback entries received, by service and outcome.", ["service", "outcome"])
FEEDBACK_REPEATS = Counter(
    "cds_feedback_repeats", "Feedback entries that repeated one already stored (not stored again).", ["service"]
)


def observe_request(endpoint: str, service: str, status: int, seconds: float) -> None:
    REQUEST_SECONDS.labels(endpoint, service, str(status)).observe(seconds)


def count_cards(
    service: str, cards: Iterable[tuple[str, str, str]], repeats: Iterable[str], incomplete: bool
) -> None:
    """Count the (rule id, indicator, deployment) of each card issued, the rule ids of the repeats left out, and
    the call if its record was incomplete."""
    for rule, indicator, deployment in cards:
        CARDS.labels(rule, indicator, deployment).inc()
    for rule in repeats:
        REPEATS.labels(rule).inc()
    if incomplete:
        INCOMPLETE.labels(service).inc()


def count_unread(unread: Mapping[str, Mapping[str, int]]) -> None:
    """Count the resources a hook call held but the service could not read, by where and type."""
    for where, counts in unread.items():
        for resource, count in counts.items():
            UNREAD.labels(resource, where).inc(count)


def observe_fhir(resource: str, outcome: str, seconds: float) -> None:
    """One FHIR request: ``outcome`` is ``ok`` or an error reason (``timeout``, ``http_5xx``, ...)."""
    FHIR_SECONDS.labels(resource, "ok" if outcome == "ok" else "error").observe(seconds)
    if outcome != "ok":
        FHIR_ERRORS.labels(resource, outcome).inc()


def count_feedback(service: str, outcomes: Iterable[str], repeats: int) -> None:
    """Count feedback entries by outcome (``accepted``, ``overridden``), and how many were repeats."""
    for outcome in outcomes:
        FEEDBACK.labels(service, outcome).inc()
    if repeats:
        FEEDBACK_REPEATS.labels(service).inc(repeats)


class FiringRateAnomalies(Collector):
    """``cds_rule_firing_rate_anomaly``: ``check`` reads it from the database at each scrape (rule id -> flagged;
    None leaves the gauge out), so it is one value for every worker and instance (cds_service.storage.analytics
    explains the check)."""

    def __init__(self, check: Callable[[], Mapping[str, bool] | None]) -> None:
        self._check = check

    def collect(self) -> Iterable[GaugeMetricFamily]:
        anomalies = self._check()
        if anomalies is None:
            return
        gauge = GaugeMetricFamily(
            "cds_rule_firing_rate_anomaly",
            "1 when the rule's firing rate today (cards per hook call, UTC day) is outside its usual band, else 0.",
            labels=["rule"],
        )
        for rule, flagged in sorted(anomalies.items()):
            gauge.add_metric([rule], 1.0 if flagged else 0.0)
        yield gauge


def exposition(extra: Collector | None = None) -> tuple[bytes, str]:
    """The metrics text and its content type, added up over all workers in multiprocess mode, followed by what
    ``extra`` collects."""
    text = generate_latest(_registry())
    if extra is not None:
        own = CollectorRegistry(auto_describe=False)
        own.register(extra)
        text += generate_latest(own)
    return text, CONTENT_TYPE_LATEST


def _registry() -> CollectorRegistry:
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


def metrics_address(settings: Settings) -> tuple[str, int] | None:
    """The (host, port) of ``metrics_bind``, or None when the metrics are off or served on the main port."""
    if not settings.metrics_enabled or settings.metrics_bind is None:
        return None
    return host_and_port(settings.metrics_bind)


def serve_metrics(address: tuple[str, int], extra: Collector | None = None) -> None:
    """Serve the exposition of every worker, and what ``extra`` collects, at ``address`` from a thread of this
    process (``serve`` runs it in gunicorn's master, before the workers are forked): prometheus-client's own HTTP
    server, which answers nothing but the metrics."""
    host, port = address
    registry = _registry()
    if extra is not None:
        registry.register(extra)
    start_http_server(port, addr=host, registry=registry)
