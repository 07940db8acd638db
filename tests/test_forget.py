"""`[store] forget_after`: a series silent that long is removed whole, from the store and from
memory, and nothing acknowledged meanwhile is lost."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import urllib.request
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from adaptd.catalog import SeriesCatalog
from adaptd.config import parse_config
from adaptd.engine import UnknownSeries
from adaptd.engine import online as online_module
from adaptd.engine.adapting import DriftEvent
from adaptd.engine.learner import Initializer
from adaptd.engine.naive import KINDS as NAIVE_KINDS
from adaptd.engine.naive import NaiveEngine
from adaptd.engine.online import OnlineConfig, OnlineEngine
from adaptd.ingest import ARRIVED, GONE, LEARNING, STOPPED, IngestWriter, Removal
from adaptd.metrics import Metrics
from adaptd.records import Observation
from adaptd.retention import Retention
from adaptd import service as service_module
from adaptd.service import Service
from adaptd.schema import drift_events, model_checkpoints, observations, series_table
from adaptd.store import Checkpoint, Store
from daemon_harness import DaemonProcess, preload, run_cli, short_tempdir, write_config

HOUR = 3600.0


def hourly(name: str, n: int, start: float = 0.0) -> list[Observation]:
    return [Observation(name, start + HOUR * t, float(t % 7)) for t in range(n)]


def rows(store: Store, table: sa.Table, name: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table).join(
            series_table, series_table.c.id == table.c.series_id).where(series_table.c.name == name)).scalar_one()


# -- the store ----------------------------------------------------------------------------------

def test_a_forget_step_deletes_the_oldest_then_the_rest_and_keeps_the_series_id(store: Store) -> None:
    store.write(hourly("gone", 10) + hourly("kept", 3))
    store.add_drift_events([DriftEvent("gone", 5 * HOUR, "adwin", 0.3)])
    store.save_checkpoints([Checkpoint("gone", "naive", 1, b"state"), Checkpoint("kept", "naive", 1, b"state")])
    ids = {name: sid for name, sid in store.engine.connect().execute(sa.select(series_table.c.name, series_table.c.id))}

    assert store.forget_step("gone", 4) == (4, 4 * HOUR)     # the four oldest; the rest starts at 4 h
    assert [ts for ts, _ in store.history("gone")] == [HOUR * t for t in range(4, 10)]
    assert rows(store, drift_events, "gone") == rows(store, model_checkpoints, "gone") == 1
    assert store.forget_step("gone", 4, 4 * HOUR) == (4, 8 * HOUR)
    assert store.forget_step("gone", 4, 8 * HOUR) == (2, None)   # the last, and its drift events with them
    assert rows(store, observations, "gone") == rows(store, drift_events, "gone") == 0
    assert store.forget_step("gone", 4) == (0, None)          # (again: nothing left)
    assert rows(store, model_checkpoints, "gone") == 1        # the checkpoint: outside the writer
    assert store.drop_state(["gone", "kept"]) == 1 and rows(store, model_checkpoints, "gone") == 0
    # A checkpoint snapshot from before the removal, saved after it: swept again by the next pass.
    store.save_checkpoints([Checkpoint("gone", "naive", 1, b"late"), Checkpoint("kept", "naive", 1, b"new")])
    # Detections learning stores after the removal are not stored at all.
    store.add_drift_events([DriftEvent("gone", 9 * HOUR, "adwin", 0.3), DriftEvent("kept", HOUR, "adwin", 0.3)])
    assert rows(store, drift_events, "gone") == 0 and rows(store, drift_events, "kept") == 1
    assert store.drop_state(["gone", "kept", "never-seen"]) == 1 and rows(store, model_checkpoints, "gone") == 0
    assert rows(store, model_checkpoints, "kept") == 1   # live: kept
    assert store.forget_step("never-seen", 4) == (0, None)
    assert len(store.history("kept")) == 3 and rows(store, model_checkpoints, "kept") == 1
    store.write([Observation("gone", 20 * HOUR, 1.0)])       # back later: afresh, under its old id
    assert store.history("gone") == [(20 * HOUR, 1.0)]
    store.add_drift_events([DriftEvent("gone", 20 * HOUR, "adwin", 0.3)])   # its own again
    assert rows(store, drift_events, "gone") == 1
    assert {s.name: s.observations for s in store.series_summary()} == {"gone": 1, "kept": 3}
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(series_table.c.id).where(series_table.c.name == "gone")).scalar_one() == ids["gone"]


# -- the writer: removal in steps between commits -------------------------------------------------

class ArrivingEngine(NaiveEngine):
    """A naive engine that, when asked at the removal's second step whether the series can go,
    has a client send a record for it: the writer commits it before the removal's next step."""

    def __init__(self) -> None:
        super().__init__(history=64, max_horizon=8)
        self.writer: IngestWriter | None = None
        self.asked = 0
        self.sent: Future[int] | None = None

    def forgettable(self, series: str) -> bool:
        self.asked += 1
        if self.asked == 2 and self.writer is not None:
            self.sent = self.writer.submit([Observation(series, 100 * HOUR, 42.0)])
        return True


