"""The learning thread: models learn behind the acks, drift events land in SQL, memory is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptd import liveness
from adaptd import service as service_module
from adaptd.catalog import SeriesCatalog
from adaptd.config import load_config
from adaptd.engine.learner import Initializer
from adaptd.engine.online import OnlineConfig, OnlineEngine
from adaptd.learning import LearningWorker
from adaptd.metrics import Metrics
from adaptd.records import Observation
from adaptd.service import Service
from adaptd.store import Store

torch.set_num_threads(1)
HOUR = 3600.0
SMALL = OnlineConfig(window=16, patch=4, hidden=8, horizon=4, rls_lags=8, adapt_window=32, adapt_validation=4,
                     cooldown=16, adapt_steps=2, history=256, detector="page_hinkley",
                     detector_params={"threshold": 5.0, "min_instances": 10})


def shifted(n: int, at: int) -> list[Observation]:
    rng = np.random.default_rng(0)
    y = 5 + rng.normal(0, 1, n)
    y[at:] += 40
    return [Observation("s", t * HOUR, float(v)) for t, v in enumerate(y)]


def wait_until(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_records_are_learnt_in_the_background_and_drift_is_stored(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/a.db")
    engine = OnlineEngine(SMALL, Initializer.random(SMALL.shape, 0, 0.05))
    worker = LearningWorker(engine, store, Metrics(), max_backlog=10_000)
    worker.start()
    try:
        rows = shifted(300, 200)
        store.write(rows)
        engine.record(rows)
        assert not engine.caught_up("s")            # recorded: the fallback answers at once
        assert engine.forecast("s", 2).origin == rows[-1].ts
        worker.submit(rows)
        wait_until(lambda: worker.backlog == 0)
        assert engine.caught_up("s")
        assert engine.forecast("s", 2).model["kind"] == "online"
        events = store.drift_history("s")
        assert events and any(200 <= ts / HOUR < 240 for ts, _, _ in events), events
        assert all(kind == "page_hinkley" and np.isfinite(stat) for _, kind, stat in events)
    finally:
        worker.stop(10)
        store.close()


class GatedEngine(OnlineEngine):
    """Learning blocks until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__(SMALL, Initializer.random(SMALL.shape, 0, 0.05))
        self.gate = threading.Event()

    def learn(self, batch, shed=False):  # type: ignore[no-untyped-def]
        assert self.gate.wait(30)
        super().learn(batch, shed)


@pytest.mark.parametrize("removed", [False, True])
def test_a_series_removed_while_its_records_are_learnt_leaves_no_drift_events(tmp_path: Path, removed: bool) -> None:
    """`adaptd forget` and `forget_after` delete a series' drift events without waiting for the
    learning step under way: what that step detects for it afterwards is never stored."""
    store = Store.open(f"sqlite:///{tmp_path}/a.db")
    engine = GatedEngine()
    worker = LearningWorker(engine, store, Metrics(), max_backlog=10_000)
    worker.start()
    try:
        rows = shifted(300, 200)
        store.write(rows)
        engine.record(rows)
        worker.submit(rows)
        wait_until(lambda: not worker._queue)   # taken: held at the gate
        if removed:   # as the ingest writer's removal does, then the daemon's drop_state
            assert store.forget_step("s", 10_000) == (300, None)
            store.drop_state(["s"])
        engine.gate.set()
        wait_until(lambda: worker.backlog == 0)
        assert bool(store.drift_history("s")) is not removed   # the control run stores its detections
    finally:
        engine.gate.set()
        worker.stop(10)
        store.close()


class BrokenEngine(OnlineEngine):
    """Learning raises for chunks holding series "bad" (a bug in the models)."""

    def __init__(self) -> None:
        super().__init__(SMALL, Initializer.random(SMALL.shape, 0, 0.05))

    def learn(self, batch, shed=False):  # type: ignore[no-untyped-def]
        if any(o.series == "bad" for o in batch):
            raise RuntimeError("a bug in the models")
        super().learn(batch, shed)


