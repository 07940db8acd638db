"""Prometheus metrics on an injected registry (tests build their own; no globals).

Names follow Prometheus conventions: `adaptd_` prefix, base units, `_total` counters, and no
label whose values grow with the data. Per-series values are exported only for the series
named in `[metrics] series`, at most `max_series` of them.
"""

from __future__ import annotations

import logging
import platform
import threading
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter, Gauge,
                               Histogram, start_http_server)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import __version__
from .engine.telemetry import CANDIDATES, Telemetry

if TYPE_CHECKING:
    from .catalog import SeriesCatalog
    from .engine import Engine

log = logging.getLogger(__name__)

OPS = ("ping", "ingest", "forecast", "series", "stats", "forget")
OUTCOMES = ("adapted", "kept", "failed")
META_TRAINING_OUTCOMES = ("promoted", "not_promoted", "not_enough_data", "failed")
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# |error| in units of the series' typical one-step change: 1 is as good as a random walk.
SCALED_ERROR_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 25.0)


class Metrics(Telemetry):
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry if registry is not None else CollectorRegistry()
        # The client library's own: process_* (memory, CPU, open files against LimitNOFILE),
        # python_gc_*, python_info; an own registry does not get them by default.
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(standard)
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
        self.forecast_answers = Counter(
            "adaptd_forecast_answers", "Forecasts answered, by what answered: the models from learnt records "
            "(models), the models from records not learnt yet (provisional) or the naive fallback", ["source"],
            registry=r)
        for source in ("models", "provisional", "fallback"):
            self.forecast_answers.labels(source)
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
            "adaptd_drift_events", "Drift detections on forecast residuals, by detector", ["detector"], registry=r)
        self.adaptations = Counter(
            "adaptd_adaptations", "Finished adaptations after drift: adapted (new weights won: see adaptation_winners), "
            "kept (the previous model scored better) or failed (rolled back)", ["outcome"], registry=r)
        self.adaptation_winners = Counter(
            "adaptd_adaptation_winners", "Finished adaptations by the candidate that won on the newest points: "
            "finetuned (the initializer after k steps), init (the initializer as it is), memory (a remembered "
            "regime after k steps), each moved [adapt] keep of the way back to the series' weights, or previous "
            "(the weights the series had; = outcome kept)",
            ["candidate"], registry=r)
        self.adaptation_seconds = Histogram(
            "adaptd_adaptation_duration_seconds", "Time one adaptation (k gradient steps) took",
            buckets=LATENCY_BUCKETS, registry=r)
        self.nonfinite_outputs = Counter(
            "adaptd_model_nonfinite_outputs", "Forecasts with a non-finite model output that was replaced",
            registry=r)
        self.model_gaps = Counter(
            "adaptd_model_gaps", "Time gaps the models met: filled (by interpolation) or unfilled (too long)",
            ["handling"], registry=r)
        self.gap_steps_filled = Counter(
            "adaptd_model_gap_steps_filled", "Missing steps the models filled by interpolation", registry=r)
        self.accuracy = ForecastAccuracy(r)
        self.checkpoint_seconds = Histogram(
            "adaptd_checkpoint_duration_seconds", "Time to save every series' model state to the store",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=r)
        self.checkpoint_failures = Counter(
            "adaptd_checkpoint_failures", "Checkpoints that failed (the previous one stays in the store)",
            registry=r)
        self.last_checkpoint = Gauge(
            "adaptd_last_checkpoint_timestamp_seconds", "When the newest successful checkpoint finished "
            "(0: none since start)", registry=r)
        self.initializer = Gauge(
            "adaptd_initializer_info", "Always 1; labels say which initializer drift adaptation restarts from",
            ["kind", "version"], registry=r)
        self.meta_training_runs = Counter(
            "adaptd_meta_training_runs", "Scheduled meta-training runs by outcome: promoted, not_promoted "
            "(did not beat the current initializer), not_enough_data or failed", ["outcome"], registry=r)
        self.meta_training_seconds = Gauge(
            "adaptd_meta_training_last_duration_seconds", "How long the newest meta-training run took", registry=r)
        self.meta_training_last_end = Gauge(
            "adaptd_meta_training_last_end_timestamp_seconds", "When the newest scheduled meta-training run that "
            "ended on its own (not cut off by a shutdown) ended, also before this start (0: none yet)", registry=r)
        self.meta_training_last_outcome = Gauge(
            "adaptd_meta_training_last_outcome", "1 for the outcome of that run, 0 for the others", ["outcome"],
            registry=r)
        self.schedule_interval = Gauge(
            "adaptd_schedule_interval_seconds", "The configured interval of each scheduled job this daemon runs "
            "(checkpoint, retention, meta_training), for alerts that follow the config", ["schedule"],
            registry=r)
        self.retention_deleted = Counter(
            "adaptd_retention_deleted_observations", "Observations deleted by `[store] retention`", registry=r)
        self.series_forgotten = Counter(
            "adaptd_series_forgotten", "Series removed whole from the store and memory after receiving nothing "
            "for [store] forget_after seconds, or on request (adaptd forget)", registry=r)
        self.retention_seconds = Gauge(
            "adaptd_retention_last_pass_seconds", "How long the newest retention pass took", registry=r)
        self.retention_failures = Counter(
            "adaptd_retention_failures", "Retention passes a store error stopped", registry=r)
        self.retention_success = Gauge(
            "adaptd_retention_last_success_timestamp_seconds",
            "When the newest retention pass that went through every series ended (0: none since start)", registry=r)
        self.retention_progress = Gauge(
            "adaptd_retention_last_progress_timestamp_seconds", "When retention last showed it is getting through: "
            "the end of the newest pass that went through every series, or, while a pass runs, the newest series "
            "it finished (0: none since start; a failed pass's series do not count)", registry=r)
        self.learning_backlog = Gauge(
            "adaptd_learning_backlog_records", "Committed records the models have not learnt yet", registry=r)
        self.learning_shed = Counter(
            "adaptd_learning_shed_records", "Records learnt without the recurrent models' gradient steps because "
            "learning was more than [model] shed_lag behind the acks", registry=r)
        self.learning_failed = Counter(
            "adaptd_learning_failed_records", "Committed records the models failed to learn (stage=learn) or to "
            "record for forecasts (stage=record): they stay stored, but the models go on without them; the log "
            "has the error", ["stage"], registry=r)
        for stage in ("learn", "record"):
            self.learning_failed.labels(stage)
        self.learn_seconds = Histogram(
            "adaptd_learn_duration_seconds", "Time the models took to learn one chunk of records",
            buckets=LATENCY_BUCKETS, registry=r)
        self.series = Gauge("adaptd_series", "Series with at least one stored observation", registry=r)
        self.store_claim = Gauge(
            "adaptd_store_claim_held", "1 while this daemon holds its share of the store (PostgreSQL: the "
            "advisory lock on its [cluster] member number); 0: lost and not yet taken back", registry=r)
        self.connections = Gauge("adaptd_connections", "Open socket connections", registry=r)
        self.build_info = Gauge(
            "adaptd_build_info", "Always 1; labels say what is running", ["version", "python"], registry=r)
        self.build_info.labels(__version__, platform.python_version()).set(1)
        for op in OPS:  # so that rate() has a zero to start from
            self.request_seconds.labels(op)
        for outcome in OUTCOMES:
            self.adaptations.labels(outcome)
        for handling in ("filled", "unfilled"):
            self.model_gaps.labels(handling)
        for candidate in CANDIDATES:
            self.adaptation_winners.labels(candidate)
        for outcome in META_TRAINING_OUTCOMES:   # the meta-training alert reads 0, not nothing
            self.meta_training_runs.labels(outcome)
            self.meta_training_last_outcome.labels(outcome)
        self.requests.labels("ingest", "overloaded")   # the overload alert reads 0, not nothing

    # -- what the engine reports (Telemetry) ----------------------------------------------
    def scored(self, leads: np.ndarray, scaled_error: np.ndarray, inside: np.ndarray) -> None:
        self.accuracy.observe(leads, scaled_error, inside)

    def drifted(self, detector: str) -> None:
        self.drift_events.labels(detector).inc()

    def adaptation(self, outcome: str, seconds: float, winner: str | None = None) -> None:
        self.adaptations.labels(outcome).inc()
        if winner in CANDIDATES:
            self.adaptation_winners.labels(winner).inc()
        self.adaptation_seconds.observe(seconds)

    def gaps(self, filled: int, filled_steps: int, unfilled: int) -> None:
        self.model_gaps.labels("filled").inc(filled)
        self.model_gaps.labels("unfilled").inc(unfilled)
        self.gap_steps_filled.inc(filled_steps)

    def nonfinite(self, count: int) -> None:
        self.nonfinite_outputs.inc(count)

    def meta_training_ended(self, outcome: str, at: float) -> None:
        """The newest meta-training run that ended on its own: how, and when."""
        self.meta_training_last_end.set(at)
        for known in META_TRAINING_OUTCOMES:
            self.meta_training_last_outcome.labels(known).set(1 if known == outcome else 0)

    def watch(self, engine: Engine, catalog: SeriesCatalog, coverage: float, stale_after: float,
              series: tuple[str, ...] = (), max_series: int = 0) -> None:
        """Read live state at scrape time: series counts and the opt-in per-series values."""
        engine.telemetry = self
        self.accuracy.target = coverage
        self.registry.register(LiveState(engine, catalog, stale_after, series, max_series))

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