def writer_for(store: Store, engine: NaiveEngine) -> tuple[IngestWriter, SeriesCatalog, Metrics]:
    catalog, metrics = SeriesCatalog(store.series_summary()), Metrics()
    writer = IngestWriter(store, engine, catalog, metrics)
    writer.start()
    return writer, catalog, metrics


def test_the_writer_removes_a_silent_series_from_store_catalog_and_engine(store: Store) -> None:
    store.write(hourly("gone", 30) + hourly("kept", 30))
    engine = NaiveEngine(history=64, max_horizon=8)
    writer, catalog, _ = writer_for(store, engine)
    try:
        engine.record(hourly("gone", 30) + hourly("kept", 30))
        assert writer.forget("gone", time.monotonic() + 1, batch=7).result(timeout=20) == Removal(True, 30)   # 5 steps
        assert (writer.forget("kept", time.monotonic() - 3600, batch=7).result(timeout=20)
                == Removal(False, 0, ARRIVED))   # not silent
    finally:
        writer.stop(timeout=20)
    assert "gone" not in catalog and catalog.get("kept").observations == 30
    with pytest.raises(UnknownSeries):
        engine.forecast("gone", 1)
    assert store.history("gone") == [] and len(store.history("kept")) == 30


def test_a_record_arriving_during_the_removal_stops_it_and_is_kept(store: Store) -> None:
    store.write(hourly("s", 20))
    engine = ArrivingEngine()
    writer, catalog, _ = writer_for(store, engine)
    engine.writer = writer
    try:
        engine.record(hourly("s", 20))
        cutoff = time.monotonic() + 1   # silent: nothing arrived since start-up
        assert writer.forget("s", cutoff, batch=3).result(timeout=20) == Removal(False, 6, ARRIVED)   # stopped
        assert engine.sent is not None and engine.sent.result(timeout=20) == 1  # acknowledged
    finally:
        writer.stop(timeout=20)
    stored = store.history("s")
    # Two steps of 3 went before the record came; everything after them stays, the record too.
    assert stored == [(HOUR * t, float(t % 7)) for t in range(6, 20)] + [(100 * HOUR, 42.0)]
    info = catalog.get("s")
    assert (info.observations, info.first_ts, info.last_ts) == (15, 6 * HOUR, 100 * HOUR)
    assert engine.forecast("s", 1).origin == 100 * HOUR


def test_a_series_the_models_have_not_learnt_yet_is_not_removed(store: Store) -> None:
    store.write(hourly("s", 30))
    engine = OnlineEngine(CONFIG, fresh_init(CONFIG))
    writer, catalog, _ = writer_for(store, engine)
    try:
        engine.record(hourly("s", 30))   # as a restart's catch-up leaves it: recorded, learning behind
        assert writer.forget("s", time.monotonic() + 1, batch=7).result(timeout=20) == Removal(False, 0, LEARNING)
        engine.learn(hourly("s", 30))
        assert writer.forget("s", time.monotonic() + 1, batch=7).result(timeout=20) == Removal(True, 30)
    finally:
        writer.stop(timeout=20)
    assert "s" not in catalog and store.history("s") == []
    with pytest.raises(UnknownSeries):
        engine.forecast("s", 1)