def test_records_the_models_fail_to_learn_are_counted_and_learning_goes_on(tmp_path: Path, caplog) -> None:
    """What alert AdaptdLearningFailing watches: the failure is not hidden in the log alone."""
    store = Store.open(f"sqlite:///{tmp_path}/f.db")
    engine, metrics = BrokenEngine(), Metrics()
    worker = LearningWorker(engine, store, metrics, max_backlog=10_000)
    worker.start()
    try:
        bad = [Observation("bad", t * HOUR, 1.0) for t in range(7)]
        engine.record(bad)
        worker.submit(bad)
        wait_until(lambda: worker.backlog == 0)
        good = shifted(40, 30)
        engine.record(good)
        worker.submit(good)
        wait_until(lambda: engine.caught_up("s"))
    finally:
        worker.stop(10)
        store.close()
    assert metrics.value("adaptd_learning_failed_records_total", {"stage": "learn"}) == 7
    assert metrics.value("adaptd_learning_failed_records_total", {"stage": "record"}) == 0
    assert "models failed to learn 7 records" in caplog.text


class SlowEngine(OnlineEngine):
    """Each learning step takes its records a few at a time, slowly: long, but moving."""

    def __init__(self) -> None:
        super().__init__(SMALL, Initializer.random(SMALL.shape, 0, 0.05))

    def learn(self, batch, shed=False):  # type: ignore[no-untyped-def]
        for start in range(0, len(batch), 10):
            super().learn(batch[start:start + 10], shed)
            time.sleep(0.05)


def test_a_long_learning_step_that_moves_is_not_stuck_and_one_that_does_not_is(tmp_path: Path, monkeypatch) -> None:
    """What `stats` health and the systemd watchdog read (liveness.STUCK_AFTER, here 0.3 s)."""
    monkeypatch.setattr(liveness, "STUCK_AFTER", 0.3)
    store = Store.open(f"sqlite:///{tmp_path}/p.db")
    slow, gated = SlowEngine(), GatedEngine()
    workers = [LearningWorker(e, store, Metrics(), max_backlog=10_000) for e in (slow, gated)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.5)   # idle longer than STUCK_AFTER: not stuck, nothing waits
        rows = shifted(300, 200)
        for engine, worker in zip((slow, gated), workers):
            engine.record(rows)
            worker.submit(rows)
            assert worker.problem() is None   # (an idle wait before this work does not count)
        seen = []
        while slow.forecast("s", 1).model["kind"] != "online" or workers[0].backlog:   # one step, ~1.5 s
            seen.append(workers[0].problem())
            time.sleep(0.1)
        assert len(seen) > 5 and seen == [None] * len(seen)
        assert "learning thread has not moved for" in (workers[1].problem() or "")   # held at the gate
        gated.gate.set()
        wait_until(lambda: workers[1].backlog == 0)
        assert workers[1].problem() is None
    finally:
        gated.gate.set()
        for worker in workers:
            worker.stop(10)
        store.close()