class ForecastAccuracy(Collector):
    """Scored forecasts by lead, folded in whole arrays at a time.

    The learning thread scores thousands of forecasts per batch; prometheus_client's
    per-value `observe` would cost more than the scoring itself.
    """

    def __init__(self, registry: CollectorRegistry):
        self.bounds = np.asarray(SCALED_ERROR_BUCKETS)
        self.target = float("nan")
        self._lock = threading.Lock()
        self._leads: dict[int, np.ndarray] = {}   # lead -> [bucket counts..., +Inf, sum, sum of squares, hits]
        registry.register(self)

    def observe(self, leads: np.ndarray, scaled_error: np.ndarray, inside: np.ndarray) -> None:
        if leads.size == 0:
            return
        buckets = np.searchsorted(self.bounds, scaled_error, side="left")   # le: value <= bound
        k = self.bounds.size + 1
        with self._lock:
            for lead in np.unique(leads):
                pick = leads == lead
                row = self._leads.setdefault(int(lead), np.zeros(k + 3))
                row[:k] += np.bincount(buckets[pick], minlength=k)
                row[k] += scaled_error[pick].sum()
                row[k + 1] += np.square(scaled_error[pick]).sum()
                row[k + 2] += inside[pick].sum()

    def collect(self) -> Iterator[Metric]:
        errors = HistogramMetricFamily(
            "adaptd_forecast_scaled_error", "|error| of matured forecasts in units of the series' typical "
            "one-step change (mean: MASE-like; 1 = as good as repeating the last value)", labels=["lead"])
        squares = CounterMetricFamily(
            "adaptd_forecast_squared_scaled_error", "Sum of squared scaled errors (RMSE = "
            "sqrt(rate(this) / rate(adaptd_forecast_scaled_error_count)))", labels=["lead"])
        hits = CounterMetricFamily(
            "adaptd_forecast_interval_hits", "Matured forecasts whose value fell inside the issued "
            "interval (coverage = rate(this) / rate(adaptd_forecast_scaled_error_count))", labels=["lead"])
        k = self.bounds.size + 1
        with self._lock:
            rows = {lead: row.copy() for lead, row in sorted(self._leads.items())}
        for lead, row in rows.items():
            cumulative = np.cumsum(row[:k])
            buckets = [(floatToGoString(b), float(c)) for b, c in zip(self.bounds, cumulative)]
            buckets.append(("+Inf", float(cumulative[-1])))
            errors.add_metric([str(lead)], buckets, float(row[k]))
            squares.add_metric([str(lead)], float(row[k + 1]))
            hits.add_metric([str(lead)], float(row[k + 2]))
        yield errors
        yield squares
        yield hits
        if np.isfinite(self.target):
            yield GaugeMetricFamily("adaptd_forecast_interval_target_ratio",
                                    "The coverage prediction intervals aim at ([model] coverage)", value=self.target)