class GatedEngine(NaiveEngine):
    """A naive engine whose record() (what the writer calls before an ack) waits for the test."""

    def __init__(self) -> None:
        super().__init__(history=64, max_horizon=8)
        self.gate, self.entered = threading.Event(), threading.Event()

    def record(self, batch):  # type: ignore[no-untyped-def]
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        super().record(batch)


def test_a_removal_cut_off_by_shutdown_is_reported_as_stopped_with_what_it_deleted(store: Store) -> None:
    store.write(hourly("s", 50))
    engine = GatedEngine()
    writer, catalog, _ = writer_for(store, engine)
    acked = writer.submit([Observation("other", 0.0, 1.0)])
    assert engine.entered.wait(10)                 # the writer is busy with that batch...
    removal = writer.forget("s", time.monotonic() + 1, batch=1)
    stopping = threading.Thread(target=writer.stop, kwargs={"timeout": 20})
    stopping.start()                               # ...and shutdown queues up behind the removal
    deadline = time.monotonic() + 10
    while writer._queue.qsize() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.gate.set()
    stopping.join(20)
    assert acked.result(timeout=1) == 1 and not writer.alive
    assert removal.result(timeout=1) == Removal(False, 1, STOPPED)   # one step went, then the writer stopped
    assert len(store.history("s")) == 49 and catalog.get("s").observations == 49
    assert writer.forget("s", time.monotonic() + 1, batch=1).exception(timeout=5) is not None   # writer gone


# -- the engine: a forgotten series' slot, reused ---------------------------------------------------

CONFIG = OnlineConfig(window=16, patch=4, hidden=8, horizon=4, rls_lags=8, adapt_window=24, history=64)


def fresh_init(config: OnlineConfig) -> Initializer:
    return Initializer.random(config.shape, 0, 0.05)


def wave(n: int, phase: float) -> np.ndarray:
    return 10.0 + np.sin(np.arange(n) * 2 * np.pi / 24 + phase) + 0.1 * np.cos(np.arange(n) * 0.7)


def feed(engine: OnlineEngine, name: str, y: np.ndarray) -> None:
    for t, v in enumerate(y):
        engine.observe([Observation(name, t * HOUR, float(v))])


def test_a_forgotten_series_slot_serves_a_new_series_as_a_fresh_engine_would(monkeypatch) -> None:
    monkeypatch.setattr(online_module, "SLOT_REUSE_DELAY", 0.0)
    init = fresh_init(CONFIG)
    engine, reference = OnlineEngine(CONFIG, init), OnlineEngine(CONFIG, init)
    feed(engine, "old", wave(80, 0.0) * 3)
    feed(engine, "other", wave(80, 1.0))
    feed(reference, "other", wave(80, 1.0))
    assert engine.forgettable("old")
    slot = engine.slots["old"]
    engine.forget("old")
    with pytest.raises(UnknownSeries):   # at once; the slot goes at the next learning step or checkpoint
        engine.forecast("old", 1)
    assert [cp.series for cp in engine.checkpoint()] == ["other"]
    assert "old" not in engine.slots and engine.stats()["series"] == 1 and engine.warm_series() == 1
    feed(engine, "new", wave(60, 2.0))
    feed(reference, "new", wave(60, 2.0))
    assert engine.slots["new"] == slot                       # the slot is reused...
    got, want = engine.forecast("new", 4), reference.forecast("new", 4)
    assert got.model == want.model                           # ...as a fresh one: nothing of "old" in it
    np.testing.assert_allclose([p.value for p in got.points], [p.value for p in want.points], rtol=1e-6)
    np.testing.assert_allclose([p.hi for p in got.points], [p.hi for p in want.points], rtol=1e-6)


