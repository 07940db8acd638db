"""A restart learns every stored record its checkpoints missed, not only the newest
`[model] history` of them: a crash with learning behind must not leave a gap in the models."""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil

import numpy as np
import pytest
import torch

from adaptd.catch_up import with_unlearnt
from adaptd.engine.checkpointing import CHECKPOINT_FORMAT
from adaptd.engine.learner import Initializer
from adaptd.engine.online import OnlineConfig, OnlineEngine
from adaptd.engine.snapshot import decode, encode
from adaptd.records import Observation
from adaptd.store import Store
from daemon_harness import DaemonProcess, hourly, metric_samples, short_tempdir, write_config

torch.set_num_threads(1)
HOUR = 3600.0
T0 = 1_700_000_000.0   # daemon_harness.hourly's first time
SMALL = OnlineConfig(window=16, patch=4, hidden=8, horizon=4, rls_lags=8, adapt_window=32,
                     adapt_validation=4, cooldown=16, adapt_steps=3, history=64)
HISTORY = 64   # the daemon's [model] history: how many newest records restore is given


def make_engine() -> OnlineEngine:
    return OnlineEngine(SMALL, Initializer.random(SMALL.shape, 0, 0.05))


def rows(name: str, start: int, n: int, seed: int) -> list[Observation]:
    rng = np.random.default_rng(seed)
    t = np.arange(start, start + n)
    y = 10 + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, n) + (t >= 250) * 8.0
    return [Observation(name, float(k) * HOUR, float(v)) for k, v in zip(t, y)]


def crash_and_restart(store: Store, budget: int = 1_000_000, catch_up: bool = True) -> tuple[OnlineEngine, OnlineEngine]:
    """Series "far" gets 300 records after its checkpoint, "near" 100 (both more than HISTORY:
    236 and 36 before their newest HISTORY); the daemon dies before learning them. Returns
    (one that never stopped, the restarted one)."""
    early = rows("far", 0, 100, 1) + rows("near", 0, 100, 2)
    late = rows("far", 100, 300, 1) + rows("near", 100, 100, 2)
    store.write(early + late)
    running = make_engine()
    running.observe(early)
    checkpoints = running.checkpoint()
    running.observe(late)

    restarted = make_engine()
    recent = store.recent(HISTORY)
    pending = restarted.restore(recent, checkpoints)
    if catch_up:
        pending = with_unlearnt(store, restarted, recent, pending, budget)
    restarted.learn(pending)
    return running, restarted


def values(engine: OnlineEngine, name: str) -> list[float]:
    return [v for p in engine.forecast(name, 4).points for v in (p.value, p.lo, p.hi)]


def test_records_between_a_checkpoint_and_the_newest_are_learnt_after_a_crash(store: Store) -> None:
    running, restarted = crash_and_restart(store)
    for name in ("far", "near"):
        assert restarted.forecast(name, 4) == running.forecast(name, 4)


def test_without_them_the_models_would_forecast_otherwise(store: Store) -> None:
    """The control: the newest HISTORY records alone leave "far" unlike a daemon that never stopped."""
    running, restarted = crash_and_restart(store, catch_up=False)
    assert restarted.forecast("far", 4) != running.forecast("far", 4)


def test_more_than_the_learning_backlog_holds_is_named_and_the_rest_still_learnt(store: Store, caplog) -> None:
    """With room for "near"'s 36 older records but not "far"'s 236, "near" restores exactly and
    the warning names "far"."""
    with caplog.at_level(logging.WARNING, logger="adaptd.catch_up"):
        running, restarted = crash_and_restart(store, budget=2 * HISTORY + 36 + 100)
    # ("near" learns beside fewer "far" rows than before the crash: batched sums round apart.)
    assert np.allclose(values(restarted, "near"), values(running, "near"), rtol=1e-7, atol=0)
    assert not np.allclose(values(restarted, "far"), values(running, "far"), rtol=1e-3, atol=0)
    assert "236 stored records of 1 series (far)" in caplog.text and "learning_backlog" in caplog.text


def test_between_reads_each_series_own_span_only(store: Store) -> None:
    store.write(rows("a", 0, 10, 0) + rows("b", 0, 10, 0))
    spans = {"a": (2 * HOUR, 6 * HOUR), "b": (-1.0, 2 * HOUR), "missing": (0.0, 1e9)}
    assert store.count_between(spans) == {"a": 3, "b": 2}
    got = store.between(spans)
    assert [ts / HOUR for ts, _ in got["a"]] == [3, 4, 5] and [ts / HOUR for ts, _ in got["b"]] == [0, 1]
    assert set(got) == {"a", "b"}


def test_a_refused_checkpoint_learns_the_newest_history_only_without_counting_the_store(store: Store) -> None:
    """A checkpoint refused while it loads (here: broken interval widths) leaves a fresh slot:
    that series starts afresh from its newest records, like one without a checkpoint, and
    start-up does not read its whole history."""
    early, late = rows("far", 0, 100, 1), rows("far", 100, 300, 1)
    store.write(early + late)
    running = make_engine()
    running.observe(early)
    [good] = running.checkpoint()
    arrays, header = decode(good.payload, running.fingerprint(), CHECKPOINT_FORMAT)
    arrays["conformal_q"].flat[0] = np.nan
    broken = dataclasses.replace(good, payload=encode(arrays, header, CHECKPOINT_FORMAT))
    restarted = make_engine()
    recent = store.recent(HISTORY)
    pending = restarted.restore(recent, [broken])
    assert "far" in restarted.slots and restarted.unlearnt_before(recent) == {}
    assert with_unlearnt(store, restarted, recent, pending, 1_000_000) == pending
    assert len(pending) == HISTORY


@pytest.mark.integration
def test_a_daemon_killed_with_more_unlearnt_records_than_history_learns_them_all_after_restart() -> None:
    """The real daemon: a checkpoint, then 300 acknowledged records and kill -9 before the next
    checkpoint. The restarted daemon learns all 300, not only its newest `history` (64): its
    models meet no gap (adaptd_model_gaps_total), and the log says what it caught up."""
    directory = short_tempdir()
    sections = {"model": {"max_horizon": 6, "window": 16, "patch": 4, "rls_lags": 8, "history": HISTORY},
                "server": {"forecast_wait": 30.0}}
    y = [10 + 3 * math.sin(i / 4) for i in range(400)]
    d = DaemonProcess(write_config(directory, metrics=True, sections=sections, naive=False))
    try:
        d.start()
        d.ingest(hourly("s", 100, values=y[:100]))
        d.wait_learnt()
        assert d.stop()[0] == 0                              # its checkpoint: the first 100
        d.start()
        later = hourly("s", 300, start=T0 + 100 * HOUR, values=y[100:])
        assert sum(d.ingest(later[i:i + 100])["accepted"] for i in range(0, 300, 100)) == 300
        d.kill()                                             # acknowledged, never checkpointed
        d.start()
        d.wait_learnt()
        assert "learning 236 more stored records of 1 series" in d.stderr, d.stderr
        gaps = {k: v for k, v in metric_samples(d).items() if k.startswith("adaptd_model_gaps_total")}
        assert gaps['adaptd_model_gaps_total{handling="unfilled"}'] == 0, gaps
        answer = d.forecast("s", 1)
        assert answer["model"]["kind"] == "online" and answer["origin"] == T0 + 399 * HOUR
        assert d.stop()[0] == 0
    finally:
        d.kill()
        shutil.rmtree(directory, ignore_errors=True)
