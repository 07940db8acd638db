"""The online engine: what a user of forecasts would notice — no look-ahead, drift changes
what it does, intervals cover, state survives a restart, hostile series stay finite."""

from __future__ import annotations

import dataclasses
import json
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptd.engine.base import UnknownSeries
from adaptd.engine.checkpointing import CHECKPOINT_FORMAT
from adaptd.engine.conformal import lead_units
from adaptd.engine.features import LEVEL_CLIP, VALUE_CLIP, rls_level, windows
from adaptd.engine.layout import COMBINED, GRU, RLS
from adaptd.engine.learner import Initializer
from adaptd.engine.online import OnlineConfig, OnlineEngine
from adaptd.engine.snapshot import decode, encode
from adaptd.engine.telemetry import Telemetry
from adaptd.records import Observation
from adaptd.store import Checkpoint

from state_payloads import newer_format, with_rls_recent

torch.set_num_threads(1)   # as the daemon runs it: tiny tensors, threads only add overhead
HOUR = 3600.0
SMALL = OnlineConfig(window=16, patch=4, hidden=8, horizon=4, rls_lags=8, adapt_window=32,
                     adapt_validation=4, cooldown=16, adapt_steps=3, history=256)


def make_engine(config: OnlineConfig = SMALL, seed: int = 0) -> OnlineEngine:
    return OnlineEngine(config, Initializer.random(config.shape, seed, 0.05))


def feed(engine: OnlineEngine, values: np.ndarray, name: str = "s", start: int = 0) -> list[np.ndarray]:
    """Observe values one by one; the engine's forecast (values) after each, once it has one."""
    out = []
    for t, v in enumerate(values, start=start):
        engine.observe([Observation(name, t * HOUR, float(v))])
        if t > start:   # one observation has no step yet (not_ready)
            out.append(np.array([p.value for p in engine.forecast(name, engine.config.horizon).points]))
    return [out[0]] + out if out else out   # index t: the forecast issued after observing t


