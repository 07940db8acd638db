"""The naive engine: last value / seasonal naive with conformal intervals, and its history."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adaptd.engine import NotReady, UnknownSeries
from adaptd.engine.history import SeriesHistory, infer_season, infer_step
from adaptd.engine.naive import NaiveEngine
from adaptd.records import Observation as Obs

HOUR = 3600.0
DAY = 86_400.0
T0 = 1_704_067_200.0


def feed(engine: NaiveEngine, name: str, values, step: float = HOUR, start: float = T0) -> None:  # noqa: ANN001
    engine.observe([Obs(name, start + i * step, float(v)) for i, v in enumerate(values)])


def seasonal(n: int, period: int = 24, amplitude: float = 10.0) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * np.arange(n) / period)


# -- the rule -----------------------------------------------------------------------------------

def test_short_hourly_history_uses_the_last_value() -> None:
    engine = NaiveEngine(max_horizon=30)
    feed(engine, "a", seasonal(47))  # fewer than two days: no seasonal pattern to trust
    fc = engine.forecast("a", 30)
    assert fc.model["kind"] == "last_value"
    assert [p.value for p in fc.points] == [pytest.approx(seasonal(47)[-1])] * 30


def test_two_seasons_of_history_switch_to_seasonal_naive() -> None:
    engine = NaiveEngine(max_horizon=60)
    y = seasonal(24 * 5 + 24) + np.arange(24 * 6) * 0.0
    feed(engine, "a", y[:24 * 5])
    fc = engine.forecast("a", 60)
    assert fc.model["kind"] == "seasonal_naive" and fc.model["season"] == 24
    # A purely periodic series is forecast exactly, at every lead, also beyond one season.
    truth = seasonal(24 * 5 + 60)[24 * 5:]
    np.testing.assert_allclose([p.value for p in fc.points], truth, atol=1e-9)


def test_seasonal_naive_repeats_the_last_season_not_an_older_one() -> None:
    engine = NaiveEngine(max_horizon=48, season=4)
    # Period 4 but the level jumps in the last season: the forecast follows the newest season.
    y = [0, 1, 2, 3] * 3 + [10, 11, 12, 13]
    feed(engine, "a", y)
    assert [p.value for p in engine.forecast("a", 9).points] == [10, 11, 12, 13, 10, 11, 12, 13, 10]


@pytest.mark.parametrize("step, configured, expected", [
    (HOUR, 0, 24), (15 * 60, 0, 96), (DAY, 0, 7), (7.0, 0, 1), (2 * DAY, 0, 1), (HOUR, 5, 5),
    (DAY / 2, 0, 2), (DAY, 3, 3),
])
def test_season_inference(step: float, configured: int, expected: int) -> None:
    assert infer_season(step, configured) == expected


def test_daily_data_gets_a_weekly_season() -> None:
    engine = NaiveEngine(max_horizon=14)
    week = [5, 6, 7, 8, 9, 1, 2]
    feed(engine, "a", week * 3, step=DAY)
    fc = engine.forecast("a", 14)
    assert fc.model["season"] == 7 and fc.step == DAY
    assert [p.value for p in fc.points] == week * 2


def test_irregular_step_uses_the_last_value() -> None:
    engine = NaiveEngine(max_horizon=5)
    feed(engine, "a", range(100), step=7.0)
    fc = engine.forecast("a", 5)
    assert fc.model["kind"] == "last_value" and fc.model["season"] == 1
    assert [p.value for p in fc.points] == [99.0] * 5


# -- timestamps ---------------------------------------------------------------------------------

def test_forecast_timestamps_are_origin_plus_k_steps() -> None:
    engine = NaiveEngine(max_horizon=48)
    feed(engine, "a", range(100), step=15 * 60)
    fc = engine.forecast("a", 48)
    assert fc.origin == T0 + 99 * 15 * 60
    assert fc.step == 15 * 60
    assert [p.ts for p in fc.points] == [fc.origin + k * fc.step for k in range(1, 49)]
    assert fc.series == "a"


def test_step_is_the_median_gap_despite_missing_records() -> None:
    engine = NaiveEngine(max_horizon=3)
    ts = [T0 + i * HOUR for i in range(60) if i not in (10, 11, 12, 30)]  # a few gaps
    engine.observe([Obs("a", t, 1.0) for t in ts])
    fc = engine.forecast("a", 3)
    assert fc.step == HOUR
    assert [p.ts for p in fc.points] == [ts[-1] + HOUR, ts[-1] + 2 * HOUR, ts[-1] + 3 * HOUR]


def test_horizon_cuts_the_forecast() -> None:
    engine = NaiveEngine(max_horizon=24)
    feed(engine, "a", range(50))
    assert len(engine.forecast("a", 1).points) == 1
    assert len(engine.forecast("a", 24).points) == 24
    assert engine.forecast("a", 5).points == engine.forecast("a", 24).points[:5]


# -- intervals ----------------------------------------------------------------------------------

def random_walk(n: int, seed: int = 0) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).normal(size=n))


@pytest.mark.parametrize("season", [0, 1])
def test_intervals_contain_the_forecast_and_widen_with_horizon_on_a_random_walk(season: int) -> None:
    engine = NaiveEngine(max_horizon=96, season=season)
    feed(engine, "rw", random_walk(1000))
    fc = engine.forecast("rw", 96)
    assert all(p.lo <= p.value <= p.hi for p in fc.points)
    width = np.array([p.hi - p.lo for p in fc.points])
    assert np.all(width > 0)
    # A random walk's error over a lag grows like sqrt(lag): far leads get much wider intervals
    # (seasonal naive looks back 24 steps at lead 1 and 96 at lead 96: about twice as wide).
    assert width[95] > (1.5 if season == 0 else 4.0) * width[0]
    assert width[47] > width[0] and width[95] > width[47]
    if season == 1:  # last value: every lead has its own, growing error distribution
        assert width[9] > width[0] and width[29] > width[9]


def empirical_coverage(y: np.ndarray, coverage: float, horizon: int, start: int, every: int) -> dict[int, float]:
    """Walk forward: observe y[:t+1], forecast, and count how often y[t+h] lies in [lo, hi]."""
    engine = NaiveEngine(max_horizon=horizon, coverage=coverage)
    hits = {h: 0 for h in range(1, horizon + 1)}
    n = 0
    feed(engine, "s", y[:start])
    for t in range(start, len(y) - horizon, every):
        engine.observe([Obs("s", T0 + i * HOUR, float(y[i])) for i in range(t - every + 1, t + 1)]
                       if t > start else [Obs("s", T0 + t * HOUR, float(y[t]))])
        fc = engine.forecast("s", horizon)
        assert fc.origin == T0 + t * HOUR
        for h, p in enumerate(fc.points, start=1):
            hits[h] += p.lo <= y[t + h] <= p.hi
        n += 1
    return {h: k / n for h, k in hits.items()}


def test_90_percent_intervals_cover_about_90_percent_on_a_stationary_seasonal_series() -> None:
    rng = np.random.default_rng(42)
    n = 2000
    y = seasonal(n, amplitude=5.0) + 100 + rng.normal(scale=1.0, size=n)
    cov = empirical_coverage(y, 0.9, horizon=24, start=500, every=5)
    overall = float(np.mean(list(cov.values())))
    assert 0.85 <= overall <= 0.95, cov
    assert all(0.8 <= c <= 0.97 for c in cov.values()), cov


def test_a_lower_coverage_gives_narrower_intervals_and_lower_coverage() -> None:
    rng = np.random.default_rng(7)
    y = seasonal(1600) + rng.normal(size=1600)
    c50 = np.mean(list(empirical_coverage(y, 0.5, horizon=6, start=600, every=5).values()))
    c90 = np.mean(list(empirical_coverage(y, 0.9, horizon=6, start=600, every=5).values()))
    assert 0.4 <= c50 <= 0.6 and 0.85 <= c90 <= 0.95


def test_little_history_still_gives_intervals() -> None:
    engine = NaiveEngine(max_horizon=4)
    feed(engine, "a", [1.0, 3.0, 2.0])
    fc = engine.forecast("a", 4)
    widths = [p.hi - p.lo for p in fc.points]
    assert widths[0] > 0 and widths == sorted(widths)
    assert all(p.lo <= p.value <= p.hi for p in fc.points)


def test_a_constant_series_has_zero_width_intervals() -> None:
    engine = NaiveEngine(max_horizon=4)
    feed(engine, "c", [7.0] * 100)
    assert all((p.value, p.lo, p.hi) == (7.0, 7.0, 7.0) for p in engine.forecast("c", 4).points)


def test_huge_values_keep_every_number_finite() -> None:
    engine = NaiveEngine(max_horizon=8)
    feed(engine, "big", [1e308, -1e308] * 30)
    for p in engine.forecast("big", 8).points:
        assert all(math.isfinite(x) for x in (p.value, p.lo, p.hi))
        assert p.lo <= p.value <= p.hi


# -- series state -------------------------------------------------------------------------------

def test_unknown_series() -> None:
    engine = NaiveEngine()
    feed(engine, "a", [1, 2, 3])
    with pytest.raises(UnknownSeries):
        engine.forecast("b", 1)


def test_one_timestamp_is_not_ready() -> None:
    engine = NaiveEngine()
    engine.observe([Obs("a", T0, 1.0), Obs("a", T0, 2.0)])  # a re-send, still one timestamp
    with pytest.raises(NotReady, match="at least 2 timestamps"):
        engine.forecast("a", 1)
    engine.observe([Obs("a", T0 + HOUR, 3.0)])
    assert engine.forecast("a", 1).points[0].value == 3.0


def test_late_records_are_slotted_in_time_order() -> None:
    engine = NaiveEngine(max_horizon=2)
    engine.observe([Obs("a", T0 + h * HOUR, float(h)) for h in (0, 1, 3, 4)])
    first = engine.forecast("a", 1)
    engine.observe([Obs("a", T0 + 2 * HOUR, 2.0)])  # late
    hist = engine._series["a"]  # type: ignore[attr-defined]
    assert list(hist.ts) == [T0 + h * HOUR for h in range(5)]
    assert list(hist.values) == [0.0, 1.0, 2.0, 3.0, 4.0]
    fc = engine.forecast("a", 1)
    assert fc.origin == first.origin == T0 + 4 * HOUR  # the late record does not move the origin
    assert fc.points[0].value == 4.0


def test_a_resent_record_replaces_the_value_and_the_forecast() -> None:
    engine = NaiveEngine(max_horizon=2)
    feed(engine, "a", [1, 2, 3, 4])
    assert engine.forecast("a", 1).points[0].value == 4.0
    engine.observe([Obs("a", T0 + 3 * HOUR, 40.0)])
    assert engine.forecast("a", 1).points[0].value == 40.0  # not a stale cached forecast
    assert len(engine._series["a"]) == 4  # type: ignore[attr-defined]


def test_a_new_observation_moves_the_forecast_on() -> None:
    engine = NaiveEngine(max_horizon=2)
    feed(engine, "a", [1, 2, 3])
    assert engine.forecast("a", 1).origin == T0 + 2 * HOUR
    engine.observe([Obs("a", T0 + 3 * HOUR, 9.0)])
    fc = engine.forecast("a", 1)
    assert fc.origin == T0 + 3 * HOUR and fc.points[0].value == 9.0


def test_history_is_bounded_to_the_newest() -> None:
    engine = NaiveEngine(history=16, max_horizon=2)
    feed(engine, "a", range(100))
    hist = engine._series["a"]  # type: ignore[attr-defined]
    assert len(hist) == 16
    assert list(hist.values) == [float(v) for v in range(84, 100)]
    # A record older than everything kept is ignored by the engine (the store still has it).
    engine.observe([Obs("a", T0, -1.0)])
    assert hist.values[0] == 84.0 and len(hist) == 16
    # A late record inside the kept window is slotted in and the oldest falls out.
    engine.observe([Obs("a", T0 + 90.5 * HOUR, 0.5)])
    assert len(hist) == 16 and list(hist.ts) == sorted(hist.ts) and hist.values[0] == 85.0


def test_series_history_buffer() -> None:
    h = SeriesHistory(3)
    for ts in (5.0, 1.0, 3.0, 3.0, 7.0, 0.5):
        h.add(ts, ts * 10)
    assert list(h.ts) == [3.0, 5.0, 7.0] and list(h.array()) == [30.0, 50.0, 70.0]
    assert h.version == 6


def test_infer_step() -> None:
    assert infer_step([]) is None and infer_step([1.0]) is None
    assert infer_step([1.0, 1.0]) is None
    assert infer_step([0.0, 60.0, 120.0, 1000.0, 1060.0]) == 60.0


def test_series_are_independent_and_restore_rebuilds_state() -> None:
    engine = NaiveEngine(max_horizon=3)
    feed(engine, "a", [1, 2, 3])
    feed(engine, "b", [10, 20, 30, 40], step=DAY)
    other = NaiveEngine(max_horizon=3)
    other.restore({"a": [(T0 + i * HOUR, v) for i, v in enumerate([1.0, 2.0, 3.0])],
                   "b": [(T0 + i * DAY, v) for i, v in enumerate([10.0, 20.0, 30.0, 40.0])]})
    for name in ("a", "b"):
        assert other.forecast(name, 3) == engine.forecast(name, 3)
    assert engine.forecast("b", 1).points[0].value == 40.0 and engine.forecast("b", 1).step == DAY
    assert engine.stats() == {"kind": "naive", "series": 2}