def test_series_that_come_and_go_do_not_grow_the_engine(monkeypatch) -> None:
    """Ten generations of 40 series, each forgotten before the next comes: the slots (and the
    arrays behind them) stay those of one generation."""
    monkeypatch.setattr(online_module, "SLOT_REUSE_DELAY", 0.0)
    engine = OnlineEngine(CONFIG, fresh_init(CONFIG))
    for generation in range(10):
        names = [f"g{generation}-{i}" for i in range(40)]
        for t in range(20):
            engine.observe([Observation(name, t * HOUR, float(t % 5 + i)) for i, name in enumerate(names)])
        if generation == 0:
            capacity = engine.count.shape[0]
        for name in names:
            engine.forget(name)
    engine.checkpoint()   # (drops the last generation's slots)
    assert engine.count.shape[0] == capacity and len(engine.names) == 40 and engine.stats()["series"] == 0
    assert len(engine.naive._series) == 0


def test_a_slot_is_not_reused_at_once_and_a_series_still_learnt_is_not_forgettable() -> None:
    engine = OnlineEngine(CONFIG, fresh_init(CONFIG))
    feed(engine, "old", wave(40, 0.0))
    slot = engine.slots["old"]
    engine.forget("old")
    feed(engine, "new", wave(20, 0.0))
    assert "old" not in engine.slots and engine.slots["new"] != slot   # a forecast may still be reading it
    engine.record([Observation("new", 20 * HOUR, 1.0)])      # recorded, not learnt yet
    assert not engine.forgettable("new")
    engine.learn([Observation("new", 20 * HOUR, 1.0)])
    assert engine.forgettable("new") and engine.forgettable("never-seen")
    engine.record([Observation("young", 0.0, 1.0)])          # not even a slot yet: learning would make one
    assert not engine.forgettable("young")


def test_records_of_a_series_forgotten_before_learning_reached_them_do_not_bring_it_back() -> None:
    engine = OnlineEngine(CONFIG, fresh_init(CONFIG))
    feed(engine, "old", wave(40, 0.0))
    late = [Observation("old", 40 * HOUR, 1.0), Observation("old", 41 * HOUR, 2.0)]
    engine.record(late)                  # acknowledged, queued for learning...
    engine.forget("old")                 # ...and forgotten meanwhile (only when forced: not forgettable)
    engine.learn(late)
    assert "old" not in engine.slots and engine.stats()["series"] == 0
    with pytest.raises(UnknownSeries):
        engine.forecast("old", 1)


def test_a_series_back_before_learning_dropped_its_slot_is_answered_from_its_new_records() -> None:
    engine = OnlineEngine(CONFIG, fresh_init(CONFIG))
    feed(engine, "old", wave(40, 0.0))
    engine.forget("old")
    engine.record([Observation("old", 2 * HOUR, 5.0), Observation("old", 3 * HOUR, 6.0)])   # back, dated early
    answer = engine.forecast("old", 2)
    assert answer.origin == 3 * HOUR and answer.model["kind"] in NAIVE_KINDS   # not the old slot's cache
    assert answer.model["adaptations"] == 0 and not engine.caught_up("old")
    engine.learn([Observation("old", 2 * HOUR, 5.0), Observation("old", 3 * HOUR, 6.0)])
    assert int(engine.count[engine.slots["old"]]) == 2 and "old" not in engine.forgetting   # afresh


def test_an_adaptation_owed_to_a_forgotten_series_is_dropped_with_it() -> None:
    engine = OnlineEngine(CONFIG, fresh_init(CONFIG))
    feed(engine, "old", wave(60, 0.0))
    slot = engine.slots["old"]
    engine._owed.append(slot)            # as a restore leaves one, for the next learning step
    assert not engine.forgettable("old")
    engine.forget("old")                 # (forced)
    engine.learn([Observation("other", 0.0, 1.0)])
    assert engine._owed == [] and slot not in engine._running and engine.stats()["adapting"] == 0


# -- the retention pass ---------------------------------------------------------------------------