def seasonal(n: int, seed: int = 0, level: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return level + np.sin(2 * np.pi * t / 24) * 3 + rng.normal(0, 0.3, n)


def observe_row(engine: OnlineEngine, names: list[str], y: np.ndarray, t: int) -> None:
    """Row t of y (one column per series in `names`) arrives, every series at once."""
    engine.observe([Observation(name, t * HOUR, float(v)) for name, v in zip(names, y[t])])


def history_of(names: list[str], y: np.ndarray, stop: int) -> dict[str, list[tuple[float, float]]]:
    """The stored history of rows [0, stop) of y, as `restore` takes it."""
    return {name: [(t * HOUR, float(y[t, i])) for t in range(stop)] for i, name in enumerate(names)}



def test_rls_reads_the_whole_distance_from_the_mean_where_the_recurrent_models_level_is_clipped() -> None:
    # A calm stretch (fast scale 0.5, a tenth of the long-run 5.0) 30 above the slow mean: 60
    # fast units, which the recurrent model reads clipped at LEVEL_CLIP. RLS reads it in long-run
    # units, whole: 30 / 5 = 6, what it learns mean reversion from (it read 10 x 0.1 = 1 before).
    last, mean, scale, ratio = np.array([130.0]), np.array([100.0]), np.array([0.5]), np.array([0.1])
    _, gru_level = windows(np.array([[129.0, 130.0]]), scale, mean)
    assert gru_level.tolist() == [LEVEL_CLIP]
    assert rls_level(last, mean, scale, ratio).tolist() == pytest.approx([6.0])
    # Still bounded (a flat stretch's floor scale can make the distance huge), on both sides.
    assert rls_level(np.array([1e9, -1e9]), mean.repeat(2), scale.repeat(2), ratio.repeat(2)).tolist() == \
        [VALUE_CLIP, -VALUE_CLIP]

def test_forecasts_issued_before_k_ignore_every_value_after_k():
    y = seasonal(200)
    changed = y.copy()
    k = 120
    changed[k:] += np.random.default_rng(1).normal(0, 5, len(y) - k)
    a = feed(make_engine(), y)
    b = feed(make_engine(), changed)
    for t in range(k):   # the forecast issued after observing t used values <= t only
        np.testing.assert_array_equal(a[t], b[t])
    assert not np.allclose(a[k], b[k])


def test_forecast_points_step_forward_from_the_last_observation():
    engine = make_engine()
    feed(engine, seasonal(60))
    fc = engine.forecast("s", 3)
    assert fc.origin == 59 * HOUR
    assert [p.ts for p in fc.points] == [60 * HOUR, 61 * HOUR, 62 * HOUR]
    assert fc.model["kind"] == "online"
    assert all(p.lo <= p.value <= p.hi for p in fc.points)


def test_young_series_are_served_by_the_naive_fallback():
    engine = make_engine()
    feed(engine, seasonal(5))
    assert engine.forecast("s", 2).model["kind"] in ("last_value", "seasonal_naive")


def level_shift(n: int, at: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ar = np.zeros(n)
    for t in range(1, n):
        ar[t] = 0.6 * ar[t - 1] + rng.normal(0, 1)
    y = 5 + ar
    y[at:] = 40 - 2.5 * ar[at:]   # new level, new dynamics, new scale
    return y


def ar_then_cycle(n: int, at: int, seed: int = 0) -> np.ndarray:
    """AR(1) noise around 5, then from `at` a clean cycle of 8 steps around 40: a change of
    dynamics, not only of level and scale (which the normalisation absorbs)."""
    rng = np.random.default_rng(seed)
    ar = np.zeros(n)
    for t in range(1, n):
        ar[t] = 0.6 * ar[t - 1] + rng.normal(0, 1)
    y = 5 + ar
    t = np.arange(at, n)
    y[at:] = 40 + 10 * np.sin(2 * np.pi * t / 8) + 0.1 * rng.normal(size=n - at)
    return y


def test_a_regime_change_is_detected_recorded_and_changes_the_model():
    """The change is detected and recorded, the series restarts from θ* (here: weights that know
    the new regime's kind of dynamics, learnt on another stretch of it), and that is what the
    forecasts after it show: far better than the same engine with adaptation off."""
    y = ar_then_cycle(600, 400)
    teacher = make_engine()
    feed(teacher, ar_then_cycle(600, 0, seed=7))
    init = Initializer({k: v[:1].clone() for k, v in teacher.gru.params.items()},
                       {k: 0.05 for k in teacher.gru.params}, "pretrained")
    errors = {}
    for adapt in (True, False):
        engine = make_engine(dataclasses.replace(SMALL, adapt=adapt))
        feed(engine, y[:400])
        engine.set_initializer(init)   # as a promoted θ* arrives: what adaptations start from
        forecasts = feed(engine, y[400:], start=400)   # index i: issued after observing 400 + i
        events = engine.take_drift_events()
        assert any(400 <= e.ts / HOUR < 460 for e in events), [e.ts / HOUR for e in events]
        errors[adapt] = np.mean([(forecasts[i][0] - y[401 + i]) ** 2 for i in range(32, 80)])
        if adapt:
            assert engine.counters["adapted"] >= 1, engine.counters   # new weights won, not only tried
            assert engine.adaptations[engine.slots["s"]] >= 1
        assert engine.take_drift_events() == []
    assert errors[True] < 0.2 * errors[False], errors   # one-step errors, 32 to 80 steps after the change


def test_with_adaptation_off_changes_are_still_detected_and_recorded():
    engine = make_engine(dataclasses.replace(SMALL, adapt=False))
    feed(engine, level_shift(600, 400))
    assert any(400 <= e.ts / HOUR < 460 for e in engine.take_drift_events())   # as config.toml promises
    assert engine.counters["adapted"] + engine.counters["kept"] + engine.counters["failed"] == 0


def post_change_error(adapt: bool, seed: int, keep: float = 0.0) -> float:
    y = level_shift(700, 450, seed)
    engine = make_engine(dataclasses.replace(SMALL, adapt=adapt, adapt_keep=keep))
    forecasts = feed(engine, y)
    errors = [(forecasts[t][0] - y[t + 1]) ** 2 for t in range(450, 520)]
    return float(np.mean(errors))


@pytest.mark.slow
@pytest.mark.parametrize("keep", [0.0, 0.5])   # a full restart, and half of one (the daemon's default)
def test_drift_adaptation_measurably_lowers_error_right_after_a_change(keep: float):
    with_adaptation = np.mean([post_change_error(True, s, keep) for s in range(3)])
    without = np.mean([post_change_error(False, s) for s in range(3)])
    assert with_adaptation < 0.99 * without


def test_the_configured_kept_share_reaches_every_adaptation(monkeypatch):
    from adaptd.config import parse_config
    from adaptd.engine import adapting
    from adaptd.engine.factory import online_config

    assert online_config(parse_config({"adapt": {"keep": 0.3}})).adapt_keep == 0.3
    received = []
    real = adapting.adapt

    def spy(*args, **kwargs):
        received.append(kwargs["keep"])
        return real(*args, **kwargs)
    monkeypatch.setattr(adapting, "adapt", spy)
    engine = make_engine(dataclasses.replace(SMALL, adapt_keep=0.3))
    feed(engine, level_shift(600, 400))
    assert received and set(received) == {0.3}


def test_intervals_cover_close_to_their_target_on_a_stationary_series():
    engine = make_engine(dataclasses.replace(SMALL, coverage=0.9))
    y = seasonal(1500, seed=3)
    forecasts, inside = [], []
    for t, v in enumerate(y):
        if forecasts and t >= 500:
            lo, hi = forecasts[-1]
            inside.append(lo <= v <= hi)
        engine.observe([Observation("s", t * HOUR, float(v))])
        p = engine.forecast("s", 1).points[0] if t else None
        forecasts.append((p.lo, p.hi) if p else (np.nan, np.nan))
    assert 0.84 <= np.mean(inside) <= 0.95


@pytest.mark.slow
def test_intervals_at_the_longest_lead_cover_their_target_when_volatility_comes_in_spells():
    # Eight random walks whose volatility drifts; the lead-24 interval of every origin is checked
    # against the value 24 steps later. Judging each matured forecast by the tracker's width at
    # that time instead of the width it was issued with covered 0.873-0.879 here (seeds 0-2).
    H, S, n = 24, 8, 2000
    engine = make_engine(dataclasses.replace(SMALL, horizon=H, adapt=False, learning_rate=0.0))
    rng = np.random.default_rng(0)
    log_vol = np.zeros((n, S))
    for t in range(1, n):
        log_vol[t] = 0.99 * log_vol[t - 1] + 0.15 * rng.normal(size=S)
    y = 100 + np.cumsum(rng.normal(size=(n, S)) * np.exp(log_vol), axis=0)
    names = [f"s{i}" for i in range(S)]
    issued, inside = {}, []
    for t in range(n):
        bands = issued.pop(t - H, None)
        if bands is not None and t > 400:
            inside += [lo <= v <= hi for (lo, hi), v in zip(bands, y[t])]
        observe_row(engine, names, y, t)
        if t:
            issued[t] = [(p.lo, p.hi) for p in (engine.forecast(name, H).points[-1] for name in names)]
    assert 0.89 <= np.mean(inside) <= 0.92


@pytest.mark.parametrize("blend_memory", [0.0, 0.002])
def test_a_level_shift_in_a_smooth_series_does_not_send_the_forecasts_far_away(blend_memory):
    """An RLS fitted to a noiseless cycle extrapolates a step hundreds of scale units away; the
    mixture must not follow it (it held a quarter of the weight there, forecasting -220 for 61)."""
    t = np.arange(400)
    y = 10 + 5 * np.sin(2 * np.pi * t / 24) + 50.0 * (t >= 350)
    forecasts = feed(make_engine(dataclasses.replace(SMALL, mixture_anchor=0.5, blend_memory=blend_memory)), y)
    errors = [abs(forecasts[k][0] - y[k + 1]) for k in range(350, 398)]
    shown = [round(e, 1) for e in errors]
    # The forecast from the first value after the step cannot know it is a shift (it was 112 off).
    assert errors[0] < 60 and max(errors[2:]) < 15, shown           # the step itself is 50
    assert np.mean(errors[24:]) < 3, shown


def test_a_restored_engine_forecasts_exactly_as_before():
    y = seasonal(150)
    engine = make_engine()
    feed(engine, y)
    before = engine.forecast("s", 4)
    checkpoints = engine.checkpoint()
    history = {"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]}
    restored = make_engine()
    assert restored.restore(history, checkpoints) == []   # nothing newer than the checkpoint
    assert restored.forecast("s", 4) == before
    # ... and keeps learning the same way afterwards.
    nxt = [Observation("s", 150 * HOUR, 11.0)]
    engine.observe(nxt)
    restored.observe(nxt)
    assert restored.forecast("s", 4) == engine.forecast("s", 4)


def test_a_re_sent_newest_value_is_answered_by_the_fallback_until_the_models_learn_past_it():
    """Read-your-writes: the models learn in time order and never see a re-sent value; the
    fallback, which knows every acknowledged record, answers until a newer record is learnt."""
    y = seasonal(40)            # younger than two days: the fallback forecasts the last value
    engine = make_engine()
    feed(engine, y)
    assert engine.forecast("s", 4).model["kind"] == "online"
    checkpoints = engine.checkpoint()
    engine.observe([Observation("s", 39 * HOUR, float(y[39]))])           # a retry: the same value
    assert engine.forecast("s", 4).model["kind"] == "online"
    engine.observe([Observation("s", 39 * HOUR, 500.0)])                  # a new value for the newest time
    fc = engine.forecast("s", 4)
    assert fc.model["kind"] == "last_value" and fc.points[0].value == 500.0
    # A restart from a checkpoint made before the re-send, with the stored value: the same.
    history = {"s": [(t * HOUR, float(v)) for t, v in enumerate(y[:39])] + [(39 * HOUR, 500.0)]}
    restored = make_engine()
    restored.restore(history, checkpoints)
    assert restored.forecast("s", 4).points[0].value == 500.0
    for e in (engine, restored):
        e.observe([Observation("s", 40 * HOUR, 501.0)])
        assert e.forecast("s", 4).model["kind"] == "online"           # past it: the models again


def test_a_fallback_answer_keeps_the_series_drifts_and_adaptations():
    """A client tracking adaptations must not see them reset to 0 (and back) whenever the
    fallback answers for the models, e.g. right after a re-sent newest value."""
    y = level_shift(600, 400)
    engine = make_engine()
    feed(engine, y)
    online = engine.forecast("s", 4).model
    assert online["kind"] == "online" and online["last_drift"] is not None
    engine.observe([Observation("s", 599 * HOUR, 1e3)])   # a new value for the newest time
    fallback = engine.forecast("s", 4).model
    assert fallback["kind"] in ("last_value", "seasonal_naive")
    assert (fallback["adaptations"], fallback["last_drift"]) == (online["adaptations"], online["last_drift"])


def test_a_restored_engine_keeps_forecasting_exactly_as_before_on_volatile_series():
    # Intervals depend on the widths the pending forecasts were issued with: a restart that
    # lost them drifts apart here. (Adaptation is off to compare the intervals alone.)
    H, S, n, cut = 24, 8, 300, 200
    config = dataclasses.replace(SMALL, horizon=H, adapt=False)
    rng = np.random.default_rng(5)
    log_vol = np.cumsum(rng.normal(0, 0.1, (n, S)), axis=0)
    y = 50 + np.cumsum(rng.normal(size=(n, S)) * np.exp(log_vol), axis=0)
    names = [f"s{i}" for i in range(S)]

    engine = make_engine(config)
    for t in range(cut):
        observe_row(engine, names, y, t)
    restored = make_engine(config)
    restored.restore(history_of(names, y, cut), engine.checkpoint())
    for t in range(cut, n):
        observe_row(engine, names, y, t)
        observe_row(restored, names, y, t)
    for name in names:
        assert restored.forecast(name, H) == engine.forecast(name, H), name


DETECTORS = {"adwin": {}, "kswin": {"alpha": 0.005, "window_size": 60, "stat_size": 20, "seed": 3},
             "page_hinkley": {"threshold": 8.0, "min_instances": 20}}


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_a_restored_engine_detects_and_adapts_exactly_as_before(detector):
    # The drift detectors are part of the state: restarted in the middle of a calm stretch, the
    # daemon must notice the change that follows at the same step and adapt the same way.
    config = dataclasses.replace(SMALL, detector=detector, detector_params=DETECTORS[detector])
    names = ["a", "b", "c"]
    y = np.stack([level_shift(700, 450, seed) for seed in range(len(names))], axis=1)
    cut = 380

    engine = make_engine(config)
    for t in range(cut):
        observe_row(engine, names, y, t)
    engine.take_drift_events()
    restored = make_engine(config)
    restored.restore(history_of(names, y, cut), engine.checkpoint())
    for t in range(cut, len(y)):
        observe_row(engine, names, y, t)
        observe_row(restored, names, y, t)
    events = engine.take_drift_events()
    assert any(e.ts / HOUR >= 450 for e in events)   # the change after the restart was noticed ...
    assert restored.take_drift_events() == events     # ... at the same steps by the restored engine
    assert restored.counters["adapted"] + restored.counters["kept"] >= 1
    for name in names:
        assert restored.forecast(name, 4) == engine.forecast(name, 4), name


def test_adaptations_owed_at_a_checkpoint_run_when_it_is_restored(monkeypatch, caplog):
    # One adaptation running (held), one queued and then cancelled as at shutdown: the checkpoint
    # must not fail on the cancelled one, and a restart must adapt both series, not remember
    # their changes as handled (nor wait for a detector to notice them again).
    from adaptd.engine import adapting

    release, real = threading.Event(), adapting.adapt

    def held(*args, **kwargs):
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(adapting, "adapt", held)
    engine = make_engine(dataclasses.replace(SMALL, adapt_workers=1))
    names = ["a", "b"]
    y = np.stack([level_shift(600, 400, seed) for seed in range(len(names))], axis=1)
    t = 0
    try:
        while len(engine._running) < 2 and t < len(y):
            observe_row(engine, names, y, t)
            t += 1
        assert len(engine._running) == 2, "both series should have an adaptation owed"
        engine._pool.shutdown(wait=False, cancel_futures=True)   # what close() does to the queued one
        checkpoints = engine.checkpoint()
    finally:
        release.set()
        engine.close()
    for cp in checkpoints:
        arrays, _ = decode(cp.payload, engine.fingerprint(), CHECKPOINT_FORMAT)
        assert bool(arrays["adaptation_owed"]), cp.series
    monkeypatch.setattr(adapting, "adapt", real)
    caplog.set_level("INFO")
    restored = make_engine()   # adapting inline
    assert restored.learn(restored.restore(history_of(names, y, t), checkpoints)) is None
    assert "2 series had an adaptation owed" in caplog.text
    # Both adapted at the first learning step, and not because a detector fired again.
    assert restored.counters["adapted"] + restored.counters["kept"] == 2
    assert restored.counters["drifts"] == 0


@pytest.mark.parametrize("flag", [np.array([True, False]), np.array(2.5)], ids=["two flags", "a number"])
def test_a_checkpoint_with_a_broken_owed_flag_is_refused(flag, caplog):
    y = seasonal(150)
    _, arrays, header = donor_state(y)
    arrays["adaptation_owed"] = flag
    cp = stored(arrays, header)
    history = {"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]}
    restored, reference = make_engine(), make_engine()
    restored.learn(restored.restore(history, [cp]))
    assert "adaptation_owed is not one flag" in caplog.text
    reference.learn(reference.restore(history))
    assert restored.forecast("s", 4) == reference.forecast("s", 4)   # relearnt from the stored history


def test_a_checkpoint_from_before_detector_state_restores_with_empty_detectors(caplog):
    caplog.set_level("INFO")
    engine = make_engine()
    y = seasonal(150)
    feed(engine, y)
    old = []
    for cp in engine.checkpoint():
        arrays, header = decode(cp.payload, engine.fingerprint(), CHECKPOINT_FORMAT)
        old.append(dataclasses.replace(cp, payload=encode({k: v for k, v in arrays.items()
                                                           if not k.startswith("drift_")}, header,
                                                          CHECKPOINT_FORMAT)))
    restored = make_engine()
    assert restored.restore({"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]}, old) == []
    assert restored.forecast("s", 4) == engine.forecast("s", 4)
    assert "1 series' drift detectors start empty" in caplog.text


def stored(arrays: dict[str, np.ndarray], header: dict) -> Checkpoint:
    """Series "s"'s checkpoint row holding `arrays` (in the current format)."""
    return Checkpoint("s", "online", CHECKPOINT_FORMAT, encode(arrays, header, CHECKPOINT_FORMAT))


def donor_state(y: np.ndarray, config: OnlineConfig = SMALL) -> tuple[OnlineEngine, dict[str, np.ndarray], dict]:
    """An engine that learnt y, and its checkpoint's arrays and header (to damage in a test)."""
    donor = make_engine(config)
    feed(donor, y)
    arrays, header = decode(donor.checkpoint()[0].payload, donor.fingerprint(), CHECKPOINT_FORMAT)
    return donor, arrays, header


@pytest.mark.parametrize("damage", ["truncated adwin bytes", "adwin bytes that fail at the next update",
                                    "other detector"])
def test_a_detector_state_that_does_not_fit_starts_empty_and_keeps_the_model(damage, caplog):
    y = seasonal(150)
    donor, arrays, header = donor_state(y)
    if damage == "truncated adwin bytes":
        arrays["drift_adwin"] = arrays["drift_adwin"][:7]
    elif damage == "adwin bytes that fail at the next update":   # found by overwriting 8 bytes at each offset
        arrays["drift_adwin"][93:101] = 255
    engine = make_engine(dataclasses.replace(SMALL, detector="page_hinkley") if damage == "other detector" else SMALL)
    engine.restore({"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]},
                   [stored(arrays, header)])
    assert "ignoring its checkpoint" not in caplog.text
    assert engine.forecast("s", 4) == donor.forecast("s", 4)       # the models were restored
    assert engine.drift._detectors == {}                             # the detector starts empty
    engine.observe([Observation("s", 150 * HOUR, 12.0)])
    assert np.isfinite([p.value for p in engine.forecast("s", 4).points]).all()


@pytest.mark.parametrize("payload", [b"garbage", b"", b"PK\x03\x04broken", "newer"])
def test_a_corrupt_checkpoint_is_refused_and_the_series_relearns(payload, caplog):
    y = seasonal(100)
    history = {"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]}
    newer = payload == "newer"
    if newer:   # written by a future adaptd
        donor = make_engine()
        feed(donor, y)
        payload = newer_format(donor.checkpoint()[0].payload)
    engine = make_engine()
    engine.learn(engine.restore(history, [Checkpoint("s", "online", 1, payload)]))
    assert "ignoring its checkpoint" in caplog.text
    if newer:
        assert "newer than this adaptd reads" in caplog.text
    reference = make_engine()
    reference.learn(reference.restore(history))
    assert engine.forecast("s", 4) == reference.forecast("s", 4)


@pytest.mark.parametrize("key, q", [("conformal_q", np.nan), ("conformal_q", -1.0), ("conformal_q", np.inf),
                                    ("conformal_q", "short"), ("issued_q", -np.inf)])
def test_a_checkpoint_with_broken_interval_widths_is_refused(key, q, caplog):
    y = seasonal(100)
    _, arrays, header = donor_state(y)
    if q == "short":
        arrays[key] = arrays[key][:1]
    else:
        arrays[key].flat[0] = q
    engine = make_engine()
    engine.learn(engine.restore({"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]},
                                [stored(arrays, header)]))
    assert "ignoring its checkpoint" in caplog.text and key in caplog.text
    assert np.isfinite([(p.lo, p.hi) for p in engine.forecast("s", 4).points]).all()


def test_a_checkpoint_for_another_model_shape_is_refused(caplog):
    y = seasonal(100)
    other = make_engine(dataclasses.replace(SMALL, hidden=4))
    feed(other, y)
    engine = make_engine()
    engine.learn(engine.restore({"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]}, other.checkpoint()))
    assert "hidden" in caplog.text
    assert np.isfinite(engine.forecast("s", 4).points[0].value)


@pytest.mark.parametrize("blend_memory", [0.0, 0.002])    # with 0.002: anchored, the daemon's mixture
@pytest.mark.parametrize("kind", ["constant", "spikes", "alternating", "tiny", "huge", "float limit",
                                  "long gaps"])
def test_hostile_series_never_produce_non_finite_forecasts(kind, blend_memory):
    n = 300
    t = np.arange(n)
    y = {
        "constant": np.full(n, 7.0),
        "spikes": np.where(t % 37 == 0, 1e30, 1.0),
        "alternating": np.where(t % 2 == 0, 1e6, -1e6),
        "tiny": 1e-12 * np.sin(t),
        "huge": 1e300 * np.sign(np.sin(t) + 0.1),
        "float limit": 1.7e308 * np.where(t % 2 == 0, 1.0, -1.0),   # each change overflows to inf
        "long gaps": 10 + np.sin(t / 4),
    }[kind]
    # "long gaps": a year of silence every 50 observations.
    ts = t * HOUR + (t // 50) * 8760 * HOUR if kind == "long gaps" else t * HOUR
    engine = make_engine(dataclasses.replace(SMALL, mixture_anchor=0.5 if blend_memory else 0.0,
                                             blend_memory=blend_memory))
    for i, v in enumerate(y):
        engine.observe([Observation("s", float(ts[i]), float(v))])
        if i == 0:
            continue
        fc = engine.forecast("s", 4)
        assert all(np.isfinite([p.value, p.lo, p.hi]).all() for p in fc.points), (kind, i)
        assert all(p.lo <= p.value <= p.hi for p in fc.points), (kind, i)
    for params in engine.gru.params.values():
        assert bool(np.isfinite(params.numpy()).all())
    if blend_memory:   # and its checkpoint restores (a non-finite record would be refused)
        restored = make_engine(engine.config)
        history = {"s": [(float(ts[i]), float(v)) for i, v in enumerate(y)]}
        assert restored.restore(history, engine.checkpoint()) == []


def test_late_records_are_skipped_by_the_models_but_counted():
    engine = make_engine()
    feed(engine, seasonal(40))
    before = engine.forecast("s", 4)
    engine.observe([Observation("s", 10 * HOUR, 99.0)])
    assert engine.counters["late_skipped"] == 1
    assert engine.forecast("s", 4).points == before.points


GAPPY = dataclasses.replace(SMALL, window=48, horizon=24, rls_lags=32, adapt=False, history=512)


def feed_times(engine: OnlineEngine, steps: np.ndarray, values: np.ndarray, name: str = "s") -> None:
    for t in steps:
        engine.observe([Observation(name, float(t) * HOUR, float(values[t]))])


def mse_after(engine: OnlineEngine, y: np.ndarray, steps: np.ndarray, horizon: int) -> float:
    """Mean squared error of the forecasts issued after each of `steps` (fed in order)."""
    errors = []
    for t in steps:
        engine.observe([Observation("s", float(t) * HOUR, float(y[t]))])
        points = engine.forecast("s", horizon).points
        at = [round(p.ts / HOUR) for p in points]
        errors.extend((p.value - y[k]) ** 2 for p, k in zip(points, at) if k < len(y))
    return float(np.mean(errors))


def test_a_short_gap_is_filled_so_the_season_stays_aligned():
    t = np.arange(560)
    y = 10 + 3 * np.sin(2 * np.pi * t / 24) + np.random.default_rng(0).normal(0, 0.2, t.size)
    present = np.delete(t, np.arange(400, 407))   # seven hours missing
    errors = {}
    for fill in (48, 0):
        engine = make_engine(dataclasses.replace(GAPPY, max_gap_fill=fill))
        feed_times(engine, present[present < 400], y)
        errors[fill] = mse_after(engine, y, present[(present >= 400) & (present < 460)], 24)
        if fill:
            assert engine.counters["gap_steps_filled"] == 7
            assert engine.count[engine.slots["s"]] == 460   # one position per hour, gap included
        else:
            assert engine.counters["gaps_unfilled"] == 1
    # Read as consecutive, the gap shifts the daily cycle by seven hours.
    assert errors[48] * 4 < errors[0], errors


def test_filled_steps_are_never_scored_and_the_issued_forecast_is_kept():
    class Scores(Telemetry):
        def __init__(self) -> None:
            self.leads: list[int] = []

        def scored(self, leads, scaled_error, inside) -> None:
            self.leads.extend(int(h) for h in leads)

    engine = make_engine(GAPPY)
    engine.telemetry = scores = Scores()
    y = seasonal(200)
    feed_times(engine, np.arange(120), y)
    issued = engine.forecast("s", 24).points[3]   # for t = 123, three hours after t = 120 is missed
    scores.leads.clear()
    feed_times(engine, np.array([123]), y)
    now = engine.now("s")
    assert now.ts == issued.ts and now.forecast == issued.value and now.lo == issued.lo
    # Lead 4 from the origin t = 119 matured at t = 123; nothing issued from the filled 120-122.
    assert 4 in scores.leads and 1 not in scores.leads
    assert np.isfinite(engine.forecast("s", 24).points[0].value)


def test_after_a_long_gap_forecasts_from_before_it_are_not_scored():
    class Scores(Telemetry):
        calls = 0

        def scored(self, leads, scaled_error, inside) -> None:
            self.calls += int(leads.size)

    engine = make_engine(GAPPY)
    engine.telemetry = scores = Scores()
    y = seasonal(400)
    feed_times(engine, np.arange(120), y)
    before = engine.count[engine.slots["s"]]
    scores.calls = 0
    feed_times(engine, np.array([300]), y)   # 179 hours missing: more than max_gap_fill
    assert engine.counters["gaps_unfilled"] == 1 and engine.counters["gap_steps_filled"] == 0
    assert engine.count[engine.slots["s"]] == before + 1
    assert scores.calls == 0
    feed_times(engine, np.arange(301, 303), y)
    assert scores.calls > 0   # forecasts issued after the gap are scored again
    assert np.isfinite(engine.forecast("s", 24).points[-1].value)


def test_timestamp_jitter_is_not_a_gap():
    rng = np.random.default_rng(3)
    engine = make_engine(GAPPY)
    y = seasonal(150)
    for t in range(150):
        engine.observe([Observation("s", (t + rng.uniform(-0.3, 0.3)) * HOUR, float(y[t]))])
    assert engine.counters["gap_steps_filled"] == 0 and engine.counters["gaps_unfilled"] == 0


@pytest.mark.parametrize("added", ["gaps", "issued_q"])
def test_a_checkpoint_from_before_an_added_array_still_restores_exactly(added):
    engine = make_engine()
    y = seasonal(150)
    feed(engine, y)
    old = []
    for cp in engine.checkpoint():   # as written before the array existed
        arrays, header = decode(cp.payload, engine.fingerprint(), CHECKPOINT_FORMAT)
        del arrays[added]
        old.append(dataclasses.replace(cp, payload=encode(arrays, header, CHECKPOINT_FORMAT)))
    restored = make_engine()
    assert restored.restore({"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]}, old) == []
    assert restored.forecast("s", 4) == engine.forecast("s", 4)
    restored.observe([Observation("s", 150 * HOUR, 11.0)])
    engine.observe([Observation("s", 150 * HOUR, 11.0)])
    after, reference = restored.forecast("s", 4), engine.forecast("s", 4)
    assert [p.value for p in after.points] == [p.value for p in reference.points]
    assert np.isfinite([(p.lo, p.hi) for p in after.points]).all()
    assert all(p.lo < p.value < p.hi for p in after.points)


def test_a_checkpoint_with_widths_on_the_fast_scale_restores_the_same_intervals():
    # Format-1 checkpoints (before `lead_units`) hold every lead's widths in units of the fast
    # scale: they are converted on restore.
    engine = make_engine()
    y = level_shift(300, 200)   # after a shift the fast and long-run scales differ
    feed(engine, y)
    old = []
    for cp in engine.checkpoint():
        arrays, header = decode(cp.payload, engine.fingerprint(), CHECKPOINT_FORMAT)
        ratio = arrays["scale_h"] / arrays["typical_h"]   # fast / long-run scale at each origin
        assert not np.isclose(ratio[-1], 1.0, rtol=0.05)
        arrays["conformal_q"] = arrays["conformal_q"] * lead_units(ratio[-1:], engine.leads)[0]
        issued = arrays["issued_q"].copy()
        for back in range(1, issued.shape[0] + 1):   # the forecast issued `back - 1` steps ago
            issued[-back] *= lead_units(ratio[-back:][:1], engine.leads)[0]
        arrays["issued_q"] = issued
        old.append(dataclasses.replace(cp, format_version=1, payload=encode(arrays, header, version=1)))
    restored = make_engine()
    assert restored.restore({"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]}, old) == []
    for t in range(300, 304):   # the cached forecast, then ones issued from the converted widths
        after, reference = restored.forecast("s", 8), engine.forecast("s", 8)
        assert [p.value for p in after.points] == [p.value for p in reference.points]
        assert np.allclose([(p.lo, p.hi) for p in after.points], [(p.lo, p.hi) for p in reference.points],
                           rtol=1e-12, atol=0)
        for e in (restored, engine):
            e.observe([Observation("s", t * HOUR, 11.0 + t % 3)])


def test_a_checkpoint_written_by_an_older_adaptd_forecasts_as_that_adaptd_did():
    # tests/data/checkpoint-format1.*: a format-1 checkpoint (interval widths on the fast scale)
    # written by adaptd at commit ca4f782 after 300 observations of a level-shifted series, and
    # the forecasts that adaptd then issued over the next 20 observations. The first forecast is
    # the one it cached, exactly. The intervals are the ones it cached at the restore; the next
    # one, from the widths converted to `lead_units`, is within 1% here (12-19% off unconverted),
    # and later ones follow today's units (`lead_units` move with each origin's scales: a few
    # percent apart, by design). Later forecasts come from today's engine, whose RLS reads the
    # level whole (3e2d55c): on average 0.05% of the interval's half-width from what that adaptd
    # issued, where an engine that lost the checkpoint (relearnt from the stored history) is 0.9%.
    data = Path(__file__).parent / "data"
    payload = (data / "checkpoint-format1.npz").read_bytes()
    old = json.loads((data / "checkpoint-format1.json").read_text())
    y, cut = np.array(old["values"]), old["checkpoint_after"]
    history = {"s": [(t * HOUR, float(v)) for t, v in enumerate(y[:cut])]}
    engine = make_engine()
    assert engine.restore(history, [Checkpoint("s", "online", 1, payload)]) == []
    apart = []
    for t, expected in zip(range(cut, len(y)), np.array(old["forecasts"])):
        got = np.array([[p.value, p.lo, p.hi] for p in engine.forecast("s", 4).points])
        apart.append(_half_widths_apart(got[:, 0], expected))
        if t == cut:
            assert got[:, 0].tolist() == expected[:, 0].tolist()
        if t <= cut + 1:
            half, old_half = got[:, 2] - got[:, 0], expected[:, 2] - expected[:, 0]
            assert np.allclose(half, old_half, rtol=1e-9 if t == cut else 0.02, atol=0), t
        assert (got[:, 1] < got[:, 0]).all() and (got[:, 0] < got[:, 2]).all(), t
        engine.observe([Observation("s", t * HOUR, float(y[t]))])
    relearnt, relearnt_apart = make_engine(), []
    relearnt.learn(relearnt.restore(history))
    for t, expected in zip(range(cut, len(y)), np.array(old["forecasts"])):
        values = np.array([p.value for p in relearnt.forecast("s", 4).points])
        relearnt_apart.append(_half_widths_apart(values, expected))
        relearnt.observe([Observation("s", t * HOUR, float(y[t]))])
    assert np.mean(apart) < 0.003 < np.mean(relearnt_apart)


def _half_widths_apart(values: np.ndarray, old: np.ndarray) -> np.ndarray:
    """How far forecast values are from an old forecast's (value, lo, hi) rows, in its half-widths."""
    return np.abs(values - old[:, 0]) / (old[:, 2] - old[:, 0])


@pytest.mark.parametrize("damage, message", [("short issued_q", "issued_q has shape"),
                                             ("zero long-run scale", "cannot be converted")])
def test_a_broken_format_1_checkpoint_is_refused_before_its_widths_are_converted(damage, message, caplog):
    y = seasonal(150)
    _, arrays, header = donor_state(y)
    if damage == "short issued_q":
        arrays["issued_q"] = arrays["issued_q"][:3]
    else:
        arrays["typical_h"][-1] = 0.0
    engine = make_engine()
    engine.restore({"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]},
                   [Checkpoint("s", "online", 1, encode(arrays, header, version=1))])
    assert "ignoring its checkpoint" in caplog.text and message in caplog.text


@pytest.mark.parametrize("duplicate", [True, False], ids=["duplicate", "reset at drifts"])
def test_a_checkpoint_with_the_removed_rls_recent_expert_restores_without_it(duplicate, caplog):
    engine = make_engine()
    y = level_shift(400, 250)   # a drift, so the mixture's record is not uniform
    feed(engine, y)
    assert engine.counters["drifts"] >= 1
    old = [dataclasses.replace(cp, payload=with_rls_recent(cp.payload, duplicate)) for cp in engine.checkpoint()]
    history = {"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]}
    restored = make_engine()
    assert restored.restore(history, old) == []
    assert "ignoring its checkpoint" not in caplog.text
    # Exactly the engine the four-expert checkpoint was made from, minus rls_recent: same
    # forecast now, and the same after learning one more record.
    assert restored.forecast("s", 4) == engine.forecast("s", 4)
    nxt = [Observation("s", 400 * HOUR, float(y[-1]))]
    engine.observe(nxt)
    restored.observe(nxt)
    assert restored.forecast("s", 4) == engine.forecast("s", 4)
    assert np.isfinite([p.value for p in restored.forecast("s", 4).points]).all()


@pytest.mark.parametrize("broken", ["rls_recent, three experts", "no rls_recent, four experts' record"])
def test_a_checkpoint_with_the_wrong_number_of_experts_is_refused(broken, caplog):
    y = seasonal(100)
    _, arrays, header = donor_state(y)
    if broken == "rls_recent, three experts":
        arrays.update(rls_recent_P=arrays["rls_P"], rls_recent_B=arrays["rls_B"])
    else:
        arrays["mixture_loss"] = np.insert(arrays["mixture_loss"], 1, arrays["mixture_loss"][0], axis=0)
    history = {"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]}
    engine = make_engine()
    engine.learn(engine.restore(history, [stored(arrays, header)]))
    assert "ignoring its checkpoint" in caplog.text and "mixture_loss" in caplog.text
    reference = make_engine()
    reference.learn(reference.restore(history))
    assert engine.forecast("s", 4) == reference.forecast("s", 4)


def test_the_mixture_anchor_reaches_the_forecasts():
    """`mixture_anchor` changes what is forecast, and a fully anchored engine forecasts exactly
    the half-RLS, half-recurrent blend of its experts."""
    y = seasonal(200)
    forecasts = {}
    for anchor in (0.0, 0.5, 1.0):
        engine = make_engine(dataclasses.replace(SMALL, mixture_anchor=anchor))
        forecasts[anchor] = feed(engine, y)[-1]
    assert not np.allclose(forecasts[0.0], forecasts[0.5])
    assert not np.allclose(forecasts[0.5], forecasts[1.0])
    weights = engine.mixture.weights(np.array([engine.slots["s"]]), engine.spread)
    assert np.allclose(weights[0], np.array([0.5, 0.5, 0.0])[:, None])
    # The newest origin's forecasts at the scored leads (normalised), as the engine issued them.
    slot = engine.slots["s"]
    issued = engine.preds[slot, -1]                                   # (experts + combined, leads)
    assert np.allclose(issued[COMBINED], 0.5 * issued[RLS] + 0.5 * issued[GRU])
    assert not np.allclose(issued[RLS], issued[GRU])                  # a blend, not one expert
    last, scale = engine.hist[slot, -1], engine.scale_h[slot, -1]
    lead = int(engine.leads[0])
    assert forecasts[1.0][lead - 1] == pytest.approx(last + scale * issued[COMBINED, 0])


def test_a_learnt_blend_leans_to_the_expert_whose_errors_have_been_smaller():
    y = seasonal(400)
    fixed = feed(make_engine(dataclasses.replace(SMALL, mixture_anchor=1.0)), y)[-1]
    engine = make_engine(dataclasses.replace(SMALL, mixture_anchor=1.0, blend_memory=0.02))
    learnt = feed(engine, y)[-1]
    assert not np.allclose(fixed, learnt)
    slot = np.array([engine.slots["s"]])
    weights = engine.mixture.weights(slot, engine.spread)[0]            # (experts, H)
    better = int(np.argmin(np.diagonal(engine.mixture.moments[slot[0], :, :, 0])))   # RLS or GRU, at lead 1
    assert weights[better, 0] > 0.5 and weights[2].max() == 0.0         # the last value is not blended
    assert np.allclose(weights.sum(axis=0), 1.0)


def test_many_series_in_one_batch_move_in_lockstep():
    engine = make_engine()
    batch = [Observation(f"s{k}", t * HOUR, float(v)) for t, v in enumerate(seasonal(50)) for k in range(3)]
    engine.observe(batch)
    values = [engine.forecast(f"s{k}", 4).points[0].value for k in range(3)]
    assert values[0] == values[1] == values[2]


def test_the_daemon_starts_from_the_newest_stored_initializer_that_fits(tmp_path, caplog):
    from adaptd.config import parse_config
    from adaptd.engine.factory import encode_initializer, online_config, stored_initializer
    from adaptd.store import Store

    settings = parse_config({"adapt": {"init": "pretrained"}})
    config = online_config(settings)
    other = dataclasses.replace(config, hidden=config.hidden + 1)
    store = Store.open(f"sqlite:///{tmp_path}/init.db")
    try:
        assert stored_initializer(settings, store, config).kind == "random"   # nothing stored yet
        fitting = Initializer.random(config.shape, 1, 0.05)
        fitting.kind = "pretrained"
        good = store.save_initializer("pretrain", 1, encode_initializer(fitting, config), {}, None, True)
        misfit = Initializer.random(other.shape, 2, 0.05)
        misfit.kind = "pretrained"
        store.save_initializer("pretrain", 1, encode_initializer(misfit, other), {}, None, True)
        chosen = stored_initializer(settings, store, config)
        assert (chosen.kind, chosen.version) == ("pretrained", good)
        assert "not usable here" in caplog.text   # the newer one was made for another shape
        for name, tensor in fitting.params.items():
            assert torch.equal(chosen.params[name], tensor)
    finally:
        store.close()


def _learnt_then_recorded(values: np.ndarray, learnt: int, config: OnlineConfig = SMALL) -> OnlineEngine:
    """An engine that learnt values[:learnt] and has only recorded the rest (the learning
    thread has not reached them yet)."""
    engine = make_engine(config)
    rows = [Observation("s", t * HOUR, float(v)) for t, v in enumerate(values)]
    engine.observe(rows[:learnt])
    engine.record(rows[learnt:])
    return engine


def _advanced_without_learning(values: np.ndarray, learnt: int, config: OnlineConfig = SMALL) -> np.ndarray:
    """What the engine forecasts after appending the unlearnt records without learning from
    them: the reference for a provisional forecast."""
    engine = make_engine(config)
    engine.observe([Observation("s", t * HOUR, float(v)) for t, v in enumerate(values[:learnt])])
    slot = np.array([engine.slots["s"]])
    for t in range(learnt, len(values)):
        ts, y = np.array([t * HOUR]), np.array([float(values[t])])
        engine._align(slot, ts, y)
        engine._append(slot, ts, y)
    engine._forecast(slot)
    return engine.fc_value[slot[0]].copy()


@pytest.mark.parametrize("unlearnt, jump", [(1, 0.0), (3, 0.0), (1, 20.0)])
def test_a_recorded_record_is_forecast_from_at_once_without_waiting_for_learning(unlearnt: int, jump: float):
    y = seasonal(120, seed=4)
    y[-1] += jump                  # a jump moves the scales the models read the window in
    learnt = len(y) - unlearnt
    engine = _learnt_then_recorded(y, learnt)
    assert not engine.caught_up("s")
    fc = engine.forecast_current("s", SMALL.horizon)
    assert fc is not None and fc.origin == (len(y) - 1) * HOUR          # reflects every record...
    assert fc.model["kind"] == "online" and fc.model["unlearnt"] == unlearnt
    expected = _advanced_without_learning(y, learnt)
    np.testing.assert_allclose([p.value for p in fc.points], expected, rtol=1e-5)   # ...as the models read it
    assert all(p.lo < p.value < p.hi for p in fc.points)
    engine.learn([Observation("s", t * HOUR, float(y[t])) for t in range(learnt, len(y))])
    after = engine.forecast("s", SMALL.horizon)   # once learnt: the learning thread's own forecast
    assert "unlearnt" not in after.model and after.origin == fc.origin


def test_no_provisional_forecast_while_the_series_is_being_learnt_or_off_its_grid():
    y = seasonal(120, seed=5)
    engine = _learnt_then_recorded(y, 119)
    slot = engine.slots["s"]
    engine.stamp[slot] += 1                      # the learning thread is changing this slot
    assert engine.forecast_current("s", 4) is None
    assert engine.forecast("s", 4).model["kind"] != "online"   # the fallback answers meanwhile
    engine.stamp[slot] += 1
    assert engine.forecast_current("s", 4) is not None
    late = _learnt_then_recorded(y, 110)
    late.record([Observation("s", 130 * HOUR, 10.0)])   # a gap the learning thread will fill first
    assert late.forecast_current("s", 4) is None


def test_a_series_nobody_sent_is_unknown_at_once():
    engine = make_engine()
    engine.observe([Observation("s", t * HOUR, float(v)) for t, v in enumerate(seasonal(40))])
    with pytest.raises(UnknownSeries):
        engine.forecast_current("nobody", 4)


def test_a_provisional_forecast_read_while_learning_changed_the_series_is_discarded():
    y = seasonal(120, seed=6)
    engine = _learnt_then_recorded(y, 118)
    read = engine.gru.predict_one

    def learning_lands_mid_read(slot, window, level):   # the learning thread steps this series meanwhile
        out = read(slot, window, level)
        engine.learn([Observation("s", 118 * HOUR, float(y[118]))])
        return out

    engine.gru.predict_one = learning_lands_mid_read
    assert engine.forecast_current("s", 4) is None
    engine.gru.predict_one = read
    fc = engine.forecast_current("s", 4)      # asked again: from the state after that step
    assert fc is not None and fc.model["unlearnt"] == 1


def test_records_that_arrived_out_of_order_or_were_re_sent_are_not_forecast_provisionally():
    y = seasonal(120, seed=7)
    engine = _learnt_then_recorded(y, 118)
    engine.record([Observation("s", 118 * HOUR, 99.0)])   # re-sent: learning keeps the first value
    assert engine.forecast_current("s", 4) is None
    engine = _learnt_then_recorded(y[:117], 117)
    engine.record([Observation("s", 118 * HOUR, float(y[118])), Observation("s", 117 * HOUR, float(y[117]))])
    assert engine.forecast_current("s", 4) is None          # learning skips the late one


def test_while_learning_computes_a_series_gradient_step_its_forecast_is_answered_from_its_new_state():
    y = seasonal(120, seed=8)
    engine = _learnt_then_recorded(y, 119)
    newest = [Observation("s", 119 * HOUR, float(y[119]))]
    stepped, asked = engine.gru.stepped, []

    def ask_meanwhile(*args, **kwargs):   # the slow, read-only part of a learning step
        asked.append(engine.forecast_current("s", SMALL.horizon))
        return stepped(*args, **kwargs)

    engine.gru.stepped = ask_meanwhile
    engine.learn(newest)
    fc = asked[0]
    assert fc is not None and fc.origin == 119 * HOUR and fc.model["unlearnt"] == 1
    shed = _learnt_then_recorded(y, 119)   # the same state, the GRU step skipped: the reference
    shed.learn(newest, shed=True)
    np.testing.assert_allclose([p.value for p in fc.points], shed.fc_value[shed.slots["s"]], rtol=1e-5)


def test_with_train_every_series_that_arrive_together_take_their_gru_steps_in_turn():
    # Every 4th observation per series, but not all series in the same round: a round with
    # every series' gradient step would stall the forecasts waiting for that round.
    engine = make_engine(dataclasses.replace(SMALL, train_every=4))
    stepped: list[int] = []
    engine._gru_step = lambda slots: stepped.append(len(slots))
    y = seasonal(100)
    per_round = []
    for t in range(100):
        before = len(stepped)
        engine.observe([Observation(f"series-{k}", t * HOUR, float(y[t] + k)) for k in range(16)])
        per_round.append(sum(stepped[before:]))
    last = per_round[-20:]
    assert sum(last) == 16 * 5                    # each series every 4th observation...
    assert 0 < min(last) and max(last) <= 6       # ...spread over the rounds (16 / 4 each on average)


def test_with_train_every_a_restored_engine_keeps_learning_exactly_as_before():
    # Checkpoints load in any order, so a series may get another slot: its GRU steps must still
    # fall on the same observations, or the restored forecasts drift apart.
    config = dataclasses.replace(SMALL, train_every=4)
    names = [f"series-{k}" for k in range(5)]
    y = seasonal(160)
    engine = make_engine(config)
    for t in range(150):
        engine.observe([Observation(n, t * HOUR, float(y[t] + k)) for k, n in enumerate(names)])
    history = {n: [(t * HOUR, float(y[t] + k)) for t in range(150)] for k, n in enumerate(names)}
    restored = make_engine(config)
    assert restored.restore(history, list(reversed(engine.checkpoint()))) == []
    assert restored.slots != engine.slots
    for t in range(150, 160):
        batch = [Observation(n, t * HOUR, float(y[t] + k)) for k, n in enumerate(names)]
        engine.observe(batch)
        restored.observe(batch)
        for n in names:
            assert restored.forecast(n, 4) == engine.forecast(n, 4)


def test_with_train_every_a_series_with_regular_gaps_still_takes_its_gru_steps():
    # Every 4th hour missing (and filled): the count moves 1, 1, 2, ... and never rests on one
    # residue mod 4. A series whose phase put its steps there must still take them.
    names, k = {}, 0
    while len(names) < 4:   # one series for each phase
        names.setdefault(zlib.crc32(f"s{k}".encode()) % 4, f"s{k}")
        k += 1
    engine = make_engine(dataclasses.replace(GAPPY, train_every=4))
    stepped: dict[str, int] = {}
    engine._gru_step = lambda slots: [stepped.__setitem__(engine.names[s], stepped.get(engine.names[s], 0) + 1)
                                      for s in slots]
    y = seasonal(400)
    for t in (t for t in range(400) if t % 4 != 3):
        engine.observe([Observation(n, t * HOUR, float(y[t])) for n in names.values()])
    assert engine.counters["gap_steps_filled"] > 0
    # ~(400 - window) / 4 steps each, whatever the phase
    assert all(stepped.get(n, 0) >= 80 for n in names.values()), stepped


BLENDED = dataclasses.replace(SMALL, mixture_anchor=0.5, blend_memory=0.01)


def test_a_restored_engine_keeps_its_learnt_blend_and_forecasts_exactly_as_before():
    y = seasonal(150)
    engine = make_engine(BLENDED)
    feed(engine, y)
    fresh = engine.mixture.fresh_moments(1, engine.mixture.moments.shape[3])[0]
    assert not np.allclose(engine.mixture.moments[0], fresh)          # it learnt from the errors
    history = {"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]}
    restored = make_engine(BLENDED)
    assert restored.restore(history, engine.checkpoint()) == []
    np.testing.assert_array_equal(restored.mixture.moments[0], engine.mixture.moments[0])
    for t, v in ((150, 11.0), (151, 9.5)):
        engine.observe([Observation("s", t * HOUR, v)])
        restored.observe([Observation("s", t * HOUR, v)])
        assert restored.forecast("s", 4) == engine.forecast("s", 4)


def test_a_checkpoint_from_before_the_learnt_blend_restores_with_the_blend_afresh(caplog):
    y = seasonal(150)
    engine = make_engine(BLENDED)
    feed(engine, y)
    old = []
    for cp in engine.checkpoint():
        arrays, header = decode(cp.payload, engine.fingerprint(), CHECKPOINT_FORMAT)
        del arrays["mixture_moments"]
        old.append(dataclasses.replace(cp, payload=encode(arrays, header, CHECKPOINT_FORMAT)))
    restored = make_engine(BLENDED)
    assert restored.restore({"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]}, old) == []
    assert "ignoring" not in caplog.text
    assert restored.forecast("s", 4) == engine.forecast("s", 4)       # the forecast it had issued
    np.testing.assert_array_equal(restored.mixture.moments[0],
                                  restored.mixture.fresh_moments(1, restored.mixture.moments.shape[3])[0])
    restored.observe([Observation("s", 150 * HOUR, 11.0)])
    assert np.isfinite([(p.value, p.lo, p.hi) for p in restored.forecast("s", 4).points]).all()


def test_a_checkpoint_with_a_broken_learnt_blend_is_refused(caplog):
    y = seasonal(150)
    _, arrays, header = donor_state(y, BLENDED)
    arrays["mixture_moments"] = np.full_like(arrays["mixture_moments"], np.nan)
    restored = make_engine(BLENDED)
    restored.learn(restored.restore({"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]}, [stored(arrays, header)]))
    assert "ignoring its checkpoint" in caplog.text and "mixture_moments" in caplog.text
    assert np.isfinite([p.value for p in restored.forecast("s", 4).points]).all()
