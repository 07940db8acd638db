"""Meta-learning the initializer: leak-free tasks, training that helps, versioned promotion,
the `meta-train`/`initializers` commands, and a daemon that picks up a promoted version live."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptd.config import load_config
from adaptd.engine.learner import Initializer, example_loss, pretrain
from adaptd.engine.factory import online_config, pooled_examples
from adaptd.engine.online import OnlineConfig
from adaptd.meta.job import run
from adaptd.meta.synthetic import regime_series
from adaptd.meta.tasks import SeriesPool, cut_tasks, sample_tasks
from adaptd.meta.train import (MIN_STEP, MAX_STEP, MetaSettings, meta_train, post_adaptation_loss,
                               validation_score)
from adaptd.store import Store

from daemon_harness import DaemonProcess, hourly, run_cli, short_tempdir, write_config
from state_payloads import newer_format

torch.set_num_threads(1)
SMALL = OnlineConfig(window=16, patch=4, hidden=8, horizon=6, rls_lags=8, adapt_window=24, adapt_validation=4,
                     adapt_steps=3)
MODEL = {"window": 16, "patch": 4, "hidden": 8, "max_horizon": 6, "rls_lags": 8}
ADAPT = {"window": 24, "validation": 4, "steps": 3}


def test_support_never_sees_what_the_query_scores():
    rng = np.random.default_rng(0)
    y = regime_series(1, 400, rng).values[0]
    t, query, v = 200, 12, SMALL.adapt_validation

    def task(values: np.ndarray):  # type: ignore[no-untyped-def]
        return cut_tasks(SeriesPool([values], SMALL), np.array([0]), np.array([t]), query)

    def seen(ex) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
        return [ex.window, ex.level, ex.target * ex.mask]

    future = y.copy()
    future[t + 1:] += rng.normal(0, 50, len(y) - t - 1)       # after the detection at t
    recent = y.copy()
    recent[t - v + 1:t + 1] += 50.0                           # observed, but held out for validation
    base, after, held = task(y), task(future), task(recent)
    assert all(torch.equal(a, b) for a, b in zip(seen(base.support), seen(after.support)))
    assert not torch.equal(base.query.target * base.query.mask, after.query.target * after.query.mask)
    # The support trains only on targets observed `validation` steps before t, as the daemon does.
    assert torch.equal(base.support.target * base.support.mask, held.support.target * held.support.mask)
    assert float(base.query.mask.sum()) > 0 and float(base.support.mask.sum()) > 0


def test_tasks_are_placed_after_known_changes_at_realistic_delays():
    data = regime_series(4, 800, np.random.default_rng(1))
    pool = SeriesPool(data.values, SMALL, changes=data.changes)
    tasks = sample_tasks(pool, 200, 12, np.random.default_rng(2), delays=(8,), change_share=1.0)
    after_change = [any(t - c == 8 for c in data.changes[i]) for i, t in zip(tasks.series, tasks.time)]
    assert np.mean(after_change) > 0.9


def test_a_query_stops_at_the_next_known_change():
    y = regime_series(1, 400, np.random.default_rng(0)).values[0]
    t, query = 200, 12
    cut = cut_tasks(SeriesPool([y], SMALL, changes=[[150, 205]]), np.array([0]), np.array([t]), query)
    whole = cut_tasks(SeriesPool([y], SMALL, changes=[[150]]), np.array([0]), np.array([t]), query)
    target_time = t + np.arange(query)[:, None] + np.arange(1, SMALL.horizon + 1)[None, :]
    mask, full = cut.query.mask[0].numpy(), whole.query.mask[0].numpy()
    assert not mask[target_time >= 205].any()
    assert full[(target_time >= 205) & (target_time <= t + query)].all()   # scored without the change
    assert np.array_equal(mask[target_time < 205], full[target_time < 205])
    assert torch.equal(cut.support.mask, whole.support.mask) and torch.equal(cut.valid.mask, whole.valid.mask)


def test_validation_scores_only_tasks_whose_query_scores_something():
    y = regime_series(1, 400, np.random.default_rng(0)).values[0]
    pool = SeriesPool([y], SMALL, changes=[[201]])     # the task at 200 has nothing left to score
    init = Initializer.random(SMALL.shape, 0, 0.05)
    tasks = cut_tasks(pool, np.array([0, 0, 0]), np.array([120, 150, 200]), 12)
    losses = post_adaptation_loss(init, tasks, SMALL.adapt_steps)
    assert losses[2] == 0 and float(tasks.query.mask[2].sum()) == 0
    assert validation_score(init, tasks, SMALL.adapt_steps) == pytest.approx(losses[:2].mean())
    assert np.isnan(validation_score(init, cut_tasks(pool, np.array([0]), np.array([200]), 12), SMALL.adapt_steps))


def test_tasks_sit_at_recorded_detections_and_stop_at_the_next_one():
    y = regime_series(1, 600, np.random.default_rng(3)).values[0]
    pool = SeriesPool([y], SMALL, detections=[[150, 300, 305]])
    tasks = sample_tasks(pool, 300, 12, np.random.default_rng(4), change_share=1.0)
    assert set(tasks.time.tolist()) == {150, 300, 305}            # exactly where the detectors fired
    at = tasks.time == 300
    target_time = 300 + np.arange(12)[:, None] + np.arange(1, SMALL.horizon + 1)[None, :]
    assert not tasks.query.mask[at].numpy()[:, target_time >= 305].any()
    assert tasks.query.mask[at].numpy()[:, target_time < 305].all()


def test_spliced_series_draw_their_share_of_tasks_with_the_change_known_inside_each_span():
    from adaptd.meta.tasks import SPLICE_AFTER, SPLICE_BEFORE, with_splices
    series = [np.arange(5000.0) + 10_000 * k for k in range(3)]   # each value says where it came from
    pool = SeriesPool(series, SMALL, span=[(0, 4000)] * 3)          # the final 1000 held out
    spliced = with_splices(pool, 0.25, 12, np.random.default_rng(0))
    assert len(spliced.series) == 6 and spliced.series[:3] == pool.series and len(pool.series) == 3
    for y, (change,), examples in zip(spliced.series[3:], spliced.changes[3:], spliced.examples[3:]):
        before, after = y[:change], y[change:]
        assert (before.size, after.size) == (SPLICE_BEFORE, SPLICE_AFTER)
        assert (np.diff(before) == 1).all() and (np.diff(after) == 1).all()   # a stretch of each...
        assert before[0] // 10_000 != after[0] // 10_000                     # ...of two series
        assert (y % 10_000 < 4000).all()                                     # nothing held out
        fresh = SeriesPool([y], SMALL).examples[0]
        assert all(np.array_equal(a, b) for a, b in zip(examples, fresh))
    assert len({y[0] for y in spliced.series[3:]}) == 3                      # drawn, not always the end
    # Long series do not drown the splices: a quarter of the tasks, half of them at the change.
    tasks = sample_tasks(spliced, 4000, 12, np.random.default_rng(1), delays=(8,), change_share=0.5)
    at_splices = tasks.series >= 3
    assert at_splices.mean() == pytest.approx(0.25, abs=0.03)
    at_change = tasks.time[at_splices] == SPLICE_BEFORE + 8
    assert at_change.mean() == pytest.approx(0.5, abs=0.06)
    assert with_splices(pool, 0.0, 12, np.random.default_rng(0)) is pool
    alone = SeriesPool(series[:1], SMALL)
    assert with_splices(alone, 0.4, 12, np.random.default_rng(0)) is alone   # nothing to splice it with
    # A longer query or support needs longer stretches: every splice still makes a task.
    wide = with_splices(pool, 0.4, 400, np.random.default_rng(0))
    assert wide.usable(400)[3:].all()


def test_meta_training_reads_the_recorded_detections_from_the_store(tmp_path: Path):
    from adaptd.engine.adapting import DriftEvent
    from adaptd.meta.sources import series_from_store
    from adaptd.records import Observation
    store = Store.open(f"sqlite:///{tmp_path / 'h.db'}")
    try:
        store.migrate()
        store.write([Observation(name, 3600.0 * (10 + k), float(k)) for name in ("a", "b") for k in range(50)])
        store.add_drift_events([DriftEvent("a", 3600.0 * 30, "adwin", 0.1), DriftEvent("a", 3600.0 * 55, "adwin", 0.2),
                                DriftEvent("b", 3600.0 * 5, "adwin", 0.3)])   # b's is older than its values
        series, detections = series_from_store(store, max_history=40)   # the newest 40: k = 10..49
    finally:
        store.close()
    assert sorted(series) == ["a", "b"] and series["a"][0] == 10.0 and len(series["a"]) == 40
    assert detections == {"a": [10, 35], "b": []}                  # the index of the value each came with


def test_meta_training_reads_at_most_max_series_series_the_same_ones_every_run(tmp_path: Path):
    """A store of many series is read in part, so a run's memory does not grow with the store."""
    from adaptd.meta.sources import READ_CHUNK, series_from_store
    from adaptd.records import Observation
    n = READ_CHUNK + 30   # more than one read
    store = Store.open(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        store.write([Observation(f"s{i:03d}", 3600.0 * k, float(i)) for i in range(n) for k in range(20)])
        every, _ = series_from_store(store, max_series=n, max_history=5)
        some, _ = series_from_store(store, max_series=40, max_history=5)
        again, _ = series_from_store(store, max_series=40, max_history=5)
    finally:
        store.close()
    assert len(every) == n and all(len(v) == 5 and v[0] == int(name[1:]) for name, v in every.items())
    assert len(some) == 40 and set(some) <= set(every) and list(some) == list(again)


def test_too_short_series_are_refused_with_what_is_needed():
    with pytest.raises(ValueError, match="long enough"):
        sample_tasks(SeriesPool([np.arange(30.0)], SMALL), 4, 12, np.random.default_rng(0))


def pools(seed: int = 0) -> tuple[SeriesPool, SeriesPool, list[np.ndarray]]:
    data = regime_series(24, 900, np.random.default_rng(seed))
    train = SeriesPool(data.values[:18], SMALL, changes=data.changes[:18])
    valid = SeriesPool(data.values[18:], SMALL, changes=data.changes[18:])
    return train, valid, data.values[:18]


@pytest.mark.slow
def test_meta_training_lowers_post_adaptation_error_on_held_out_series():
    train, valid, train_values = pools()
    valid_tasks = sample_tasks(valid, 256, 12, np.random.default_rng(5))
    start = pretrain(Initializer.random(SMALL.shape, 0, 0.05), pooled_examples(train_values, SMALL, 5000), 2, 128, 0)
    before = post_adaptation_loss(start, valid_tasks, SMALL.adapt_steps).mean()
    result = meta_train(start, train, MetaSettings("meta_sgd", iterations=150, meta_batch=16, outer_rate=3e-3,
                                                   query=12), SMALL)
    after = post_adaptation_loss(result.init, valid_tasks, SMALL.adapt_steps).mean()
    assert after < 0.97 * before, (before, after)
    assert result.init.kind == "meta" and result.init.meta["algorithm"] == "meta_sgd"
    assert all(MIN_STEP <= a <= MAX_STEP for a in result.init.step_sizes.values())
    # The step sizes are learnt, not left where they started (at the weights' outer rate they
    # could have moved by a factor e^0.45 at most).
    assert max(abs(math.log(a / 0.05)) for a in result.init.step_sizes.values()) > 0.7, result.init.step_sizes
    assert all(bool(torch.isfinite(v).all()) for v in result.init.params.values())


def test_cold_starts_stay_in_their_span_and_are_weighted_to_the_series_spread():
    """A cold start is a stretch of a series seen from a drawn start for a few values, its window
    padded as the engine pads it; its weight turns a loss in the young scale's units into one in
    units of the series' spread (what a user and bench coldstart see)."""
    from adaptd.meta.tasks import sample_cold_starts

    rng = np.random.default_rng(3)
    y = 50 + 10 * np.sin(np.arange(600) / 3.0) + rng.normal(0, 1, 600)
    other = y.copy()
    other[:100], other[400:] = -1e6, 1e6         # outside the span: must never be read
    young, weights = sample_cold_starts(SeriesPool([y], SMALL, span=[(100, 400)]), 64, 4, np.random.default_rng(0))
    same, same_weights = sample_cold_starts(SeriesPool([other], SMALL, span=[(100, 400)]), 64, 4,
                                            np.random.default_rng(0))
    assert young.window.shape == (64, 1, SMALL.window) and weights.shape == (64,)
    assert np.array_equal(weights, same_weights)
    assert all(torch.equal(a, b) for a, b in zip((young.window, young.target, young.mask),
                                                  (same.window, same.target, same.mask)))
    window, target, mask = (t.numpy()[:, 0] for t in (young.window, young.target, young.mask))
    assert float(mask.min()) == 0.0 < float(mask.max())          # some stretches end at the span's end
    # A young window is padded with its last value: zeros before the first observation.
    observed = (window != 0).sum(axis=1)     # a values: a - 1 changes before the last one
    assert observed.min() >= 4 - 1 and observed.max() <= SMALL.window - 2
    # Repeating the last value scores about the series' own spread once weighted; in the young
    # scale's units (a few steps' changes) it is many times that.
    naive = (target ** 2 * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)
    assert 0.3 < float((weights * naive).mean()) < 4.0, float((weights * naive).mean())
    assert float(naive.mean()) > 3 * float((weights * naive).mean())


def test_a_cold_start_on_a_spike_weighs_no_more_than_a_loss_in_young_units():
    """A mostly flat series with rare spikes: a young window that starts on a spike has a young
    scale far above the series' spread, and uncapped its weight would reach hundreds, so one
    such draw would steer a training step."""
    from adaptd.meta.tasks import MAX_YOUNG_WEIGHT, sample_cold_starts

    rng = np.random.default_rng(5)
    y = 10 + rng.normal(0, 0.01, 600)
    y[::40] += 100.0
    _, weights = sample_cold_starts(SeriesPool([y], SMALL, span=[(0, 600)]), 256, 4, np.random.default_rng(1))
    assert float(weights.max()) == MAX_YOUNG_WEIGHT == 1.0   # some draws were capped
    assert float(np.median(weights)) < 0.01                  # most see the flat stretch: tiny weights
    assert ((weights > 0.05) & (weights < 1)).any()          # and below the cap nothing changes


def test_a_cold_start_weight_makes_theta_forecast_young_series_better():
    """The engine forecasts a series from θ* as it is from `cold_start` observations on; meta-
    training with a cold-start weight learns that, on series it never saw."""
    from dataclasses import replace

    from adaptd.meta.tasks import sample_cold_starts

    train, valid, train_values = pools()
    young, weights = sample_cold_starts(valid, 256, 4, np.random.default_rng(6))
    start = pretrain(Initializer.random(SMALL.shape, 0, 0.05), pooled_examples(train_values, SMALL, 5000), 2, 128, 0)
    settings = MetaSettings("meta_sgd", iterations=60, meta_batch=16, outer_rate=3e-3, query=12,
                           cold_start_weight=0.0)
    cold = replace(SMALL, cold_start=4)

    def young_loss(init: Initializer) -> float:   # in units of each series' spread
        rows = {k: v.expand(256, *v.shape[1:]) for k, v in init.params.items()}
        with torch.no_grad():
            return float((torch.from_numpy(weights).float() * example_loss(rows, young)).mean())
    plain = meta_train(start, train, settings, cold).init
    weighted = meta_train(start, train, replace(settings, cold_start_weight=1.0), cold).init
    assert young_loss(weighted) < 0.99 * young_loss(plain), (young_loss(plain), young_loss(weighted))
    assert weighted.meta["cold_start_weight"] == 1.0 and "cold_start_weight" not in plain.meta
    # An engine that forecasts full windows only has no cold start to train for.
    full = meta_train(start, train, replace(settings, cold_start_weight=1.0, iterations=5), SMALL)
    assert full.history == meta_train(start, train, replace(settings, iterations=5), SMALL).history


def test_reptile_direction_is_its_step_per_unit_of_step_size():
    """Reptile moves θ toward the adapted weights, θ - φ_k = Σ α g; per unit of step size and
    step that is the mean clipped support gradient, a gradient's scale like Meta-SGD's and the
    cold-start term's. The raw step is k α times smaller: with the same weight, cold starts
    would swamp it (what made Reptile differ so from Meta-SGD with the cold-start term on)."""
    from adaptd.engine.learner import sgd_step, sgd_steps
    from adaptd.meta.train import _reptile_gradients, _rows

    train, _, train_values = pools()
    start = pretrain(Initializer.random(SMALL.shape, 0, 0.05), pooled_examples(train_values, SMALL, 2000), 1, 128, 0)
    tasks = sample_tasks(train, 16, 12, np.random.default_rng(0))
    alpha = {name: 1e-3 * (i + 1) for i, name in enumerate(start.params)}   # one per tensor
    k = SMALL.adapt_steps
    theta = {name: v.clone().requires_grad_(True) for name, v in start.params.items()}
    _reptile_gradients(theta, alpha, tasks, k, 1.0)
    adapted, _ = sgd_steps(_rows(start.params, len(tasks)), tasks.support, k, alpha, 1.0)
    _, _, first = sgd_step(_rows(start.params, len(tasks)), tasks.support, alpha, 1.0)
    for name, value in start.params.items():
        step = value - adapted[name].mean(dim=0, keepdim=True)
        assert torch.allclose(theta[name].grad * k * alpha[name], step, atol=1e-7), name
        # With small steps that is the support's clipped gradient at θ itself.
        gradient = first[name].mean(dim=0, keepdim=True)
        assert float((theta[name].grad - gradient).norm()) < 0.05 * float(gradient.norm()), name


@pytest.mark.parametrize("algorithm", ["meta_sgd", "reptile"])
def test_both_algorithms_train_deterministically_and_stay_finite(algorithm: str):
    train, _, _ = pools(3)
    start = Initializer.random(SMALL.shape, 0, 0.05)
    settings = MetaSettings(algorithm, iterations=5, meta_batch=8, outer_rate=1e-2, query=12, seed=4)
    a = meta_train(start, train, settings, SMALL)
    b = meta_train(start, train, settings, SMALL)
    assert a.history == b.history and len(a.history) == 5
    for name, value in a.init.params.items():
        assert torch.equal(value, b.init.params[name]) and bool(torch.isfinite(value).all())
        assert not torch.equal(value, start.params[name]) or name in ("head", "skip", "bias")
    if algorithm == "reptile":   # Reptile learns no step sizes
        assert a.init.step_sizes == start.step_sizes


def write_m4(path: Path, values: list[np.ndarray]) -> Path:
    width = max(len(v) for v in values)
    lines = [",".join(f'"V{i + 1}"' for i in range(width + 1))]
    lines += [",".join([f'"S{k}"'] + [f'"{x:.4f}"' for x in v] + ['""'] * (width - len(v)))
              for k, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config_file(directory: Path, iterations: int = 8) -> Path:
    return write_config(directory, sections={"model": MODEL, "adapt": ADAPT,
                                             "meta": {"iterations": iterations, "meta_batch": 8, "query": 12,
                                                      "validation_tasks": 64}})


def test_runs_are_versioned_and_promoted_only_when_they_beat_the_current_one(tmp_path: Path):
    settings = load_config(str(config_file(tmp_path)))
    series = {f"s{k}": v for k, v in enumerate(regime_series(10, 700, np.random.default_rng(0)).values)}
    store = Store.open(settings.store.url)
    try:
        first = run(settings, store, series, iterations=6)
        second = run(settings, store, series, iterations=3, seed=1)
        third = run(settings, store, series, iterations=3, promote=False)
        listed = {row["version"]: row for row in store.initializer_list()}
    finally:
        store.close()
    assert listed[1]["algorithm"] == "pretrain" and listed[1]["promoted"]      # the warm start is kept too
    assert first.promoted and first.version == 2 and "pretrained (new)" in first.baselines
    incumbent = second.baselines[f"meta v{first.version}"]
    assert second.promoted == (second.val_score < incumbent)                   # only if it beats v2
    assert listed[second.version]["promoted"] == second.promoted
    assert not third.promoted and not listed[third.version]["promoted"]
    assert listed[first.version]["training"]["series"] == 10
    assert math.isfinite(listed[first.version]["val_score"])


def test_promotion_scores_cold_starts_as_well_as_drifts(tmp_path: Path):
    """What promotion compares is what training optimises: the post-drift validation MSE plus
    `cold_start_weight` times θ*'s MSE on validation cold starts; an initializer that adapts
    well but forecasts new series badly pays for it. Without cold start (`[model] cold_start`
    0) only the drifts count."""
    from adaptd.engine.factory import decode_initializer, online_config, promoted_by_kind
    from adaptd.meta.job import split
    from adaptd.meta.tasks import sample_cold_starts, with_splices
    from adaptd.meta.train import cold_start_loss, validation_score

    series = {f"s{k}": v for k, v in enumerate(regime_series(10, 700, np.random.default_rng(0)).values)}

    def meta_run(name: str, model: dict, meta: dict):  # type: ignore[no-untyped-def]
        (tmp_path / name).mkdir()
        settings = load_config(str(write_config(tmp_path / name, sections={
            "model": model, "adapt": ADAPT,
            "meta": {"iterations": 3, "meta_batch": 8, "query": 12, "validation_tasks": 64, **meta}})))
        store = Store.open(settings.store.url)
        try:
            report = run(settings, store, series, iterations=3)
            listed = {row["version"]: row for row in store.initializer_list()}
            pretrained = promoted_by_kind(store, online_config(settings))["pretrained"]
        finally:
            store.close()
        return settings, report, listed, pretrained

    settings, report, listed, pretrained = meta_run("cold", MODEL, {"cold_start_weight": 3.0})
    parts = report.parts
    assert set(parts) == {"post_adaptation", "cold_start"} and parts["cold_start"] > 0
    assert report.val_score == pytest.approx(parts["post_adaptation"] + 3.0 * parts["cold_start"])
    assert listed[report.version]["training"]["validation_parts"] == pytest.approx(parts)
    # The new one and those it must beat are scored on the same validation rows: by hand.
    config = online_config(settings)
    _, valid = split(series, config, settings.meta.validation_series, 12, 0)
    drift_pool = with_splices(valid, settings.meta.splices, 12, np.random.default_rng(3))   # cold starts: unspliced
    tasks = sample_tasks(drift_pool, 64, 12, np.random.default_rng(1))
    young = sample_cold_starts(valid, 64, config.serving, np.random.default_rng(2))
    new = decode_initializer(report.payload, config)
    assert validation_score(new, tasks, config.adapt_steps, config.clip) == pytest.approx(parts["post_adaptation"])
    assert cold_start_loss(new, *young) == pytest.approx(parts["cold_start"])
    drifts = validation_score(pretrained, tasks, config.adapt_steps, config.clip)
    cold = cold_start_loss(pretrained, *young)
    assert report.baselines["pretrained (new)"] == pytest.approx(drifts + 3.0 * cold, rel=1e-5)
    assert cold > 0.01 * drifts
    # No cold start, no cold-start part.
    _, report, _, _ = meta_run("off", {**MODEL, "cold_start": 0}, {})
    assert set(report.parts) == {"post_adaptation"} and report.val_score == report.parts["post_adaptation"]


def adapts_well_forecasts_young_badly(init: Initializer) -> Initializer:
    """`init` with its output bias off by 0.2 and big step sizes for the head and that bias:
    the adaptation's k steps repair the bias (and fit the head better than `init`'s own steps),
    θ* as is, which forecasts a young series, does not."""
    params = {k: v.clone() for k, v in init.params.items()}
    params["bias"] += 0.2
    return Initializer(params, {**init.step_sizes, "head": 0.2, "bias": 1.0}, "meta")


@pytest.mark.parametrize("cold_start_weight", [0.0, 10.0])
def test_bench_and_replay_keep_a_meta_trained_initializer_only_if_it_wins_the_promotion_score(
        monkeypatch, cold_start_weight: float):
    """The accuracy bench (and replay, where the packaged θ* does not fit the model shape, as
    here) choose between the meta-trained θ* and its warm start on the daemon's promotion
    score: one that adapts better after drifts but forecasts new series worse loses when cold
    starts weigh enough."""
    from dataclasses import replace

    import adaptd.meta.fit as fit
    from adaptd.config import MetaSettings as MetaConfig
    from adaptd.meta.train import MetaResult

    trained: list[Initializer] = []

    def fake_meta_train(start, *args, **kwargs):  # type: ignore[no-untyped-def]
        trained.append(adapts_well_forecasts_young_badly(start))
        return MetaResult(trained[-1])

    monkeypatch.setattr(fit, "meta_train", fake_meta_train)
    warmup = list(regime_series(10, 700, np.random.default_rng(0)).values)
    # Ordinary drift tasks only: spliced ones would widen its lead after drifts past what a
    # 1.02x worse cold start costs, and this is about the rule, not the margin.
    meta = MetaConfig(validation_tasks=64, query=12, cold_start_weight=cold_start_weight, splices=0.0)
    chosen = fit.initializer_for("meta", replace(SMALL, cold_start=4), warmup, meta)
    parts = chosen.meta["validation_parts"]
    new, old = parts["meta-trained"], parts["warm start"]
    assert new["post_adaptation"] < old["post_adaptation"]      # it adapts better after drifts
    scores = chosen.meta["validation"]
    if cold_start_weight == 0:   # no cold-start part at all: drifts decide
        assert set(new) == {"post_adaptation"} and chosen is trained[0]
    else:
        assert new["cold_start"] > 1.02 * old["cold_start"]      # and forecasts young series worse
        assert scores["meta-trained"] == pytest.approx(new["post_adaptation"] + 10 * new["cold_start"])
        assert scores["meta-trained"] > scores["warm start"] and chosen is not trained[0]
        assert chosen.kind == "pretrained"


def test_a_run_that_wins_on_drifts_but_loses_on_cold_starts_is_not_promoted(tmp_path: Path, monkeypatch):
    import adaptd.meta.job as job
    from adaptd.meta.train import MetaResult

    def as_meta(start, *args, **kwargs):  # type: ignore[no-untyped-def]
        return MetaResult(Initializer(start.params, start.step_sizes, "meta"))

    def worse_for_young(start, *args, **kwargs):  # type: ignore[no-untyped-def]
        return MetaResult(adapts_well_forecasts_young_badly(start))

    settings = load_config(str(write_config(tmp_path, sections={
        "model": MODEL, "adapt": ADAPT,
        "meta": {"meta_batch": 8, "query": 12, "validation_tasks": 64, "cold_start_weight": 10.0,
                 "splices": 0.0}})))   # ordinary drift tasks: as in the test above
    series = {f"s{k}": v for k, v in enumerate(regime_series(10, 700, np.random.default_rng(0)).values)}
    store = Store.open(settings.store.url)
    try:
        monkeypatch.setattr(job, "meta_train", as_meta)
        incumbent = run(settings, store, series)          # the pretrained weights, promoted as meta
        monkeypatch.setattr(job, "meta_train", worse_for_young)
        challenger = run(settings, store, series)
    finally:
        store.close()
    assert incumbent.promoted
    new, old = challenger.parts, incumbent.parts
    assert new["post_adaptation"] < old["post_adaptation"] and new["cold_start"] > 1.02 * old["cold_start"]
    assert challenger.baselines[f"meta v{incumbent.version}"] == pytest.approx(incumbent.val_score)
    assert challenger.val_score > incumbent.val_score and not challenger.promoted


@pytest.mark.parametrize("score, incumbent, wins", [
    (1.0, None, True), (1.0, 2.0, True), (2.0, 1.0, False), (1.0, 1.0, False),   # a tie keeps the incumbent
    (1.0, math.nan, True), (1.0, math.inf, True), (math.nan, 2.0, False), (math.nan, None, False),
    (math.inf, None, False), (math.nan, math.nan, False)])
def test_a_score_that_is_not_a_number_never_wins_nor_blocks(score: float, incumbent, wins: bool):
    from adaptd.meta.validation import beats

    assert beats(score, incumbent) is wins


def test_meta_train_command_on_an_m4_file_then_list(tmp_path: Path):
    config = config_file(tmp_path)
    data = write_m4(tmp_path / "m4.csv", regime_series(8, 600, np.random.default_rng(2)).values)
    done = run_cli("meta-train", "--m4", str(data), "--json", "--no-progress", config=config, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["promoted"] and report["series"] == 8 and report["algorithm"] == "meta_sgd"
    assert report["val_score"] == pytest.approx(report["val_parts"]["post_adaptation"]
                                                + report["val_parts"]["cold_start"])   # weight 1
    listing = run_cli("initializers", config=config)
    assert listing.returncode == 0 and "meta_sgd" in listing.stdout and "pretrain" in listing.stdout
    listed = json.loads(run_cli("initializers", "--json", config=config).stdout)
    assert listed[0]["version"] == report["version"]
    # Nothing meta to start from yet (this small model shape does not fit the packaged one).
    assert listed[0]["training"]["warm_start"] == "pretrained (new)"
    again = run_cli("meta-train", "--m4", str(data), "--no-progress", "--from-pretrained",
                    "--iterations", "2", config=config, timeout=300)
    assert again.returncode == 0, again.stderr
    assert re.search(r"validation score [0-9.]+ = post-adaptation MSE [0-9.]+ \+ 1 x cold-start MSE", again.stdout), \
        again.stdout
    listed = json.loads(run_cli("initializers", "--json", config=config).stdout)
    assert listed[0]["training"]["warm_start"] == f"pretrained v{listed[-1]['version']}"   # not the meta one


def test_from_pretrained_the_initializer_depends_on_the_data_and_seed_alone(tmp_path: Path):
    """How the packaged file is rebuilt: whatever meta initializer the store already holds."""
    from dataclasses import replace

    from adaptd.engine.factory import encode_initializer
    from adaptd.engine.snapshot import FORMAT_VERSION

    settings = load_config(str(config_file(tmp_path, iterations=3)))
    config = online_config(settings)
    series = {f"s{k}": v for k, v in enumerate(regime_series(8, 600, np.random.default_rng(4)).values)}
    payloads = {}
    for name, earlier in (("empty", None), ("with meta", Initializer.random(config.shape, 9, 0.05))):
        store = Store.open(f"sqlite:///{tmp_path}/{name}.db")
        try:
            if earlier is not None:
                store.save_initializer("meta_sgd", FORMAT_VERSION, encode_initializer(replace(earlier, kind="meta"),
                                                                                      config), {}, 0.1, True)
            payloads[name] = run(settings, store, series, seed=3, from_pretrained=True).payload
            if earlier is not None:   # without the option a stored meta initializer is the start
                payloads["warm"] = run(settings, store, series, seed=3).payload
        finally:
            store.close()
    assert payloads["empty"] == payloads["with meta"]
    assert payloads["warm"] != payloads["with meta"]


def test_reading_commands_on_a_missing_store_say_so_and_create_nothing(tmp_path: Path):
    config = config_file(tmp_path)
    for argv in (("initializers",), ("meta-train", "--no-progress")):
        done = run_cli(*argv, config=config)
        assert done.returncode == 2 and "no store at" in done.stderr and "Traceback" not in done.stderr
    assert not any(tmp_path.rglob("*.db"))


@pytest.mark.parametrize("argv, expected", [
    (("--iterations", "0"), "--iterations 0: expected at least 1"),
    (("--export", "/nonexistent/dir/x.adi"), "--export /nonexistent/dir/x.adi: not a file in a writable folder"),
    (("--nice", "-5"), "--nice -5: expected an integer from 0 to 19"),
    (("--nice", "20"), "--nice 20: expected an integer from 0 to 19"),
])
def test_meta_train_refuses_bad_arguments_before_training(tmp_path: Path, argv, expected):
    config = config_file(tmp_path)
    data = write_m4(tmp_path / "m4.csv", regime_series(4, 300, np.random.default_rng(0)).values)
    done = run_cli("meta-train", "--m4", str(data), "--no-progress", *argv, config=config)
    assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr
    assert not any(tmp_path.rglob("*.db"))                         # refused before anything ran


def test_meta_train_without_enough_history_says_what_it_needs(tmp_path: Path):
    config = config_file(tmp_path)
    data = write_m4(tmp_path / "m4.csv", [np.arange(40.0), np.arange(30.0)])
    done = run_cli("meta-train", "--m4", str(data), "--no-progress", config=config)
    assert done.returncode == 3
    assert "long enough" in done.stderr and "2 series found" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.integration
def test_the_daemon_picks_up_a_newly_promoted_initializer_without_restart():
    directory = short_tempdir()
    config = write_config(directory, metrics=True, naive=False, sections={
        "model": MODEL, "adapt": ADAPT, "server": {"forecast_wait": 60.0},   # the model, not the fallback
        "meta": {"refresh_interval": 1.0, "iterations": 4, "meta_batch": 8, "query": 12, "validation_tasks": 32}})
    d = DaemonProcess(config)
    try:
        d.start(timeout=60)
        started = time.time()
        status = run_cli("status", config=config).stdout      # the daemon's own runs: the first a day on
        assert re.search(r"^meta-training:\s+no run yet; next in 23h5\dmin$", status, re.M), status
        assert re.search(r"^engine:\s+online \(series restart from the random initializer; 0 drifts detected",
                         status, re.M), status
        assert re.search(r"^learning backlog:\s+\d+ records$", status, re.M), status
        schedule = json.loads(run_cli("status", "--json", config=config).stdout)["meta_training"]
        assert schedule["here"] and schedule["running_since"] is None and schedule["last_run"] is None
        assert started - 60 < schedule["next_run"] - 86400 <= started
        d.ingest(hourly("a", 40))
        assert d.forecast("a", 2)["model"]["init"] == "random"
        data = write_m4(directory / "m4.csv", regime_series(8, 600, np.random.default_rng(2)).values)
        done = run_cli("meta-train", "--m4", str(data), "--json", "--no-progress", "--progress-lines",
                       config=config, timeout=300)
        *progress, report = [json.loads(line) for line in done.stdout.splitlines()]
        assert [p["progress"]["iteration"] for p in progress] == [1, 2, 3, 4]       # one line per iteration
        assert all(p["progress"]["iterations"] == 4 and p["progress"]["eta_s"] >= 0 for p in progress)
        version = report["version"]
        deadline = time.monotonic() + 30
        url = f"http://{d.settings.metrics.listen}/metrics"
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            if f'adaptd_initializer_info{{kind="meta",version="{version}"}} 1.0' in text:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"initializer {version} not picked up:\n{d.stderr}")
        assert 'kind="random"' not in text.split("adaptd_initializer_info")[2]   # the old one is gone
        assert d.forecast("a", 2)["model"]["init"] == "meta"
        assert "now restart from meta initializer" in d.stderr
        # A restart keeps the schedule: the next run is due a day after that meta-training, not after the restart.
        trained = next(row["created_at"] for row in json.loads(run_cli("initializers", "--json", config=config).stdout)
                       if row["version"] == version)
        assert d.stop()[0] == 0
        d.start(timeout=60)
        schedule = json.loads(run_cli("status", "--json", config=config).stdout)["meta_training"]
        assert schedule["next_run"] == pytest.approx(trained + 86400, abs=1e-3)
    finally:
        d.kill()
        shutil.rmtree(directory, ignore_errors=True)


def _store_hourly(store: Store, values: np.ndarray) -> None:
    """Series s0, s1, ... of `values`, one observation an hour."""
    from adaptd.records import Observation
    store.write([Observation(f"s{k}", 3600.0 * t, float(v)) for k, y in enumerate(values) for t, v in enumerate(y)])


@pytest.mark.integration
def test_the_scheduled_retrain_learns_from_the_store_at_its_recorded_detections(tmp_path: Path, monkeypatch):
    """The daemon's job (`InitializerJobs.retrain`, what APScheduler calls) runs the real
    `adaptd meta-train` on the store's history, at `[meta] nice` below the daemon's priority,
    counts the outcome and switches the engine."""
    from adaptd.engine.adapting import DriftEvent
    from adaptd.engine.factory import build_engine, stored_initializer
    from adaptd.meta import schedule
    from adaptd.meta.schedule import InitializerJobs
    from adaptd.metrics import Metrics
    config = write_config(tmp_path, naive=False, sections={
        "model": MODEL, "adapt": ADAPT,
        "meta": {"iterations": 6, "meta_batch": 8, "query": 12, "validation_tasks": 32, "nice": 7}})
    settings = load_config(str(config))
    data = regime_series(8, 500, np.random.default_rng(5))
    store = Store.open(settings.store.url)
    try:
        store.migrate()
        _store_hourly(store, data.values)
        store.add_drift_events([DriftEvent(f"s{k}", 3600.0 * (c + 20), "adwin", 0.1)
                                for k, cuts in enumerate(data.changes) for c in cuts if c + 20 < 500])
        engine = build_engine(settings, stored_initializer(settings, store, online_config(settings)))
        metrics = Metrics()
        jobs = InitializerJobs(settings, store, engine, metrics)
        read = []   # every progress line the daemon read from the trainer
        monkeypatch.setattr(schedule, "_progress", lambda line, parse=schedule._progress: read.append(parse(line))
                            or read[-1])
        training = threading.Thread(target=jobs.retrain)
        training.start()
        niceness, running = set(), []
        while training.is_alive():   # the trainer's niceness, read while it trains
            proc = jobs._proc
            running.append(jobs.running_since)
            if proc is not None:
                try:
                    niceness.add(int(Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[16]))
                except (OSError, IndexError):
                    pass        # between runs, or already gone
            time.sleep(0.05)
        training.join()
        newest = max(store.initializer_list(), key=lambda row: row["version"])
        restarted, bystander = Metrics(), Metrics()   # a daemon started after the run; one that does not train
        remembered = InitializerJobs(settings, store, engine, restarted).last_run
        InitializerJobs(settings, store, engine, bystander, trains=False)
    finally:
        store.close()
    outcomes = {o: metrics.registry.get_sample_value("adaptd_meta_training_runs_total", {"outcome": o})
                for o in ("promoted", "not_promoted", "failed", "not_enough_data")}
    assert outcomes["promoted"] == 1.0, outcomes              # the first meta version of this model shape
    assert newest["algorithm"] == "meta_sgd" and newest["promoted"]
    assert newest["training"]["series"] == 8
    assert newest["training"]["detections"] == sum(c + 20 < 500 for cuts in data.changes for c in cuts) > 0
    assert engine.init.version == newest["version"]           # picked up without a restart
    assert min(os.getpriority(os.PRIO_PROCESS, 0) + 7, 19) in niceness, niceness
    # What `adaptd status` shows: the run while it ran, then how it ended.
    assert any(since is not None for since in running) and jobs.running_since is None
    assert [p["iteration"] for p in read if p is not None] == [1, 2, 3, 4, 5, 6]
    assert all(p["iterations"] == 6 for p in read if p is not None) and jobs.progress is None
    assert jobs.last_run is not None and time.time() - 60 < jobs.last_run["finished"] <= time.time()
    assert (jobs.last_run["outcome"], jobs.last_run["version"]) == ("promoted", newest["version"])
    assert remembered == jobs.last_run                        # by the store, for the next start
    # What the alerts read (AdaptdMetaTrainingFailing, ...Overdue), also after a restart; a
    # cluster member that does not train leaves them to the one that does.
    for registry, ended in ((metrics.registry, True), (restarted.registry, True), (bystander.registry, False)):
        assert registry.get_sample_value("adaptd_meta_training_last_end_timestamp_seconds") == (
            jobs.last_run["finished"] if ended else 0.0)
        assert {o: registry.get_sample_value("adaptd_meta_training_last_outcome", {"outcome": o})
                for o in ("promoted", "not_promoted", "failed", "not_enough_data")} == {
            "promoted": float(ended), "not_promoted": 0.0, "failed": 0.0, "not_enough_data": 0.0}


@pytest.mark.integration
def test_a_run_stopped_at_shutdown_is_kept_as_stopped_and_not_counted(tmp_path: Path):
    """Shutdown ends the trainer mid-run: nothing is stored but the run, as `stopped`; the
    outcome counter (what the alert reads) does not count it as failed."""
    from adaptd.engine.factory import build_engine, stored_initializer
    from adaptd.meta.schedule import InitializerJobs
    from adaptd.metrics import Metrics
    config = write_config(tmp_path, naive=False, sections={
        "model": MODEL, "adapt": ADAPT, "meta": {"iterations": 100_000, "meta_batch": 8, "query": 12}})
    settings = load_config(str(config))
    data = regime_series(8, 500, np.random.default_rng(5))
    store = Store.open(settings.store.url)
    try:
        store.migrate()
        _store_hourly(store, data.values)
        engine = build_engine(settings, stored_initializer(settings, store, online_config(settings)))
        metrics = Metrics()
        jobs = InitializerJobs(settings, store, engine, metrics)
        training = threading.Thread(target=jobs.retrain)
        training.start()
        deadline = time.monotonic() + 120
        while jobs.progress is None and training.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert jobs.progress is not None, "the trainer never reported an iteration"
        [running] = store.meta_runs(5)
        assert running["outcome"] is None and running["started_at"] == jobs.running_since
        trainer = jobs._proc
        # Its own session: a Ctrl-C at the daemon's terminal reaches the daemon, whose stop() ends it.
        assert trainer is not None and os.getsid(trainer.pid) == trainer.pid != os.getsid(0)
        jobs.stop()
        training.join(timeout=60)
        assert not training.is_alive() and trainer is not None and trainer.poll() is not None
        [stopped] = store.meta_runs(5)
        assert [row["algorithm"] for row in store.initializer_list()] == ["pretrain"]   # (its warm start)
    finally:
        store.close()
    assert stopped["outcome"] == "stopped" and stopped["finished_at"] >= stopped["started_at"]
    assert jobs.last_run["outcome"] == "stopped" and jobs.running_since is None
    counted = {o: metrics.registry.get_sample_value("adaptd_meta_training_runs_total", {"outcome": o})
               for o in ("promoted", "not_promoted", "failed", "not_enough_data")}
    assert set(counted.values()) == {0.0}, counted
    assert metrics.value("adaptd_meta_training_last_end_timestamp_seconds") == 0.0   # not an end for the alerts
    assert metrics.value("adaptd_meta_training_last_outcome", {"outcome": "failed"}) == 0.0


def test_a_run_that_finished_as_shutdown_came_counts_as_finished(tmp_path: Path, monkeypatch):
    """stop() after the trainer stored and promoted its result: the run is what it was, not
    `stopped` (which would also put off the next one); and no run starts after stop()."""
    import subprocess

    from adaptd.meta.schedule import InitializerJobs
    from adaptd.metrics import Metrics
    settings = load_config(str(write_config(tmp_path, naive=False)))
    store = Store.open(settings.store.url)
    try:
        store.migrate()
        jobs = InitializerJobs(settings, store, None, Metrics())   # type: ignore[arg-type]
        report = {"version": 4, "promoted": True, "val_score": 1.0}

        def finished_then_stopped(argv):
            jobs.stop()
            return subprocess.CompletedProcess(argv, 0, json.dumps(report) + "\n", "")

        monkeypatch.setattr(jobs, "_run", finished_then_stopped)
        jobs.retrain()
        assert (jobs.last_run["outcome"], jobs.last_run["version"]) == ("promoted", 4)
        jobs.retrain()                                   # due after stop(): nothing starts
        assert [(r["outcome"], r["version"]) for r in store.meta_runs(5)] == [("promoted", 4)]
    finally:
        store.close()


def test_a_run_end_the_store_did_not_take_is_written_at_the_next_refresh(tmp_path: Path, monkeypatch):
    """Left without an outcome, the run would count as cut off at the next start."""
    import subprocess

    import sqlalchemy as sa

    from adaptd.meta.schedule import InitializerJobs
    from adaptd.metrics import Metrics
    settings = load_config(str(write_config(tmp_path, naive=False)))
    store = Store.open(settings.store.url)
    try:
        store.migrate()
        jobs = InitializerJobs(settings, store, None, Metrics())   # type: ignore[arg-type]
        monkeypatch.setattr(jobs, "_run", lambda argv: subprocess.CompletedProcess(
            argv, 3, "", "adaptd meta-train: no series is long enough\n"))
        real = Store.finish_meta_run

        def locked(*args):   # the database is busy once, as the run ends
            monkeypatch.setattr(store, "finish_meta_run", lambda *a: real(store, *a))
            raise sa.exc.OperationalError("UPDATE", {}, Exception("database is locked"))

        monkeypatch.setattr(store, "finish_meta_run", locked)
        jobs.retrain()
        assert store.meta_runs(1)[0]["outcome"] is None and jobs.last_run["outcome"] == "not_enough_data"
        jobs.refresh()
        [run] = store.meta_runs(1)
        assert (run["outcome"], run["detail"]) == ("not_enough_data", "adaptd meta-train: no series is long enough")
    finally:
        store.close()


def test_the_schedule_counts_from_the_newest_meta_training_in_the_store(tmp_path: Path):
    """A daemon restarted more often than `retrain_interval` would never meta-train if the
    interval counted from each start."""
    from adaptd.meta.schedule import OVERDUE_DELAY, InitializerJobs
    from adaptd.metrics import Metrics
    from adaptd.records import Observation
    from adaptd.schema import initializers, series_table
    settings = load_config(str(write_config(tmp_path, naive=False)))
    day, now = settings.meta.retrain_interval, 1.9e9
    store = Store.open(settings.store.url)
    try:
        store.migrate()
        jobs = InitializerJobs(settings, store, None, Metrics())   # type: ignore[arg-type]  (no engine needed)

        def stored(algorithm: str, at: float) -> None:
            version = store.save_initializer(algorithm, 1, b"weights", {}, None, False)
            with store.engine.begin() as conn:
                conn.execute(initializers.update().where(initializers.c.version == version).values(created_at=at))

        assert jobs.first_run(now) == now + day                  # no data yet: a day after start
        store.write([Observation("first", 0.0, 1.0)])
        with store.engine.begin() as conn:
            conn.execute(series_table.update().values(created_at=now - 7200))
        assert jobs.first_run(now) == now - 7200 + day            # never meta-trained: a day after data came
        stored("pretrain", now - 3 * day)                         # a guard: a pretrained one is no meta-training
        assert jobs.first_run(now) == now - 7200 + day
        stored("meta_sgd", now - 3600)
        assert jobs.first_run(now) == now - 3600 + day            # a day after it
        stored("reptile", now - 600)
        assert jobs.first_run(now) == now - 600 + day             # the newest counts
        assert jobs.first_run(now + 2 * day) == now + 2 * day + OVERDUE_DELAY   # overdue: soon after start
        stored("meta_sgd", now + 7 * day)                         # stored by a clock that was ahead
        assert jobs.first_run(now) == now + day
    finally:
        store.close()


def test_runs_that_stored_nothing_move_the_schedule_and_cut_off_ones_back_off(tmp_path: Path):
    """A run that found too little history (or failed) is not retried at every restart; one a
    restart cut off is retried soon, but each further cut-off run in a row doubles the wait."""
    from adaptd.meta.schedule import OVERDUE_DELAY, InitializerJobs
    from adaptd.metrics import Metrics
    from adaptd.records import Observation
    from adaptd.schema import series_table
    settings = load_config(str(write_config(tmp_path, naive=False)))
    day, now = settings.meta.retrain_interval, 1.9e9
    store = Store.open(settings.store.url)
    try:
        store.migrate()
        store.write([Observation("first", 0.0, 1.0)])
        with store.engine.begin() as conn:
            conn.execute(series_table.update().values(created_at=now - 3 * day))

        def jobs() -> InitializerJobs:   # what a daemon (re)started now sees
            return InitializerJobs(settings, store, None, Metrics())   # type: ignore[arg-type]

        assert jobs().first_run(now) == now + OVERDUE_DELAY        # overdue since the first series
        skipped = store.start_meta_run(now - 3600)
        watcher = InitializerJobs(settings, store, None, Metrics(), trains=False)   # type: ignore[arg-type]
        assert store.meta_runs(1)[0]["outcome"] is None             # another member's run is left going
        store.finish_meta_run(skipped, "not_enough_data", now - 3590, detail="too short")
        assert watcher.last_run is None
        watcher.refresh()                                           # it learns how the trainer's run ended
        assert watcher.last_run["outcome"] == "not_enough_data"
        assert jobs().first_run(now) == now - 3590 + day            # not again at this restart
        for cut_off in range(1, 4):                                 # a day on, each start is cut off by a restart
            store.start_meta_run(now + day + cut_off)
            assert jobs().first_run(now + day + 10) == now + day + 10 + OVERDUE_DELAY * 2 ** cut_off
        assert [r["outcome"] for r in store.meta_runs(4)] == ["interrupted"] * 3 + ["not_enough_data"]
        for more in range(6):   # 9 in a row: 300 s doubled 9 times is more than a day
            store.start_meta_run(now + day + 20 + more)
        store.close_unfinished_meta_runs()
        assert jobs().first_run(now + 30 * day) == now + 31 * day   # at most one interval
        failed = store.start_meta_run(now + 30 * day)
        store.finish_meta_run(failed, "failed", now + 30 * day + 5, detail="boom")
        assert jobs().first_run(now + 30 * day + 60) == now + 31 * day + 5
        assert jobs().last_run == {"outcome": "failed", "started": now + 30 * day, "finished": now + 30 * day + 5,
                                   "seconds": 5.0, "version": None, "detail": "boom"}
    finally:
        store.close()


@pytest.mark.integration
def test_a_scheduled_run_that_cannot_train_says_why(tmp_path: Path, caplog):
    """Too little history, then no store file at all: each run is counted with its outcome, and
    the trainer's own reason (its stderr) reaches the daemon's log."""
    import logging

    from adaptd.engine.factory import build_engine, stored_initializer
    from adaptd.meta.schedule import InitializerJobs
    from adaptd.metrics import Metrics
    from adaptd.records import Observation
    config = write_config(tmp_path, naive=False, sections={"model": MODEL, "adapt": ADAPT})
    settings = load_config(str(config))
    store = Store.open(settings.store.url)
    try:
        store.migrate()
        store.write([Observation("short", 3600.0 * t, float(t % 5)) for t in range(30)])
        engine = build_engine(settings, stored_initializer(settings, store, online_config(settings)))
        metrics = Metrics()
        jobs = InitializerJobs(settings, store, engine, metrics)
        with caplog.at_level(logging.INFO, logger="adaptd.meta.schedule"):
            jobs.retrain()
            assert jobs.last_run["outcome"] == "not_enough_data" and jobs.last_run["version"] is None
            assert "meta-training skipped" in caplog.text and "long enough" in caplog.text
            for leftover in tmp_path.rglob("*.db*"):
                leftover.unlink()
            jobs.retrain()
        assert jobs.last_run["outcome"] == "failed" and jobs.running_since is None
        assert "meta-training failed (exit 2)" in caplog.text and "no store at" in caplog.text
        assert "no store at" in jobs.last_run["detail"]
        runs = store.meta_runs(5)   # (this store's pooled connection still has the unlinked file open)
    finally:
        store.close()
    assert [r["outcome"] for r in runs] == ["failed", "not_enough_data"]
    assert "long enough" in runs[1]["detail"] and runs[1]["finished_at"] >= runs[1]["started_at"]
    counted = {o: metrics.registry.get_sample_value("adaptd_meta_training_runs_total", {"outcome": o})
               for o in ("promoted", "not_promoted", "failed", "not_enough_data")}
    assert counted == {"promoted": 0.0, "not_promoted": 0.0, "failed": 1.0, "not_enough_data": 1.0}


@pytest.mark.parametrize("state, shown", [
    ({"interval_s": 86400, "here": True, "running_since": None, "last_run": None, "next_run": 1e6 + 86399},
     "no run yet; next in 23h59min"),
    ({"interval_s": 86400, "here": True, "running_since": 1e6 - 192, "last_run": None, "next_run": 1e6 + 86000},
     "running for 3min12s"),
    ({"interval_s": 86400, "here": True, "running_since": None, "next_run": 1e6 + 75600,
      "last_run": {"outcome": "not_promoted", "finished": 1e6 - 7300, "seconds": 250.3, "version": 7}},
     "last run not promoted (version 7, took 4min10s) 2h1min ago; next in 21h"),
    ({"interval_s": 86400, "here": True, "running_since": 1e6 - 130, "last_run": None, "next_run": 1e6 + 86000,
      "progress": {"iteration": 120, "iterations": 300, "eta_s": 200.0, "at": 1e6 - 10}},   # read 10 s ago
     "running for 2min10s (iteration 120 of 300, about 3min10s left)"),
    ({"interval_s": 86400, "here": True, "running_since": 1e6 - 300, "last_run": None, "next_run": 1e6 + 86000,
      "progress": {"iteration": 300, "iterations": 300, "eta_s": 0.0, "at": 1e6 - 20}},
     "running for 5min (all 300 iterations done: validating)"),
    ({"interval_s": 86400, "here": True, "running_since": 1e6 - 5, "next_run": 1e6 + 86395,
      "last_run": {"outcome": "failed", "finished": 1e6 - 86405, "seconds": 3.2, "version": None}},
     "running for 5s; last run failed (took 3s) 1d ago"),
    ({"interval_s": 86400, "here": True, "running_since": None, "next_run": 1e6 + 300,
      "last_run": {"outcome": "interrupted", "started": 1e6 - 3600, "finished": None, "seconds": None,
                   "version": None, "detail": None}},
     "last run cut off when its daemon stopped (started 1h ago); next in 5min"),
    ({"interval_s": 86400, "here": True, "running_since": None, "next_run": 1e6 + 600,
      "last_run": {"outcome": "stopped", "started": 1e6 - 700, "finished": 1e6 - 100, "seconds": 600.0,
                   "version": None, "detail": None}},
     "last run stopped at shutdown (took 10min) 1min40s ago; next in 10min"),
    ({"interval_s": 86400, "here": False, "running_since": None, "next_run": None,
      "last_run": {"outcome": "not_enough_data", "started": 1e6 - 7205, "finished": 1e6 - 7200, "seconds": 5.0,
                   "version": None, "detail": "no series is long enough for training tasks"}},
     "last run not enough data (took 5s) 2h ago: no series is long enough for training tasks; "
     "cluster member 0 runs it"),
    ({"interval_s": 0, "here": False, "running_since": None, "last_run": None, "next_run": None},
     "off ([meta] retrain_interval = 0)"),
    ({"interval_s": 86400, "here": False, "running_since": None, "last_run": None, "next_run": None},
     "cluster member 0 runs it"),
])
def test_status_says_what_the_scheduled_meta_training_is_doing(state, shown):
    from adaptd.render import meta_training_text
    assert meta_training_text(state, now=1e6) == shown


@pytest.mark.parametrize("line", [
    '{"progress": {}}\n', '{"progress": {"iteration": 1, "iterations": 6}}\n',
    '{"progress": {"iteration": 1, "iterations": 6, "eta_s": "soon"}}\n',
    '{"progress": {"iteration": 1, "iterations": 6, "eta_s": Infinity}}\n',
    '{"progress": [1, 6]}\n', '{"progress": truncated\n', '{"version": 3, "promoted": true}\n',
])
def test_the_daemon_ignores_trainer_lines_that_are_not_progress(line):
    from adaptd.meta.schedule import _progress
    assert _progress(line) is None
    assert _progress('{"progress": {"iteration": 2, "iterations": 6, "eta_s": 4.5, "loss": NaN}}\n') == {
        "iteration": 2, "iterations": 6, "eta_s": 4.5}


def test_online_config_of_the_daemon_matches_the_tasks_shape(tmp_path: Path):
    """Meta-training cuts tasks with the daemon's own model settings (same window, k, steps)."""
    settings = load_config(str(config_file(tmp_path)))
    c = online_config(settings)
    assert (c.window, c.adapt_window, c.adapt_validation, c.adapt_steps) == (16, 24, 4, 3)


def test_a_new_installation_starts_from_the_packaged_initializer_until_its_store_has_one(tmp_path: Path):
    from dataclasses import replace

    from adaptd.engine.factory import encode_initializer, packaged_initializer, stored_initializer
    from adaptd.engine.snapshot import FORMAT_VERSION

    settings = load_config(None)                      # the default model shape
    config = online_config(settings)
    packaged = packaged_initializer(config)
    assert packaged is not None, "adaptd/initializers/m4-hourly.adi is missing: run `make initializer`"
    assert packaged.kind == "meta" and packaged.label == "packaged"
    assert all(bool(torch.isfinite(v).all()) for v in packaged.params.values())
    assert all(0 < a <= 1 for a in packaged.step_sizes.values())
    assert packaged_initializer(SMALL) is None       # another shape: not usable, no error

    store = Store.open(f"sqlite:///{tmp_path}/a.db")
    try:
        assert stored_initializer(settings, store, config).label == "packaged"
        own = Initializer.random(config.shape, 1, 0.05)
        store.save_initializer("pretrain", FORMAT_VERSION, encode_initializer(replace(own, kind="pretrained"), config),
                               {}, 1.0, True)
        assert stored_initializer(settings, store, config).label == "packaged"   # meta wanted: packaged first
        pretrained_wanted = replace(settings, adapt=replace(settings.adapt, init="pretrained"))
        assert stored_initializer(pretrained_wanted, store, config).kind == "pretrained"
        version = store.save_initializer("meta_sgd", FORMAT_VERSION,
                                         encode_initializer(replace(own, kind="meta"), config), {}, 0.5, True)
        chosen = stored_initializer(settings, store, config)
        assert chosen.kind == "meta" and chosen.version == version                # its own data wins
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["newer", "corrupt", "non-finite"])
def test_an_unusable_stored_initializer_is_skipped_with_a_log_line(tmp_path: Path, caplog, damage: str):
    from dataclasses import replace

    from adaptd.engine.factory import encode_initializer, stored_initializer
    from adaptd.engine.snapshot import FORMAT_VERSION

    settings = load_config(None)
    settings = replace(settings, adapt=replace(settings.adapt, init="pretrained"))
    config = online_config(settings)
    store = Store.open(f"sqlite:///{tmp_path}/a.db")
    try:
        good = replace(Initializer.random(config.shape, 1, 0.05), kind="pretrained")
        older = store.save_initializer("pretrain", FORMAT_VERSION, encode_initializer(good, config), {}, 1.0, True)
        bad = replace(Initializer.random(config.shape, 2, 0.05), kind="pretrained")
        if damage == "non-finite":
            bad.params["head"] = bad.params["head"] + float("nan")
        payload = encode_initializer(bad, config)
        payload = newer_format(payload) if damage == "newer" else payload[:200] if damage == "corrupt" else payload
        newest = store.save_initializer("pretrain", FORMAT_VERSION, payload, {}, 0.5, True)
        chosen = stored_initializer(settings, store, config)
        assert chosen.version == older                      # the daemon starts, from the one before
        assert f"initializer version {newest} is not usable here" in caplog.text
    finally:
        store.close()


def test_meta_training_on_hostile_series_never_produces_non_finite_weights():
    n = 700
    t = np.arange(n, dtype=float)
    spikes = np.sin(t / 5)
    spikes[::97] = 1e30
    hostile = [np.full(n, 3.0), spikes, np.where(t % 2 == 0, 1e12, -1e12), np.cumsum(np.full(n, 1e-300)),
               np.sin(t / 7) * 1e-8, np.where(t > 350, 1e15, 0.0)]
    pool = SeriesPool(hostile, SMALL)
    start = Initializer.random(SMALL.shape, 0, 0.05)
    for algorithm in ("meta_sgd", "reptile"):
        result = meta_train(start, pool, MetaSettings(algorithm, iterations=10, meta_batch=8, outer_rate=1e-2,
                                                      query=12), SMALL)
        assert all(bool(torch.isfinite(v).all()) for v in result.init.params.values()), algorithm
        assert all(math.isfinite(a) and MIN_STEP <= a <= MAX_STEP for a in result.init.step_sizes.values())
        tasks = sample_tasks(pool, 32, 12, np.random.default_rng(1))
        assert np.isfinite(post_adaptation_loss(result.init, tasks, SMALL.adapt_steps)).all()


@pytest.mark.parametrize("content, expected", [
    (None, "No such file"),
    ('"V1","V2","V3"\n"S1","1.0","abc"\n', "could not convert"),
])
def test_meta_train_on_a_missing_or_malformed_file_names_it(tmp_path: Path, content, expected):
    config = config_file(tmp_path)
    path = tmp_path / "m4.csv"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    done = run_cli("meta-train", "--m4", str(path), "--no-progress", config=config)
    assert done.returncode == 2
    assert str(path) in done.stderr and expected in done.stderr and "Traceback" not in done.stderr
