"""Metrics as an SRE reads them: accuracy and coverage that match the forecasts, adaptations
by outcome, a scrape whose size does not grow with the series, opt-in per-series values."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from prometheus_client import Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adaptd.catalog import SeriesCatalog
from adaptd.engine.learner import Initializer
from adaptd.engine.online import OnlineConfig, OnlineEngine
from adaptd.metrics import SCALED_ERROR_BUCKETS, Metrics
from adaptd.records import Observation

torch.set_num_threads(1)
HOUR = 3600.0
SMALL = OnlineConfig(window=16, patch=4, hidden=8, horizon=4, rls_lags=8, adapt_window=32,
                     adapt_validation=4, cooldown=16, adapt_steps=3, history=256)


def watched(names: tuple[str, ...] = (), max_series: int = 100, config: OnlineConfig = SMALL,
            stale_after: float = 3600.0) -> tuple[Metrics, OnlineEngine, SeriesCatalog]:
    metrics = Metrics()
    engine = OnlineEngine(config, Initializer.random(config.shape, 0, 0.05))
    catalog = SeriesCatalog()
    metrics.watch(engine, catalog, config.coverage, stale_after, names, max_series)
    return metrics, engine, catalog


def feed(engine: OnlineEngine, catalog: SeriesCatalog, columns: dict[str, np.ndarray]) -> None:
    for t in range(len(next(iter(columns.values())))):
        batch = [Observation(name, t * HOUR, float(v[t])) for name, v in columns.items()]
        catalog.record(batch, set())
        engine.observe(batch)


def seasonal(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 10 + 3 * np.sin(2 * np.pi * np.arange(n) / 24) + rng.normal(0, 0.3, n)


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_bulk_accuracy_histogram_matches_prometheus_clients_own():
    metrics = Metrics()
    reference = Histogram("reference", "per-value observe", buckets=SCALED_ERROR_BUCKETS, registry=None)
    rng = np.random.default_rng(0)
    errors = np.concatenate([rng.exponential(1.0, 5000), np.array(SCALED_ERROR_BUCKETS), [0.0, 1e9]])
    for chunk in np.array_split(errors, 7):
        metrics.scored(np.ones(chunk.size, dtype=np.int64), chunk, chunk < 1.0)
    for e in errors:
        reference.observe(float(e))
    ours = {s.labels["le"]: s.value for m in metrics.accuracy.collect() for s in m.samples
            if s.name == "adaptd_forecast_scaled_error_bucket"}
    theirs = {s.labels["le"]: s.value for m in reference.collect() for s in m.samples if s.name == "reference_bucket"}
    assert ours == {le: theirs[le] for le in ours} and len(ours) == len(theirs)
    values = samples(metrics)
    assert values[("adaptd_forecast_scaled_error_count", (("lead", "1"),))] == errors.size
    assert values[("adaptd_forecast_scaled_error_sum", (("lead", "1"),))] == pytest.approx(errors.sum())
    assert values[("adaptd_forecast_squared_scaled_error_total", (("lead", "1"),))] == pytest.approx((errors ** 2).sum())
    assert values[("adaptd_forecast_interval_hits_total", (("lead", "1"),))] == (errors < 1.0).sum()


def test_accuracy_and_coverage_describe_the_forecasts_the_engine_issued():
    metrics, engine, catalog = watched()
    feed(engine, catalog, {f"s{i}": seasonal(400, seed=i) for i in range(4)})
    values = samples(metrics)
    leads = sorted(int(dict(k[1])["lead"]) for k in values if k[0] == "adaptd_forecast_scaled_error_count")
    assert leads == engine.leads.tolist()
    for lead in leads:
        count = values[("adaptd_forecast_scaled_error_count", (("lead", str(lead)),))]
        hits = values[("adaptd_forecast_interval_hits_total", (("lead", str(lead)),))]
        mean = values[("adaptd_forecast_scaled_error_sum", (("lead", str(lead)),))] / count
        assert count > 4 * 300                       # every warm origin of every series is scored
        assert 0.8 < hits / count < 0.97             # issued intervals cover near the 90% target
        assert 0.05 < mean < 2.0                     # seasonal noise: better than a random walk
    assert values[("adaptd_forecast_interval_target_ratio", ())] == 0.9


def test_adaptations_are_counted_by_outcome_with_their_duration():
    metrics, engine, catalog = watched()
    rng = np.random.default_rng(3)
    y = np.concatenate([5 + rng.normal(0, 1, 200), 40 + rng.normal(0, 3, 200)])
    feed(engine, catalog, {"s": y})
    values = samples(metrics)
    outcomes = {o: values[("adaptd_adaptations_total", (("outcome", o),))] for o in ("adapted", "kept", "failed")}
    assert sum(outcomes.values()) >= 1
    assert outcomes["failed"] == 0
    assert values[("adaptd_adaptation_duration_seconds_count", ())] == sum(outcomes.values())


def test_gaps_are_counted_by_how_the_models_handled_them():
    metrics, engine, catalog = watched()
    y = seasonal(300)
    assert samples(metrics)[("adaptd_model_gaps_total", (("handling", "filled"),))] == 0   # present from the start
    hours = [t for t in range(300) if not 100 <= t < 103 and not 150 <= t < 250]   # 3 missing, then 100
    for t in hours:
        batch = [Observation("s", t * HOUR, float(y[t]))]
        catalog.record(batch, set())
        engine.observe(batch)
    values = samples(metrics)
    assert values[("adaptd_model_gaps_total", (("handling", "filled"),))] == 1
    assert values[("adaptd_model_gaps_total", (("handling", "unfilled"),))] == 1   # over max_gap_fill
    assert values[("adaptd_model_gap_steps_filled_total", ())] == 3


def test_series_gauges_count_warm_and_stale_series():
    metrics, engine, catalog = watched(stale_after=1.0)
    feed(engine, catalog, {"warm": seasonal(40), "warm too": seasonal(40) + 1})
    feed(engine, catalog, {"young": seasonal(SMALL.window - 1)})   # not yet a full window
    engine.observe([Observation("fresh", 0.0, 1.0)])
    values = samples(metrics)
    assert values[("adaptd_series_warm", ())] == 2
    assert values[("adaptd_series_stale", ())] == 0
    for info in catalog.snapshot().values():
        assert info.received > time.monotonic() - 60
    catalog.get("warm").received -= 5.0   # nothing received for 5 s
    assert samples(metrics)[("adaptd_series_stale", ())] == 1


def test_per_series_values_only_for_configured_series_and_capped():
    metrics, engine, catalog = watched(names=("b", "a", "missing", "c"), max_series=3)
    y = seasonal(60)
    feed(engine, catalog, {"a": y, "b": y + 1, "c": y + 2, "d": y + 3})
    values = samples(metrics)
    exported = {dict(k[1])["series"] for k in values if k[0] == "adaptd_series_value"}
    assert exported == {"a", "b"}                     # "missing" has no data, "c" is past the cap
    assert values[("adaptd_series_export_omitted", ())] == 1
    a = {name: values[(name, (("series", "a"),))] for name in (
        "adaptd_series_value", "adaptd_series_forecast", "adaptd_series_forecast_lower",
        "adaptd_series_forecast_upper", "adaptd_series_scaled_error")}
    assert a["adaptd_series_value"] == y[-1]
    assert a["adaptd_series_forecast_lower"] <= a["adaptd_series_forecast"] <= a["adaptd_series_forecast_upper"]
    assert abs(a["adaptd_series_forecast"] - y[-1]) < 3.0      # the forecast made one step before
    assert 0 < a["adaptd_series_scaled_error"] < 2.0
    assert values[("adaptd_series_last_observation_timestamp_seconds", (("series", "a"),))] == 59 * HOUR


def test_scrape_is_fast_and_does_not_grow_with_the_number_of_series():
    sizes = {}
    for n in (10, 10_000):
        metrics, engine, catalog = watched(config=OnlineConfig(window=16, patch=4, hidden=8, horizon=4,
                                                               rls_lags=8, adapt=False, history=64))
        for t in range(3):
            batch = [Observation(f"series-{i}", t * HOUR, float(i + t)) for i in range(n)]
            catalog.record(batch, set())
            engine.observe(batch)
        metrics.scored(np.array([1, 2, 4]), np.array([0.5, 1.0, 2.0]), np.array([True, True, False]))
        generate_latest(metrics.registry)   # warm-up
        started = time.perf_counter()
        text = generate_latest(metrics.registry)
        elapsed = time.perf_counter() - started
        sizes[n] = [line.rsplit(" ", 1)[0] for line in text.decode().splitlines()]   # without values
        assert elapsed < 0.05, f"scrape with {n} series took {elapsed * 1000:.1f} ms"
    assert sizes[10] == sizes[10_000]   # the same samples, whatever the number of series
