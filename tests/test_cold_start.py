"""Cold start (`[model] cold_start`): what a user notices about a series with little history —
the initializer θ* answers it after a few observations, with a sane interval, without looking
ahead, across a restart, and better than the naive fallback on real series."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptd.cli import main
from adaptd.engine.learner import Initializer
from adaptd.engine.naive import NaiveEngine
from adaptd.engine.online import OnlineConfig, OnlineEngine
from adaptd.records import Observation

torch.set_num_threads(1)
HOUR = 3600.0
COLD = OnlineConfig(window=16, patch=4, hidden=8, horizon=4, rls_lags=8, adapt_window=32,
                    adapt_validation=4, cooldown=16, adapt_steps=3, history=256, cold_start=4)


def make_engine(config: OnlineConfig = COLD, seed: int = 0, rise: float = 0.0) -> OnlineEngine:
    """An engine whose θ* reads the window (random output weights, unlike a random initializer's
    zeros) and adds `rise` scale units per lead."""
    init = Initializer.random(config.shape, seed, 0.05)
    generator = torch.Generator().manual_seed(seed)
    init.params["skip"] = 0.05 * torch.randn(init.params["skip"].shape, generator=generator)
    init.params["bias"] = rise * torch.arange(1.0, config.horizon + 1)[None]
    init.kind = "meta"   # stands for θ*: the tests only need to see which initializer answered
    return OnlineEngine(config, init)


def observe(engine: OnlineEngine, values: np.ndarray, name: str = "s", start: int = 0) -> None:
    for t, v in enumerate(values, start=start):
        engine.observe([Observation(name, t * HOUR, float(v))])


def seasonal(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 10 + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, n)


def test_after_cold_start_observations_the_initializer_answers():
    engine = make_engine()
    y = seasonal(COLD.window + 1)
    observe(engine, y[:3])
    assert engine.forecast("s", 4).model["kind"] == "last_value"   # below cold_start: the fallback
    for n in range(COLD.cold_start, COLD.window):
        engine.observe([Observation("s", (n - 1) * HOUR, float(y[n - 1]))])
        fc = engine.forecast("s", 4)
        assert fc.model["kind"] == "cold_start" and fc.model["init"] == "meta", fc.model
        assert fc.model["observations"] == n
        assert fc.origin == (n - 1) * HOUR and [p.ts for p in fc.points] == [(n + i) * HOUR for i in range(4)]
        assert all(np.isfinite([p.value, p.lo, p.hi]).all() and p.lo <= p.value <= p.hi for p in fc.points)
    observe(engine, y[COLD.window - 1:], start=COLD.window - 1)
    warm = engine.forecast("s", 4)
    assert warm.model["kind"] == "online" and "observations" not in warm.model


def test_the_young_forecast_comes_from_the_initializer():
    y = seasonal(COLD.cold_start)   # its first forecast: no error scored yet to re-weight it
    answers = {}
    for rise in (-1.0, 1.0):   # a θ* that expects the series to fall, and one that expects a rise
        engine = make_engine(rise=rise)
        observe(engine, y)
        answers[rise] = np.array([p.value for p in engine.forecast("s", 4).points])
    assert (np.diff(answers[1.0]) > 0).all() and (answers[1.0] > y[-1]).all()
    assert (np.diff(answers[-1.0]) < 0).all() and (answers[-1.0] < y[-1]).all()


def test_cold_start_off_leaves_young_series_to_the_fallback():
    engine = make_engine(dataclasses.replace(COLD, cold_start=0))
    observe(engine, seasonal(COLD.window - 1))
    assert engine.forecast("s", 4).model["kind"] == "last_value"
    assert engine.warm_series() == 0


def test_young_intervals_are_at_least_as_wide_as_the_fallbacks():
    y = seasonal(30, seed=2)
    engine, naive = make_engine(), NaiveEngine(max_horizon=4)
    for t, v in enumerate(y):
        record = [Observation("s", t * HOUR, float(v))]
        engine.observe(record)
        naive.record(record)
        if COLD.cold_start <= t + 1 < COLD.window:
            ours, theirs = engine.forecast("s", 4).points, naive.forecast("s", 4).points
            for a, b in zip(ours, theirs):
                assert a.hi - a.lo >= (b.hi - b.lo) * (1 - 1e-9)


def test_young_forecasts_ignore_every_value_after_their_origin():
    y = seasonal(40)
    changed = y.copy()
    k = 9   # inside the cold-start span (4 <= k < window = 16)
    changed[k:] += np.random.default_rng(1).normal(0, 5, len(y) - k)
    runs = []
    for values in (y, changed):
        engine, issued = make_engine(), []
        for t, v in enumerate(values):
            engine.observe([Observation("s", t * HOUR, float(v))])
            if t + 1 >= COLD.cold_start:
                issued.append(engine.forecast("s", 4))
        runs.append(issued)
    before = k - COLD.cold_start + 1   # forecasts issued after observing t < k
    assert runs[0][:before] == runs[1][:before]
    assert runs[0][before] != runs[1][before]


def test_a_restored_young_series_forecasts_exactly_as_before():
    y = seasonal(24)
    engine = make_engine()
    observe(engine, y[:10])
    before = engine.forecast("s", 4)
    assert before.model["kind"] == "cold_start"
    restored = make_engine()
    history = {"s": [(t * HOUR, float(v)) for t, v in enumerate(y[:10])]}
    assert restored.restore(history, engine.checkpoint()) == []
    assert restored.forecast("s", 4) == before
    for t in range(10, 24):   # ... and goes on identically, across the full window
        record = [Observation("s", t * HOUR, float(y[t]))]
        engine.observe(record)
        restored.observe(record)
        assert restored.forecast("s", 4) == engine.forecast("s", 4)


def test_young_series_raise_no_drift_events():
    """The detector watches full windows' forecasts only. A detector that fires within a few
    values (ADWIN, the default, cannot before 32) sees a huge change in a warm series, and the
    same change while the series is young does not reach it."""
    quick = dataclasses.replace(COLD, detector="page_hinkley",
                                detector_params={"min_instances": 1, "threshold": 5.0, "delta": 0.005})
    young, warm = make_engine(quick), make_engine(quick)
    y = seasonal(2 * COLD.window + 8, seed=4)
    observe(young, np.concatenate([y[:8], y[8:COLD.window] + 200.0]))     # a huge change while young
    observe(warm, np.concatenate([y[:2 * COLD.window], y[2 * COLD.window:] + 200.0]))   # ... and once warm
    assert young.take_drift_events() == []
    assert warm.take_drift_events(), "the control: the same change in a warm series is detected"


REPLAY_CONFIG = """
[model]
window = 16
cold_start = 4
patch = 4
hidden = 8
rls_lags = 8
max_horizon = 4
[adapt]
window = 32
validation = 4
workers = 0
"""


def replay(tmp_path: Path, values: np.ndarray, name: str) -> list[dict[str, str]]:
    data, config, out = tmp_path / f"{name}.csv", tmp_path / "config.toml", tmp_path / f"{name}-out.csv"
    config.write_text(REPLAY_CONFIG)
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["date", "a"])
        for t, v in enumerate(values):
            w.writerow([f"2024-01-{1 + t // 24:02d} {t % 24:02d}:00:00", v])
    # A 5% warm-up of 100 rows: forecasts are scored from row 5, while the series is young.
    assert main(["replay", str(data), "--horizon", "3", "--warmup-frac", "0.05", "--config", str(config),
                 "--forecasts-out", str(out), "--no-progress"]) == 0
    with out.open() as f:
        return list(csv.DictReader(f))


def test_replay_forecasts_young_series_deterministically_and_without_look_ahead(tmp_path: Path):
    y = seasonal(100).round(4)
    changed = y.copy()
    changed[10:] += 50.0
    first, again, other = replay(tmp_path, y, "x"), replay(tmp_path, y, "y"), replay(tmp_path, changed, "z")
    assert first == again
    assert first[0]["origin"] == "2024-01-01 05:00:00"   # young (6 of 16 observations), yet forecast
    cutoff = "2024-01-01 10:00:00"
    assert [r for r in first if r["origin"] < cutoff] == [r for r in other if r["origin"] < cutoff]
    assert [r for r in first if r["origin"] >= cutoff] != [r for r in other if r["origin"] >= cutoff]


# -- on real series ------------------------------------------------------------------------------

LEADS = 24                        # scored leads 1..24 of each forecast
AGES = (4, 8, 12, 24, 36, 47)     # observations seen when the forecast is issued


def _real_segments() -> dict[str, np.ndarray]:
    """Cold-start segments (rows) of real series in units of their own spread: M4 Hourly series
    the packaged initializer never trained on, and ETTh2 channels from its test range."""
    from adaptd.bench.accuracy.datasets import DataMissing, load_split, resolve_data_dir
    from adaptd.config import Settings
    from adaptd.meta.job import held_out_names
    from adaptd.meta.sources import series_from_m4

    need = max(AGES) + LEADS
    m4_file = resolve_data_dir() / "m4" / "Hourly-train.csv"
    try:
        split = load_split("etth2", "fsnet")
    except DataMissing as exc:
        pytest.skip(f"real data not present ({exc})")
    if not m4_file.is_file():
        pytest.skip(f"real data not present: {m4_file} (see ../shared/data/SOURCES.md)")
    m4 = series_from_m4(m4_file)
    # The packaged initializer was made by `make initializer`: meta-train with seed 0 on all of
    # M4 Hourly, which holds these series out whole.
    held = sorted(held_out_names(sorted(m4), Settings().meta.validation_series, 0))
    etth2 = [split.values[start: start + need, c] for c in range(split.values.shape[1])
             for start in range(split.val_end, split.test_end - need, 1200)]
    return {"M4 Hourly (held out)": np.stack([m4[n][:need] / m4[n].std() for n in held]),
            "ETTh2 (test range)": np.stack(etth2)}


def test_on_real_series_cold_start_beats_the_naive_fallback():
    from adaptd.config import Settings
    from adaptd.engine.factory import build_engine, online_config, packaged_initializer

    settings = Settings()
    init = packaged_initializer(online_config(settings))
    assert init is not None
    for label, rows in _real_segments().items():
        engine = build_engine(settings, init, inline_adaptation=True)
        naive = NaiveEngine(max_horizon=settings.model.max_horizon)
        names = [f"{label}/{i}" for i in range(len(rows))]
        ours, theirs = [], []
        for t in range(max(AGES)):
            batch = [Observation(name, t * HOUR, float(row[t])) for name, row in zip(names, rows)]
            engine.observe(batch)
            naive.record(batch)
            if t + 1 not in AGES:
                continue
            for name, row in zip(names, rows):
                target = row[t + 1: t + 1 + LEADS]
                fc = engine.forecast(name, LEADS)
                assert fc.model["kind"] == "cold_start"
                ours.append(np.mean((np.array([p.value for p in fc.points]) - target) ** 2))
                theirs.append(np.mean((np.array([p.value for p in naive.forecast(name, LEADS).points]) - target) ** 2))
        ratio = np.mean(ours) / np.mean(theirs)
        assert ratio < 0.9, f"{label}: cold-start MSE / naive MSE = {ratio:.3f} over {len(rows)} series"


def test_meta_training_learns_cold_starts_from_the_windows_the_engine_forecasts_from() -> None:
    """`young_examples` (what `[meta] cold_start_weight` trains θ* on) must be exactly what the
    engine feeds θ* for a young series: same padding, window, level and scale."""
    from adaptd.engine.features import young_examples

    engine = make_engine()
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    predict = engine.gru.predict

    def spy(slots, window, level):  # type: ignore[no-untyped-def]
        seen[int(engine.count[slots[0]])] = (np.array(window[0]), np.array(level[0]))
        return predict(slots, window, level)
    engine.gru.predict = spy  # type: ignore[method-assign]
    rng = np.random.default_rng(4)
    y = np.concatenate([np.full(3, 7.0), 7.0 + np.cumsum(rng.normal(0, 1, 20))])   # starts flat
    observe(engine, y)
    ages = np.arange(COLD.cold_start, COLD.window)
    assert set(ages) <= set(seen), sorted(seen)
    window, level, _target, _mask = young_examples(y, ages, COLD.window, COLD.horizon, COLD.scale_rate,
                                                   COLD.mean_rate)
    for k, age in enumerate(ages):
        np.testing.assert_allclose(seen[int(age)][0], window[k], rtol=1e-6, atol=1e-9, err_msg=f"age {age}")
        np.testing.assert_allclose(seen[int(age)][1], level[k], rtol=1e-6, atol=1e-9, err_msg=f"age {age}")