def test_a_pass_forgets_the_silent_series_and_counts_them(store: Store, monkeypatch, caplog) -> None:
    store.write(hourly("silent", 40) + hourly("live", 40))
    store.save_checkpoints([Checkpoint("silent", "naive", 1, b"state"), Checkpoint("live", "naive", 1, b"state")])
    engine = NaiveEngine(history=64, max_horizon=8)
    writer, catalog, metrics = writer_for(store, engine)
    try:
        engine.record(hourly("silent", 40) + hourly("live", 40))
        job = Retention(store, 0.0, 16, metrics, catalog=catalog, forget_after=60.0, writer=writer)
        job.prune()
        assert job.last_pass["forgotten"] == 0   # both arrived (were loaded) just now
        monkeypatch.setattr(time, "monotonic", lambda real=time.monotonic: real() + 90)
        job.prune()                              # both silent: the feed is down, not the series
        assert job.last_pass["forgotten"] == 0 and "forgetting none of them" in caplog.text
        writer.submit([Observation("live", 40 * HOUR, 1.0)]).result(timeout=20)   # "live" reports
        job.prune()
    finally:
        writer.stop(timeout=20)
    assert job.last_pass == {**job.last_pass, "forgotten": 1, "deleted": 40, "series": 0, "error": None}
    assert set(catalog.snapshot()) == {"live"} and len(store.history("live")) == 41
    assert rows(store, model_checkpoints, "silent") == 0 and rows(store, model_checkpoints, "live") == 1
    assert metrics.value("adaptd_series") == 1.0
    assert metrics.value("adaptd_series_forgotten_total") == 1.0
    assert metrics.value("adaptd_retention_deleted_observations_total") == 40.0


def test_forgetting_needs_the_writer() -> None:
    with pytest.raises(ValueError, match="ingest writer"):
        Retention(None, 0.0, 16, Metrics(), forget_after=60.0)   # type: ignore[arg-type]


# -- the daemon -------------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.slow
def test_the_daemon_forgets_a_series_that_stopped_and_keeps_the_ones_that_report():
    """forget_after = 60 s, passes every 60 s (the first 10 s after start): a stored series that
    receives nothing is gone after the pass at ~70 s, from the store, the series listing,
    forecasts and the metrics; one that reports stays; after a restart it stays gone, and a
    record for it starts it afresh."""
    directory = short_tempdir()
    config = write_config(directory, metrics=True, naive=False, sections={
        "store": {"forget_after": 60.0}, "scheduler": {"retention_interval": 60.0},
        "model": {"window": 16, "patch": 4, "hidden": 8, "rls_lags": 8, "max_horizon": 4, "history": 64}})
    preload(f"sqlite:///{directory}/adaptd.db", hourly("stopped", 50) + hourly("live", 50))
    d = DaemonProcess(config)
    try:
        d.start(timeout=60)
        assert d.forecast("stopped", 2)["ok"]
        deadline, t = time.monotonic() + 150, 50
        while time.monotonic() < deadline:
            d.ingest([{"series": "live", "ts": t * HOUR, "value": 1.0}])
            t += 1
            listing = {s["series"] for s in json.loads(run_cli("series", "--json", config=config).stdout)}
            if "stopped" not in listing:
                break
            time.sleep(2)
        assert listing == {"live"}, "the silent series was not forgotten in time"
        answer = d.request({"op": "forecast", "series": "stopped", "horizon": 2})
        assert answer["error"]["code"] == "unknown_series"
        assert d.forecast("live", 2)["ok"]
        stats = json.loads(run_cli("status", "--json", config=config).stdout)
        assert stats["series"] == 1 and stats["engine"]["series"] == 1
        assert stats["store"]["retention"]["last_pass"]["forgotten"] == 1
        assert "forgets a series silent for 1m" in run_cli("status", config=config).stdout
        scraped = urllib.request.urlopen(f"http://{d.settings.metrics.listen}/metrics", timeout=10).read().decode()
        assert "adaptd_series_forgotten_total 1.0" in scraped
        assert "forgot 1 series that received nothing for 60s" in d.stderr
        d.stop()
        d = DaemonProcess(config)
        d.start(timeout=60)
        assert {s["series"] for s in json.loads(run_cli("series", "--json", config=config).stdout)} == {"live"}
        d.ingest([{"series": "stopped", "ts": 500 * HOUR, "value": 3.0}])
        [again] = [s for s in json.loads(run_cli("series", "--json", config=config).stdout) if s["series"] == "stopped"]
        assert (again["observations"], again["first_ts"]) == (1, 500 * HOUR)
    finally:
        d.kill()
        shutil.rmtree(directory, ignore_errors=True)


# -- `adaptd forget`: a series removed on request ----------------------------------------------