class LiveState(Collector):
    """Gauges computed when scraped, from the engine and the catalog: O(1) in the number of
    series except for the capped per-series export."""

    def __init__(self, engine: Engine, catalog: SeriesCatalog, stale_after: float,
                 series: tuple[str, ...], max_series: int):
        self.engine = engine
        self.catalog = catalog
        self.stale_after = stale_after
        self.exported = series[:max_series]
        self.omitted = max(0, len(series) - max_series)
        if self.omitted:
            log.warning("metrics.series names %d series; exporting the first %d (metrics.max_series)",
                        len(series), max_series)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("adaptd_series_warm", "Series the learned models serve (the others get the "
                                "naive fallback until they have enough history)", value=self.engine.warm_series())
        yield GaugeMetricFamily("adaptd_series_stale", "Series that have received no record for "
                                f"{self.stale_after:g} s ([metrics] stale_after)",
                                value=self.catalog.stale(self.stale_after))
        yield GaugeMetricFamily("adaptd_adaptations_running", "Adaptations in progress",
                                value=self.engine.stats().get("adapting", 0))
        yield GaugeMetricFamily("adaptd_series_export_omitted", "Series named in [metrics] series that are not "
                                "exported because of [metrics] max_series", value=self.omitted)
        if not self.exported:
            return
        families = {field: GaugeMetricFamily(name, doc, labels=["series"]) for field, name, doc in (
            ("value", "adaptd_series_value", "Newest observed value"),
            ("forecast", "adaptd_series_forecast", "The one-step forecast that was issued for the newest value"),
            ("lo", "adaptd_series_forecast_lower", "Lower bound of that forecast's interval"),
            ("hi", "adaptd_series_forecast_upper", "Upper bound of that forecast's interval"),
            ("scaled_error", "adaptd_series_scaled_error",
             "Rolling |one-step error| in units of the series' typical one-step change"),
            ("ts", "adaptd_series_last_observation_timestamp_seconds", "Time stamp of the newest observation"))}
        for name in self.exported:
            now = self.engine.now(name)
            if now is None:
                continue
            for field, family in families.items():
                value = getattr(now, field)
                if np.isfinite(value):   # a gap in the graph, not a NaN sample
                    family.add_metric([name], value)
        yield from families.values()