def test_a_full_backlog_makes_submit_wait_instead_of_growing(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/b.db")
    engine = GatedEngine()
    worker = LearningWorker(engine, store, Metrics(), max_backlog=1000)
    worker.start()
    rows = shifted(1000, 500)
    engine.record(rows)
    worker.submit(rows)                          # fills the backlog; learning is stuck at the gate
    done: list[bool] = []
    blocked = threading.Thread(target=lambda: (worker.submit(rows[:10]), done.append(True)))
    blocked.start()
    time.sleep(0.3)
    assert not done and worker.backlog == 1000   # the second submit waits instead of growing memory
    engine.gate.set()
    blocked.join(60)
    assert done
    wait_until(lambda: worker.backlog == 0)
    worker.stop(10)
    store.close()


@contextlib.contextmanager
def gated_worker(tmp_path: Path, name: str, **settings):  # type: ignore[no-untyped-def]
    """A learning thread over a GatedEngine (learning waits for `engine.gate`) and its metrics."""
    store = Store.open(f"sqlite:///{tmp_path}/{name}.db")
    engine = GatedEngine()
    metrics = Metrics()
    worker = LearningWorker(engine, store, metrics, max_backlog=10_000, **settings)
    worker.start()
    try:
        yield engine, worker, metrics
    finally:
        engine.gate.set()
        worker.stop(10)
        store.close()


def test_learning_that_fell_behind_sheds_the_recurrent_steps_until_it_catches_up(tmp_path: Path) -> None:
    with gated_worker(tmp_path, "shed", shed_lag=0.2) as (engine, worker, metrics):
        rows = shifted(400, 10**6)                 # no change: no adaptation touches the weights
        engine.record(rows[:300])
        worker.submit(rows[:20])                   # taken at once, then held at the gate...
        wait_until(lambda: not worker._queue)
        worker.submit(rows[20:300])                # ...while this chunk waits past shed_lag
        time.sleep(0.4)
        engine.gate.set()
        wait_until(lambda: worker.backlog == 0)
        before = {k: v.clone() for k, v in engine.gru.params.items()}
        assert worker.shedding
        assert metrics.value("adaptd_learning_shed_records_total") == 280
        assert engine.counters["gru_steps_shed"] > 200
        assert engine.caught_up("s") and engine.forecast("s", 2).model["kind"] == "online"   # current
        engine.record(rows[300:])
        worker.submit(rows[300:])                  # learnt at once: no shedding, the GRU learns again
        wait_until(lambda: worker.backlog == 0)
        assert not worker.shedding
        assert metrics.value("adaptd_learning_shed_records_total") == 280
        assert not all(torch.equal(before[k], v) for k, v in engine.gru.params.items())


def test_a_restarts_catch_up_submitted_at_once_sheds_past_its_first_chunk(tmp_path: Path) -> None:
    with gated_worker(tmp_path, "catchup", max_chunk=100, shed_lag=0.2) as (engine, worker, metrics):
        rows = shifted(300, 10**6)
        engine.record(rows)
        worker.submit(rows)                        # as the daemon submits what a restart must relearn
        time.sleep(0.4)                            # the first chunk is held at the gate, the rest wait
        engine.gate.set()
        wait_until(lambda: worker.backlog == 0)
        assert metrics.value("adaptd_learning_shed_records_total") == 200


def test_shedding_off_learns_every_step_however_late(tmp_path: Path) -> None:
    with gated_worker(tmp_path, "noshed", shed_lag=0.0) as (engine, worker, metrics):
        rows = shifted(300, 10**6)
        engine.record(rows)
        worker.submit(rows[:20])
        wait_until(lambda: not worker._queue)
        worker.submit(rows[20:])                   # waits well past any lag at the gate
        time.sleep(0.3)
        engine.gate.set()
        wait_until(lambda: worker.backlog == 0)
        assert not worker.shedding and metrics.value("adaptd_learning_shed_records_total") == 0
        assert engine.counters["gru_steps_shed"] == 0


class StallingEngine(OnlineEngine):
    """Learning stalls at `stall_at` (mid-chunk) until the test opens the gate: a long chunk."""

    def __init__(self, stall_at: float) -> None:
        super().__init__(SMALL, Initializer.random(SMALL.shape, 0, 0.05))
        self.stall_at = stall_at
        self.stalled = threading.Event()
        self.gate = threading.Event()

    def _step(self, slots, ts, y):  # type: ignore[no-untyped-def]
        if ts.size and ts[0] >= self.stall_at and not self.gate.is_set():
            self.stalled.set()
            assert self.gate.wait(30)
        super()._step(slots, ts, y)


def test_drift_is_counted_in_metrics_as_detected_not_when_the_chunk_ends(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/c.db")
    engine = StallingEngine(stall_at=280 * HOUR)     # the shift at 200 is detected before 240
    metrics = Metrics()
    metrics.watch(engine, SeriesCatalog(), SMALL.coverage, 3600.0)
    worker = LearningWorker(engine, store, metrics, max_backlog=10_000)
    worker.start()
    try:
        rows = shifted(300, 200)
        store.write(rows)
        engine.record(rows)
        worker.submit(rows)                           # one chunk of 300 records
        assert engine.stalled.wait(60)
        drifts = metrics.value("adaptd_drift_events_total", {"detector": "page_hinkley"})
        assert worker.backlog == 300 and store.drift_history("s") == []   # the chunk is not done...
        assert drifts >= 1                                                # ...yet a scrape sees the drift
        engine.gate.set()
        wait_until(lambda: worker.backlog == 0)
        stored = store.drift_history("s")
        assert stored and metrics.value("adaptd_drift_events_total", {"detector": "page_hinkley"}) == len(stored)
    finally:
        engine.gate.set()
        worker.stop(10)
        store.close()


def test_learning_in_a_background_thread_is_as_fast_as_in_the_main_thread() -> None:
    """torch's thread count is per OS thread; the learner and adaptation threads set their own
    (left at torch's default, a background thread learnt ~19x slower on two busy cores)."""
    rows = shifted(200, 150)

    def seconds() -> float:
        engine = OnlineEngine(SMALL, Initializer.random(SMALL.shape, 0, 0.05))
        started = time.perf_counter()
        engine.learn(rows)
        return time.perf_counter() - started

    main = min(seconds() for _ in range(2))
    timings: list[float] = []
    for _ in range(2):
        thread = threading.Thread(target=lambda: timings.append(seconds()))
        thread.start()
        thread.join()
    assert min(timings) < 3 * main, (timings, main)


def test_a_shed_batch_skips_the_recurrent_steps_and_nothing_else() -> None:
    rows = shifted(300, 10**6)
    shed, full = (OnlineEngine(SMALL, Initializer.random(SMALL.shape, 0, 0.05)) for _ in range(2))
    for engine in (shed, full):
        engine.observe(rows[:150])
    warm = {k: v.clone() for k, v in shed.gru.params.items()}
    shed.record(rows[150:])
    shed.learn(rows[150:], shed=True)
    full.observe(rows[150:])
    assert all(torch.equal(warm[k], v) for k, v in shed.gru.params.items())
    assert not all(torch.equal(warm[k], v) for k, v in full.gru.params.items())
    assert shed.counters["gru_steps_shed"] == 150 and full.counters["gru_steps_shed"] == 0
    np.testing.assert_array_equal(shed.rls.B, full.rls.B)      # the linear learner learnt the same
    assert shed.forecast("s", 4).origin == full.forecast("s", 4).origin == rows[-1].ts
    shed.observe(shifted(301, 10**6)[300:])                    # and the next batch learns again
    assert not all(torch.equal(warm[k], v) for k, v in shed.gru.params.items())


def test_forecasts_asked_while_the_learning_thread_works_reflect_every_recorded_record(tmp_path: Path) -> None:
    """Provisional forecasts are read while learning changes the same arrays (and grows them as
    series arrive): every answer is finite, starts at the newest recorded record, and none fails."""
    store = Store.open(f"sqlite:///{tmp_path}/race.db")
    engine = OnlineEngine(SMALL, Initializer.random(SMALL.shape, 0, 0.05))
    worker = LearningWorker(engine, store, Metrics(), max_backlog=100_000)
    worker.start()
    rng = np.random.default_rng(0)
    names = [f"s{k}" for k in range(400)]      # several learning steps per round (ROUND_SERIES)
    answered = {"provisional": 0, "learnt": 0, "fallback": 0}
    try:
        for t in range(60):
            rows = [Observation(name, t * HOUR, float(5 + k % 3 + rng.normal())) for k, name in enumerate(names)]
            engine.record(rows)
            worker.submit(rows)
            # Learning a few rounds behind (not more than a window): provisional answers are possible.
            wait_until(lambda: worker.backlog <= 4 * len(names))
            for name in rng.choice(names, 20 if t >= 2 else 0):   # two records give a step
                fc = engine.forecast(str(name), SMALL.horizon)
                assert fc.origin == t * HOUR and all(np.isfinite([p.value, p.lo, p.hi]).all() for p in fc.points)
                kind = ("fallback" if fc.model["kind"] != "online" else
                        "provisional" if "unlearnt" in fc.model else "learnt")
                answered[kind] += 1
        wait_until(lambda: worker.backlog == 0)
    finally:
        worker.stop(10)
        store.close()
    assert answered["provisional"] > 100, answered   # the models answered without waiting for learning


def test_a_forecast_learning_has_not_reached_is_answered_at_once_while_provisional_answers_are_within_budget(
        monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Clients asking back to back would spend the CPU learning needs on provisional answers:
    past their share of the event loop, a forecast first waits (up to LEARNT_WAIT) for learning."""
    monkeypatch.setattr(service_module, "LEARNT_WAIT", 0.3)   # forecast_wait is 0.5
    engine = OnlineEngine(SMALL, Initializer.random(SMALL.shape, 0, 0.05))
    rows = shifted(200, 10**6)
    engine.observe(rows[:180])
    engine.record(rows[180:183])                       # recorded, not learnt: nothing will learn them
    service = Service(load_config(None), None, None, engine, SeriesCatalog({}), Metrics())  # type: ignore[arg-type]

    async def timed_forecast() -> tuple[float, dict]:
        began = time.monotonic()
        fc = await service._models_forecast("s", SMALL.horizon)
        assert fc.origin == rows[182].ts
        return time.monotonic() - began, fc.model

    took, model = asyncio.run(timed_forecast())
    assert model["unlearnt"] == 3 and took < 0.3       # no wait for learning
    service.provisional_budget.spend(1.0)              # provisional answers have had their share
    took, model = asyncio.run(timed_forecast())
    assert model["unlearnt"] == 3 and took >= 0.3      # waited for learning first, then answered


def test_a_forecast_learning_cannot_reach_in_time_is_answered_by_the_fallback_at_once(tmp_path: Path) -> None:
    """After a bulk load, waiting `forecast_wait` for learning that needs seconds more for its
    backlog ends in the fallback's answer anyway: it comes at once. Learning that will be
    through in time is waited for, as before."""
    with gated_worker(tmp_path, "behind") as (engine, worker, _metrics):
        rows = shifted(300, 10**6)
        engine.record(rows[:100])
        worker.submit(rows[:100])
        engine.gate.set()
        wait_until(lambda: worker.backlog == 0)   # learning has a measured rate now
        engine.gate.clear()
        engine.record(rows[100:])
        worker.submit(rows[100:])                 # 200 records it will not learn before the gate opens
        service = Service(load_config(None), None, None, engine, SeriesCatalog({}), Metrics(), worker)  # type: ignore[arg-type]

        def timed(rate: float) -> tuple[float, dict]:
            worker._rate = rate                   # as measured on a slow or a fast machine
            began = time.monotonic()
            fc = asyncio.run(service._models_forecast("s", SMALL.horizon))
            assert fc.origin == rows[-1].ts       # read-your-writes either way
            return time.monotonic() - began, fc.model

        took, model = timed(100.0)                # 2 s of backlog: no use waiting 0.5 s
        assert model["kind"] != "online" and service_module.LEARNT_WAIT <= took < 0.2
        took, model = timed(1e6)                  # through in a moment: worth the wait (the gate
        assert took >= 0.5                        # stays shut, so the fallback answers after it)


def test_shedding_that_flaps_under_overload_warns_once_a_minute(caplog) -> None:  # type: ignore[no-untyped-def]
    worker = LearningWorker(OnlineEngine(SMALL, Initializer.random(SMALL.shape, 0, 0.05)), None, Metrics(),  # type: ignore[arg-type]
                            shed_lag=1.0)
    with caplog.at_level(logging.DEBUG, logger="adaptd.learning"):
        for waited in (2.0, 0.1, 3.0, 0.2, 2.5):
            worker._should_shed(waited)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2.0s behind" in warnings[0].getMessage()
    assert worker.shedding