def forget_request(service: Service, series: Any) -> dict[str, Any]:
    return json.loads(asyncio.run(service.handle_line(json.dumps({"op": "forget", "series": series}).encode())))


def test_forget_waits_for_learning_to_reach_the_series_then_removes_it(store: Store) -> None:
    """Recorded but not learnt (a bulk load): the op waits for learning, then removes the series."""
    store.write(hourly("s", 30) + hourly("other", 30))
    engine = OnlineEngine(CONFIG, fresh_init(CONFIG))
    writer, catalog, metrics = writer_for(store, engine)
    service = Service(parse_config({}), store, writer, engine, catalog, metrics)
    engine.record(hourly("s", 30) + hourly("other", 30))
    learning = threading.Timer(0.5, engine.learn, [hourly("s", 30) + hourly("other", 30)])
    learning.start()
    try:
        started = time.monotonic()
        answer = forget_request(service, "s")
        assert answer == {"ok": True, "series": "s", "removed": True, "deleted": 30}
        assert time.monotonic() - started >= 0.4   # it waited for learning
        assert forget_request(service, "s")["error"]["code"] == "unknown_series"
        mistyped = forget_request(service, "othr")["error"]
        assert mistyped == {"code": "unknown_series",
                            "message": "no observations of series 'othr' (similar names: 'other')"}
    finally:
        learning.join()
        writer.stop(timeout=20)
    assert "s" not in catalog and store.history("s") == [] and len(store.history("other")) == 30
    assert metrics.value("adaptd_series_forgotten_total") == 1


def test_two_removals_of_one_series_end_once_removed_once_gone(store: Store) -> None:
    """A request and `forget_after` (or two requests) removing one series at once: one removes
    it, the other finds it gone; the observations are deleted once between them."""
    store.write(hourly("s", 30))
    engine = NaiveEngine(history=64, max_horizon=8)
    writer, catalog, _ = writer_for(store, engine)
    engine.record(hourly("s", 30))
    try:
        first, second = (writer.forget("s", time.monotonic() + 1, batch=7) for _ in range(2))
        outcomes = [first.result(timeout=20), second.result(timeout=20)]
    finally:
        writer.stop(timeout=20)
    assert sorted((r.removed, r.stopped) for r in outcomes) == [(False, GONE), (True, "")]
    assert sum(r.deleted for r in outcomes) == 30 and store.history("s") == []


def test_requests_for_one_series_at_once_share_one_removal(store: Store) -> None:
    store.write(hourly("s", 30))
    engine = NaiveEngine(history=64, max_horizon=8)
    writer, catalog, metrics = writer_for(store, engine)
    service = Service(parse_config({}), store, writer, engine, catalog, metrics)
    engine.record(hourly("s", 30))

    async def both() -> list[bytes]:
        line = json.dumps({"op": "forget", "series": "s"}).encode()
        return await asyncio.gather(service.handle_line(line), service.handle_line(line))
    try:
        answers = [json.loads(a) for a in asyncio.run(both())]
    finally:
        writer.stop(timeout=20)
    assert answers == [{"ok": True, "series": "s", "removed": True, "deleted": 30}] * 2
    assert metrics.value("adaptd_series_forgotten_total") == 1


def test_at_shutdown_a_removal_stops_waiting_for_learning(store: Store) -> None:
    store.write(hourly("s", 30))
    engine = OnlineEngine(CONFIG, fresh_init(CONFIG))
    writer, catalog, metrics = writer_for(store, engine)
    service = Service(parse_config({}), store, writer, engine, catalog, metrics)
    engine.record(hourly("s", 30))   # never learnt: the removal would wait FORGET_WAIT
    service.stopping = True
    try:
        started = time.monotonic()
        answer = forget_request(service, "s")
    finally:
        writer.stop(timeout=20)
    assert time.monotonic() - started < 5
    assert answer["error"]["code"] == "overloaded" and "shutting down" in answer["error"]["message"]
    assert len(store.history("s")) == 30


