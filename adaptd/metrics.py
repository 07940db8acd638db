"""Prometheus metrics on an injected registry (tests build their own; no globals)."""

from __future__ import annotations

import logging
import platform
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from . import __version__

log = logging.getLogger(__name__)

OPS = ("ping", "ingest", "forecast", "series", "stats")
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.records_ingested = Counter(
            "adaptd_records_ingested", "Records committed to the store", registry=r)
        self.records_rejected = Counter(
            "adaptd_records_rejected", "Records refused at validation, by the field at fault",
            ["reason"], registry=r)
        self.records_late = Counter(
            "adaptd_records_late", "Committed records older than their series' newest record", registry=r)
        self.records_overwritten = Counter(
            "adaptd_records_overwritten", "Re-sent (series, ts) records that replaced a stored value", registry=r)
        self.requests = Counter(
            "adaptd_requests", "Socket requests by op and outcome (ok or an error code)",
            ["op", "outcome"], registry=r)
        self.request_seconds = Histogram(
            "adaptd_request_duration_seconds", "Time from reading a request to writing its response",
            ["op"], buckets=LATENCY_BUCKETS, registry=r)
        self.commit_seconds = Histogram(
            "adaptd_store_commit_duration_seconds", "Time to commit one ingest group to the store",
            buckets=LATENCY_BUCKETS, registry=r)
        self.commit_records = Histogram(
            "adaptd_store_commit_records", "Records per committed ingest group",
            buckets=(1, 10, 100, 1000, 5000, 10_000, 50_000, 100_000), registry=r)
        self.commit_failures = Counter(
            "adaptd_store_commit_failures", "Ingest groups whose commit failed (their clients got an error)",
            registry=r)
        self.ingest_queue_records = Gauge(
            "adaptd_ingest_queue_records", "Validated records waiting for the store writer", registry=r)
        self.drift_events = Counter(
            "adaptd_drift_events", "Drift detections on forecast residuals", registry=r)
        self.learning_backlog = Gauge(
            "adaptd_learning_backlog_records", "Committed records the models have not learnt yet", registry=r)
        self.learn_seconds = Histogram(
            "adaptd_learn_duration_seconds", "Time the models took to learn one chunk of records",
            buckets=LATENCY_BUCKETS, registry=r)
        self.series = Gauge("adaptd_series", "Series with at least one stored observation", registry=r)
        self.connections = Gauge("adaptd_connections", "Open socket connections", registry=r)
        self.build_info = Gauge(
            "adaptd_build_info", "Always 1; labels say what is running", ["version", "python"], registry=r)
        self.build_info.labels(__version__, platform.python_version()).set(1)
        for op in OPS:  # so that rate() has a zero to start from
            self.request_seconds.labels(op)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def rejected_total(self) -> float:
        return sum(s.value for m in self.records_rejected.collect() for s in m.samples
                   if s.name.endswith("_total"))

    def serve(self, listen: str) -> Any:
        """Start the HTTP exposition on HOST:PORT; returns the server (None when disabled)."""
        if not listen:
            return None
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        log.info("metrics on http://%s/metrics", listen)
        return server