def test_forget_stopped_by_an_arriving_record_says_so_and_keeps_it(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(service_module, "FORGET_BATCH", 3)
    store.write(hourly("s", 20))
    engine = ArrivingEngine()
    writer, catalog, metrics = writer_for(store, engine)
    engine.writer = writer
    service = Service(parse_config({}), store, writer, engine, catalog, metrics)
    engine.record(hourly("s", 20))
    try:
        answer = forget_request(service, "s")
    finally:
        writer.stop(timeout=20)
    assert answer["ok"] is False and answer["error"]["code"] == "not_ready"
    assert "arrived during its removal and are kept (6 older observations were deleted)" in answer["error"]["message"]
    assert answer["error"]["deleted"] == 6   # two steps of 3 went before the record came
    assert store.history("s")[-1] == (100 * HOUR, 42.0) and catalog.get("s").observations == 15

def stored(url: str, table: sa.Table, name: str) -> int:
    """Rows of `table` for series `name` in the daemon's SQLite store, read beside it."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            ids = sa.select(series_table.c.id).where(series_table.c.name == name)
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)
                                    .where(table.c.series_id.in_(ids))).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.integration
def test_adaptd_forget_removes_a_series_whole_and_it_stays_gone_after_a_restart():
    """A series sent by mistake is removed on request, right after a bulk load (the request
    waits for learning to reach it): its observations, checkpoint and models, in the listing,
    forecasts, the store and the metrics; the other series are untouched; after a restart it
    stays gone, and a new record starts it afresh. Bad and unknown names get clear errors."""
    directory = short_tempdir()
    url = f"sqlite:///{directory}/adaptd.db"
    config = write_config(directory, store_url=url, metrics=True, naive=False, sections={
        "model": {"window": 16, "patch": 4, "hidden": 8, "rls_lags": 8, "max_horizon": 4, "history": 64}})
    d = DaemonProcess(config)
    try:
        d.start(timeout=60)
        d.ingest([{"series": name, "ts": t * HOUR, "value": float(t % 5)} for t in range(400)
                  for name in ("typo", "load")])
        d.stop()   # checkpoints both series at shutdown
        assert stored(url, model_checkpoints, "typo") == 1
        d = DaemonProcess(config)
        d.start(timeout=60)
        d.ingest([{"series": "typo", "ts": t * HOUR, "value": 1.0} for t in range(400, 3400)])
        removed = run_cli("forget", "typo", config=config)   # 3,000 records may still be learning
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout.strip() == "typo: removed (3400 observations deleted)"
        assert {s["series"] for s in json.loads(run_cli("series", "--json", config=config).stdout)} == {"load"}
        assert d.forecast("typo", 2)["error"]["code"] == "unknown_series"
        assert d.forecast("load", 2)["ok"]
        for table in (observations, model_checkpoints):
            assert stored(url, table, "typo") == 0, table.name
        assert stored(url, observations, "load") == 400
        scraped = urllib.request.urlopen(f"http://{d.settings.metrics.listen}/metrics", timeout=10).read().decode()
        assert "adaptd_series_forgotten_total 1.0" in scraped
        assert 'adaptd_requests_total{op="forget",outcome="ok"} 1.0' in scraped

        again = run_cli("forget", "typo", "load", "--json", config=config)
        assert again.returncode == 1
        first, second = (json.loads(line) for line in again.stdout.splitlines())
        assert first["error"] == {"code": "unknown_series", "message": "no observations of series 'typo'"}
        assert second == {"ok": True, "series": "load", "removed": True, "deleted": 400}
        for bad in ({"op": "forget"}, {"op": "forget", "series": 7}, {"op": "forget", "series": "x" * 201}):
            assert d.request(bad)["error"]["code"] == "bad_request", bad
        d.stop()
        assert stored(url, model_checkpoints, "load") == 0 and stored(url, model_checkpoints, "typo") == 0

        d = DaemonProcess(config)
        d.start(timeout=60)
        assert json.loads(run_cli("series", "--json", config=config).stdout) == []
        d.ingest([{"series": "typo", "ts": 9000 * HOUR, "value": 3.0}])
        [back] = json.loads(run_cli("series", "--json", config=config).stdout)
        assert (back["series"], back["observations"], back["first_ts"]) == ("typo", 1, 9000 * HOUR)
    finally:
        d.kill()
        shutil.rmtree(directory, ignore_errors=True)
