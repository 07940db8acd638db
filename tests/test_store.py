"""The SQL store on SQLite and PostgreSQL, and the group-commit ingest writer on top of it."""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from adaptd.catalog import SeriesCatalog
from adaptd.engine import UnknownSeries
from adaptd.engine.naive import NaiveEngine
from adaptd.ingest import IngestWriter
from adaptd.metrics import Metrics
from adaptd.records import Observation as Obs
from adaptd.store import (SCHEMA_VERSION, Checkpoint, SeriesSummary, Store, StoreError, schema_version,
                          series_table)

HOUR = 3600.0


def reopen(store: Store) -> Store:
    url = store.engine.url.render_as_string(hide_password=False)
    store.close()
    return Store.open(url)


# -- schema -------------------------------------------------------------------------------

def test_new_database_gets_the_current_schema(store: Store) -> None:
    assert SCHEMA_VERSION == 3
    assert store.schema_version() == SCHEMA_VERSION
    tables = set(sa.inspect(store.engine).get_table_names())
    assert {"schema_version", "series", "observations", "forecasts", "drift_events",
            "model_checkpoints", "initializers", "meta_training_runs"} <= tables
    assert "forecast_latest" in sa.inspect(store.engine).get_view_names()
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema_version)).scalar_one() == 1


def test_reopening_keeps_data_and_does_not_recreate_the_schema(store: Store) -> None:
    store.write([Obs("a", 1.0, 10.0), Obs("a", 2.0, 20.0), Obs("b", 1.0, -1.5)])
    store.save_checkpoints([Checkpoint("a", "naive", 1, b"state")])
    with store.engine.connect() as conn:
        ids_before = dict(conn.execute(sa.select(series_table.c.name, series_table.c.id)).all())
    store = reopen(store)
    try:
        assert store.history("a") == [(1.0, 10.0), (2.0, 20.0)]
        assert store.history("b") == [(1.0, -1.5)]
        assert store.load_checkpoints() == [Checkpoint("a", "naive", 1, b"state")]
        with store.engine.connect() as conn:
            assert dict(conn.execute(sa.select(series_table.c.name, series_table.c.id)).all()) == ids_before
            assert conn.execute(sa.select(sa.func.count()).select_from(schema_version)).scalar_one() == 1
        # Existing series keep their ids: new records of "a" land in "a", not in a new series.
        store.write([Obs("a", 3.0, 30.0)])
        assert [s.observations for s in sorted(store.series_summary(), key=lambda s: s.name)] == [3, 1]
    finally:
        store.close()


def test_a_newer_schema_is_refused_naming_both_versions(store: Store) -> None:
    store.write([Obs("a", 1.0, 1.0)])
    newer = SCHEMA_VERSION + 41
    with store.engine.begin() as conn:
        conn.execute(schema_version.insert().values(version=newer, applied_at=time.time()))
    url = store.engine.url.render_as_string(hide_password=False)
    store.close()
    with pytest.raises(StoreError) as info:
        Store.open(url).close()
    message = str(info.value)
    assert f"version {newer} is newer" in message
    assert f"({SCHEMA_VERSION})" in message
    # Refusing did not touch the database.
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            versions = sorted(conn.execute(sa.select(schema_version.c.version)).scalars())
            assert versions == [SCHEMA_VERSION, newer]
            assert conn.execute(sa.text("SELECT count(*) FROM observations")).scalar_one() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_database_is_migrated_keeping_its_data(store: Store, version: int) -> None:
    store.write([Obs("a", 1.0, 10.0)])
    store.save_initializer("meta_sgd", 1, b"weights", {}, 0.5, True)
    with store.engine.begin() as conn:   # what it was: version 2 had no runs table, version 1 no view either
        conn.execute(sa.text("DROP TABLE meta_training_runs"))
        if version == 1:
            conn.execute(sa.text("DROP VIEW forecast_latest"))
        conn.execute(sa.delete(schema_version))
        conn.execute(schema_version.insert().values(version=version, applied_at=time.time()))
    store = reopen(store)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert "forecast_latest" in sa.inspect(store.engine).get_view_names()
        assert store.history("a") == [(1.0, 10.0)]
        assert store.newest_promoted_version() == 1
        assert store.meta_runs(5) == []
        store.start_meta_run(1.0)   # the new table is usable
        assert len(store.meta_runs(5)) == 1
    finally:
        store.close()


def test_a_migration_cut_off_after_its_ddl_is_redone(store: Store) -> None:
    """SQLite commits DDL at once: a crash between the new table (or view) and its
    schema_version row leaves both made and the version old. The next start must not fail."""
    with store.engine.begin() as conn:
        conn.execute(sa.delete(schema_version))
        conn.execute(schema_version.insert().values(version=1, applied_at=time.time()))
    store = reopen(store)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert "forecast_latest" in sa.inspect(store.engine).get_view_names()
    finally:
        store.close()


def test_meta_training_runs_are_kept_with_their_outcome(store: Store) -> None:
    """What the daemon's schedule and `adaptd status` read back after a restart."""
    first = store.start_meta_run(100.0)
    store.finish_meta_run(first, "not_enough_data", 130.0, detail="no series is long enough")
    second = store.start_meta_run(200.0)
    assert [(r["id"], r["outcome"]) for r in store.meta_runs(5)] == [(second, None), (first, "not_enough_data")]
    assert [r["id"] for r in store.meta_runs(5, finished_only=True)] == [first]
    assert store.close_unfinished_meta_runs() == 1             # its daemon died during it
    assert store.close_unfinished_meta_runs() == 0
    third = store.start_meta_run(300.0)
    store.finish_meta_run(third, "promoted", 400.0, version=7)
    newest, cut_off, skipped = store.meta_runs(5)
    assert (newest["outcome"], newest["version"], newest["started_at"], newest["finished_at"]) == \
        ("promoted", 7, 300.0, 400.0)
    assert (cut_off["outcome"], cut_off["finished_at"]) == ("interrupted", None)
    assert (skipped["detail"], skipped["version"]) == ("no series is long enough", None)
    assert [r["id"] for r in store.meta_runs(2)] == [third, second]


@pytest.mark.parametrize("damage", ["DROP TABLE schema_version", "DELETE FROM schema_version"])
def test_adaptd_tables_without_schema_version_are_refused(store: Store, damage: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text(damage))
    with pytest.raises(StoreError, match="no schema_version"):
        reopen(store)


@pytest.mark.parametrize("url, expected", [
    ("mysql://adaptd@localhost/adaptd", "mysql"),
    ("nosuchdb://x/y", "nosuchdb"),
    ("not a url at all", "store.url"),
])
def test_unusable_urls_give_store_error(url: str, expected: str) -> None:
    with pytest.raises(StoreError, match=expected):
        Store.open(url)


def test_a_dialect_other_than_sqlite_or_postgresql_is_refused() -> None:
    # A dialect whose driver is importable reaches the dialect check itself.
    engine = sa.create_mock_engine("mysql://", lambda *args, **kwargs: None)
    with pytest.raises(StoreError, match=r"unsupported database 'mysql' \(use sqlite or postgresql\)"):
        Store(engine)  # type: ignore[arg-type]


def test_unreachable_postgresql_gives_store_error() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(StoreError, match="cannot open store"):
        Store.open("postgresql+psycopg://nobody:secret@127.0.0.1:1/adaptd?connect_timeout=2")


def test_password_is_not_shown_in_store_errors() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(StoreError) as info:
        Store.open("postgresql+psycopg://nobody:hunter2@127.0.0.1:1/adaptd?connect_timeout=2")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_one_database_for_all_threads(url: str) -> None:
    store = Store.open(url)
    try:
        writer = threading.Thread(target=store.write, args=([Obs("a", 1.0, 2.0)],))
        writer.start()
        writer.join()
        assert store.history("a") == [(1.0, 2.0)]
    finally:
        store.close()


# -- observations ---------------------------------------------------------------------------

def test_upsert_is_idempotent_and_the_last_value_wins(store: Store) -> None:
    store.write([Obs("a", 1.0, 1.0), Obs("a", 2.0, 2.0)])
    store.write([Obs("a", 1.0, 1.0)])
    store.write([Obs("a", 2.0, 5.0)])
    assert store.history("a") == [(1.0, 1.0), (2.0, 5.0)]
    assert store.series_summary() == [SeriesSummary("a", 2, 1.0, 2.0)]
    store.write([Obs("a", 3.0, 1.0), Obs("a", 3.0, 2.0), Obs("a", 3.0, 3.0)])  # within one write
    assert store.history("a")[-1] == (3.0, 3.0)
    assert store.series_summary() == [SeriesSummary("a", 3, 1.0, 3.0)]
    store.write([])
    assert store.series_summary() == [SeriesSummary("a", 3, 1.0, 3.0)]


def test_history_is_in_time_order_and_limit_keeps_the_newest(store: Store) -> None:
    ts = [5.0, 1.0, 4.0, 2.0, 3.0]
    store.write([Obs("a", t, t * 10) for t in ts] + [Obs("b", 9.0, 0.0)])
    assert store.history("a") == [(t, t * 10) for t in sorted(ts)]
    assert store.history("a", limit=2) == [(4.0, 40.0), (5.0, 50.0)]
    assert store.history("a", limit=50) == store.history("a")
    assert store.history("missing") == []


def test_recent_returns_the_newest_n_of_every_series_in_time_order(store: Store) -> None:
    store.write([Obs("long", float(t), float(t)) for t in (7, 3, 9, 1, 5, 8)]
                + [Obs("short", 100.0, -1.0)]
                + [Obs("other", float(t), 2.0 * t) for t in range(10, 0, -1)])
    close = [1.0]   # times one double apart: the newest 3 begin exactly at the third newest
    for _ in range(3):
        close.append(math.nextafter(close[-1], 2.0))
    store.write([Obs("exact", float(t), 0.0) for t in (1, 2, 3)] + [Obs("close", t, t) for t in close])
    store.save_checkpoints([Checkpoint("no-observations", "naive", 1, b"")])
    recent = store.recent(3)
    assert recent == {
        "long": [(7.0, 7.0), (8.0, 8.0), (9.0, 9.0)],
        "short": [(100.0, -1.0)],
        "other": [(8.0, 16.0), (9.0, 18.0), (10.0, 20.0)],
        "exact": [(1.0, 0.0), (2.0, 0.0), (3.0, 0.0)],
        "close": [(t, t) for t in close[1:]],
    }


def test_series_summary_counts_first_and_last(store: Store) -> None:
    store.write([Obs("a", t, 0.0) for t in (30.0, 10.0, 20.0)] + [Obs("b", -5.0, 1.0)])
    store.save_checkpoints([Checkpoint("no-observations", "naive", 1, b"")])
    summary = sorted(store.series_summary(), key=lambda s: s.name)
    assert summary == [SeriesSummary("a", 3, 10.0, 30.0), SeriesSummary("b", 1, -5.0, -5.0)]


def test_existing_ts_finds_stored_timestamps_over_many_chunks(store: Store) -> None:
    stored = [float(t) for t in range(0, 2400, 2)]  # even seconds
    store.write([Obs("a", t, 1.0) for t in stored] + [Obs("b", 1.0, 1.0)])
    asked = [float(t) for t in range(0, 2400)]  # 2400 probes: several chunks of 500
    with store.engine.connect() as conn:
        ids = store.series_ids(conn, ["a", "b"])
        assert store.existing_ts(conn, ids["a"], asked) == set(stored)
        assert store.existing_ts(conn, ids["b"], asked) == {1.0}
        assert store.existing_ts(conn, ids["a"], [1.0, 3.5]) == set()
        assert store.existing_ts(conn, ids["a"], []) == set()


def test_fractional_and_negative_timestamps_round_trip(store: Store) -> None:
    rows = [Obs("a", -62_135_596_800.0, 1.0), Obs("a", 0.125, 2.0), Obs("a", 1_704_067_200.5, 3.0),
            Obs("a", 253_402_300_799.0, 1e300)]
    store.write(rows)
    assert store.history("a") == [(r.ts, r.value) for r in rows]


def test_unicode_and_long_series_names_are_stored(store: Store) -> None:
    names = ["température/capteur 3", "x" * 200, "負荷 🌡"]
    store.write([Obs(n, 1.0, float(i)) for i, n in enumerate(names)])
    assert sorted(s.name for s in store.series_summary()) == sorted(names)
    assert store.history("x" * 200) == [(1.0, 1.0)]


# -- checkpoints ----------------------------------------------------------------------------

def by_series(c: Checkpoint) -> str:
    return c.series


def test_forecasts_are_replaced_per_series_and_readable_through_the_view(store: Store) -> None:
    from adaptd.engine import Forecast, ForecastPoint

    def forecast(series: str, origin: float, values: list[float]) -> Forecast:
        points = tuple(ForecastPoint(origin + HOUR * (i + 1), v, v - 1, v + 1) for i, v in enumerate(values))
        return Forecast(series, origin, HOUR, points, {"kind": "online"})

    store.write([Obs("a", 0.0, 1.0), Obs("b", 0.0, 1.0)])
    store.save_forecasts([forecast("a", 0.0, [1.0, 2.0, 3.0]), forecast("b", 0.0, [5.0])])
    store.save_forecasts([forecast("a", HOUR, [7.0, 8.0])])   # a newer origin replaces all of a's
    assert store.stored_forecasts("a") == [(1, 2 * HOUR, 7.0, 6.0, 8.0), (2, 3 * HOUR, 8.0, 7.0, 9.0)]
    assert store.stored_forecasts("b") == [(1, HOUR, 5.0, 4.0, 6.0)]
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT target_time, value, lo, hi, origin_time, step FROM forecast_latest "
                                    "WHERE series = 'a' ORDER BY target_time")).all()
    assert [r.value for r in rows] == [7.0, 8.0] and [r.step for r in rows] == [1, 2]
    assert str(rows[0].target_time).startswith("1970-01-01 02:00:00")   # a time Grafana can plot
    assert str(rows[0].origin_time).startswith("1970-01-01 01:00:00")


def test_checkpoints_round_trip_and_overwrite(store: Store) -> None:
    blob = bytes(range(256)) * 10  # every byte value, NULs included
    store.write([Obs("a", 1.0, 1.0)])
    store.save_checkpoints([Checkpoint("a", "naive", 1, blob), Checkpoint("b", "gru", 3, b"\x00")])
    assert sorted(store.load_checkpoints(), key=by_series) == [Checkpoint("a", "naive", 1, blob),
                                               Checkpoint("b", "gru", 3, b"\x00")]
    store.save_checkpoints([Checkpoint("a", "gru", 2, b"newer")])
    assert sorted(store.load_checkpoints(), key=by_series) == [Checkpoint("a", "gru", 2, b"newer"),
                                               Checkpoint("b", "gru", 3, b"\x00")]
    store.save_checkpoints([])
    assert len(store.load_checkpoints()) == 2


def test_a_cluster_member_reads_its_own_share_in_chunks_as_the_whole_filtered(store: Store, monkeypatch) -> None:
    """A cluster member's start-up reads only the series it keeps (filtered in SQL by id, in
    IN lists of ID_CHUNK ids): the same rows as reading everything and keeping its own."""
    import adaptd.store as store_module
    from adaptd.cluster import Membership

    monkeypatch.setattr(store_module, "ID_CHUNK", 7)
    names = [f"m{k}" for k in range(40)]
    store.write([Obs(name, float(t), float(k * 100 + t)) for k, name in enumerate(names) for t in range(5)])
    store.save_checkpoints([Checkpoint(name, "naive", 1, name.encode()) for name in names[::3]])
    ours = Membership(3, 1)
    recent = store.recent(3, ours.owns)
    assert recent == {name: rows for name, rows in store.recent(3).items() if ours.owns(name)}
    assert 5 < len(recent) < 30
    assert sorted(store.series_summary(ours.owns), key=lambda x: x.name) == sorted(
        ours.own(store.series_summary(), key=lambda x: x.name), key=lambda x: x.name)
    assert sorted(store.load_checkpoints(ours.owns), key=by_series) == sorted(
        ours.own(store.load_checkpoints(), key=by_series), key=by_series)
    assert store.recent(3, lambda name: False) == {} and store.load_checkpoints(lambda name: False) == []


# -- initializers ---------------------------------------------------------------------------

def test_only_the_newest_candidates_not_promoted_keep_their_weights(store: Store) -> None:
    """One candidate per scheduled meta-training run: the store must not keep every one's
    weights for ever. Promoted ones (the only ones ever loaded) all keep theirs."""
    from adaptd.schema import initializers
    from adaptd.store import KEPT_CANDIDATES

    promoted = store.save_initializer("meta_sgd", 1, b"promoted", {}, 1.0, True)
    candidates = [store.save_initializer("meta_sgd", 1, b"w" * 100, {"run": k}, 2.0, False) for k in range(6)]
    with store.engine.connect() as conn:
        weights = {v: w for v, w in conn.execute(sa.select(initializers.c.version, initializers.c.payload))}
    assert {v: bytes(w) for v, w in weights.items()} == {
        promoted: b"promoted", **{v: b"w" * 100 if v in candidates[-KEPT_CANDIDATES:] else b"" for v in candidates}}
    assert [row["version"] for row in store.initializer_list()] == sorted([promoted, *candidates], reverse=True)
    assert store.promoted_initializers() == [(promoted, "meta_sgd", 1, b"promoted")]


# -- ids after a rollback -------------------------------------------------------------------

class Boom(Exception):
    pass


def test_forget_ids_after_a_rollback_leaves_no_stale_ids(store: Store) -> None:
    with pytest.raises(Boom):
        with store.engine.begin() as conn:
            store.upsert_observations(conn, [Obs("ghost", 1.0, 1.0)])  # creates "ghost" in this txn
            raise Boom
    store.forget_ids()
    # On SQLite the rolled-back id would be handed to the next new series; a stale cache would
    # then file "ghost" records under "b" (PostgreSQL would refuse them instead).
    store.write([Obs("b", 1.0, 2.0)])
    store.write([Obs("ghost", 2.0, 3.0)])
    assert store.history("b") == [(1.0, 2.0)]
    assert store.history("ghost") == [(2.0, 3.0)]
    assert sorted(store.series_summary(), key=lambda s: s.name) == [
        SeriesSummary("b", 1, 1.0, 1.0), SeriesSummary("ghost", 1, 2.0, 2.0)]


# -- the ingest writer ----------------------------------------------------------------------

class GatedEngine(NaiveEngine):
    """A naive engine whose record() (what the writer calls before the ack) waits for the test."""

    def __init__(self) -> None:
        super().__init__(history=64, max_horizon=8)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def record(self, batch):  # type: ignore[no-untyped-def]
        self.entered.set()
        if not self.gate.wait(10):
            raise AssertionError("the test never opened the gate")
        self.batches.append(len(batch))
        super().record(batch)


class Harness:
    def __init__(self, store: Store, engine: NaiveEngine | None = None, group_records: int = 50_000):
        self.store = store
        self.engine = engine or NaiveEngine(history=64, max_horizon=8)
        self.catalog = SeriesCatalog(store.series_summary())
        self.metrics = Metrics()
        self.writer = IngestWriter(store, self.engine, self.catalog, self.metrics, group_records=group_records)
        self.writer.start()

    def put(self, rows: list[Obs]) -> int:
        return self.writer.submit(rows).result(timeout=20)

    def metric(self, name: str) -> float:
        return self.metrics.value(name)

    def stop(self) -> None:
        if isinstance(self.engine, GatedEngine):
            self.engine.gate.set()
        self.writer.stop(timeout=20)
        assert not self.writer.alive


@pytest.fixture
def harness(store: Store) -> Iterator[Harness]:
    h = Harness(store)
    yield h
    h.stop()


def catalog_matches_store(h: Harness) -> None:
    db = {s.name: s for s in h.store.series_summary()}
    cat = h.catalog.snapshot()
    assert set(cat) == set(db)
    for name, s in db.items():
        assert (cat[name].observations, cat[name].first_ts, cat[name].last_ts) == \
            (s.observations, s.first_ts, s.last_ts), name


def test_a_future_resolves_only_after_commit_and_engine(store: Store) -> None:
    h = Harness(store, GatedEngine())
    try:
        rows = [Obs("a", i * HOUR, float(i)) for i in range(3)]
        done = h.writer.submit(rows)
        assert h.engine.entered.wait(10)  # type: ignore[attr-defined]
        # Committed and visible to other connections, yet not acknowledged: the engine has not seen it.
        assert store.history("a") == [(r.ts, r.value) for r in rows]
        time.sleep(0.05)
        assert not done.done()
        h.engine.gate.set()  # type: ignore[attr-defined]
        assert done.result(timeout=10) == 3
        # Read-your-writes: once the ack is out the engine forecasts from those records.
        assert h.engine.forecast("a", 1).origin == 2 * HOUR
        assert h.metric("adaptd_records_ingested_total") == 3
    finally:
        h.stop()


def test_empty_submit_resolves_immediately(harness: Harness) -> None:
    assert harness.writer.submit([]).result(timeout=1) == 0


def test_concurrent_submits_are_all_committed(store: Store) -> None:
    h = Harness(store, group_records=500)  # small groups: many commits, some grouping
    threads, batches, size = 6, 20, 25
    futures: list[Future[int]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for b in range(batches):
            rows = [Obs(f"s{k}", float(b * size + i), float(k)) for i in range(size)]
            f = h.writer.submit(rows)
            with lock:
                futures.append(f)

    try:
        workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert sum(f.result(timeout=30) for f in futures) == threads * batches * size
        assert sorted(store.series_summary(), key=lambda s: s.name) == [
            SeriesSummary(f"s{k}", batches * size, 0.0, float(batches * size - 1)) for k in range(threads)]
        catalog_matches_store(h)
        assert h.metric("adaptd_records_ingested_total") == threads * batches * size
        assert h.metric("adaptd_records_late_total") == 0
        assert h.writer.pending_records == 0
        assert h.engine.forecast("s3", 1).origin == float(batches * size - 1)
    finally:
        h.stop()


def test_late_and_duplicate_records_are_counted_like_the_database(harness: Harness) -> None:
    h = harness
    h.put([Obs("s", float(t), 1.0) for t in range(10)])          # 10 new, in order
    h.put([Obs("s", 5.0, 99.0)])                                   # re-sent: overwritten
    h.put([Obs("s", 20.0, 2.0)])                                   # new, newest
    h.put([Obs("s", 15.0, 3.0), Obs("s", -5.0, 4.0)])              # new but late (one before first)
    h.put([Obs("s", 15.0, 33.0)])                                  # re-sent late record: overwritten
    h.put([Obs("d", 1.0, 1.0), Obs("d", 1.0, 2.0)])                # duplicate inside one batch
    info = h.catalog.snapshot()["s"]
    assert (info.observations, info.first_ts, info.last_ts) == (13, -5.0, 20.0)
    assert (info.late, info.overwritten) == (2, 2)
    d = h.catalog.snapshot()["d"]
    assert (d.observations, d.late, d.overwritten) == (1, 0, 0)
    catalog_matches_store(h)
    assert h.store.history("s", limit=3) == [(9.0, 1.0), (15.0, 33.0), (20.0, 2.0)]
    assert dict(h.store.history("s"))[5.0] == 99.0
    assert dict(h.store.history("s"))[15.0] == 33.0
    assert h.store.history("d") == [(1.0, 2.0)]
    assert h.metric("adaptd_records_overwritten_total") == 2
    assert h.metric("adaptd_records_late_total") == 2
    assert h.metric("adaptd_records_ingested_total") == 10 + 1 + 1 + 2 + 1 + 1
    # The engine saw the late record in its place and the re-sent value.
    fc_hist = h.engine._series["s"]  # type: ignore[attr-defined]
    assert list(fc_hist.ts) == sorted(fc_hist.ts) and fc_hist.values[fc_hist.ts.index(15.0)] == 33.0


def test_a_restarted_writer_counts_resent_records_as_overwritten(store: Store) -> None:
    first = Harness(store)
    first.put([Obs("s", float(t), 1.0) for t in range(5)])
    first.stop()
    second = Harness(store)  # its catalog comes from the store, as at daemon start-up
    try:
        second.put([Obs("s", 4.0, 7.0), Obs("s", 2.0, 7.0), Obs("s", 5.0, 7.0)])
        info = second.catalog.snapshot()["s"]
        assert (info.observations, info.overwritten, info.late, info.last_ts) == (6, 2, 0, 5.0)
        catalog_matches_store(second)
    finally:
        second.stop()


def test_a_failed_commit_fails_its_futures_and_the_writer_goes_on(harness: Harness) -> None:
    h = harness
    h.put([Obs("good", 1.0, 1.0)])
    bad = h.writer.submit([Obs("fresh", 1.0, 1.0), Obs("good", 2.0, None)])  # type: ignore[arg-type]
    with pytest.raises(sa.exc.IntegrityError):
        bad.result(timeout=20)
    assert h.metric("adaptd_store_commit_failures_total") == 1
    # Nothing of the failed batch is stored, counted or known to the engine.
    assert h.store.history("good") == [(1.0, 1.0)]
    assert "fresh" not in h.catalog
    with pytest.raises(UnknownSeries):
        h.engine.forecast("fresh", 1)
    # The writer still works, and the series created in the rolled-back transaction get real ids.
    assert h.writer.alive
    assert h.put([Obs("other", 5.0, 5.0)]) == 1
    assert h.put([Obs("fresh", 2.0, 2.0), Obs("good", 2.0, 2.0)]) == 2
    assert h.store.history("fresh") == [(2.0, 2.0)]
    assert h.store.history("other") == [(5.0, 5.0)]
    assert h.store.history("good") == [(1.0, 1.0), (2.0, 2.0)]
    catalog_matches_store(h)
    assert h.writer.pending_records == 0


def test_a_missing_table_fails_the_commit_and_recovery_resumes(harness: Harness) -> None:
    h = harness
    h.put([Obs("a", 1.0, 1.0)])
    with h.store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE observations"))
    with pytest.raises(sa.exc.DBAPIError):
        h.writer.submit([Obs("a", 2.0, 2.0)]).result(timeout=20)
    from adaptd.store import observations
    observations.create(h.store.engine)
    assert h.put([Obs("a", 3.0, 3.0)]) == 1
    assert h.store.history("a") == [(3.0, 3.0)]


def test_a_cancelled_future_does_not_stop_the_writer(store: Store) -> None:
    # The socket server awaits asyncio.wrap_future(submit(...)); cancelling that task (e.g. at
    # shutdown) cancels the concurrent future the writer will later resolve.
    h = Harness(store, GatedEngine())
    try:
        cancelled = h.writer.submit([Obs("a", 1.0, 1.0)])
        assert h.engine.entered.wait(10)  # type: ignore[attr-defined]
        assert cancelled.cancel()
        h.engine.gate.set()  # type: ignore[attr-defined]
        assert h.put([Obs("a", 2.0, 2.0)]) == 1
        assert h.writer.alive
        assert store.history("a") == [(1.0, 1.0), (2.0, 2.0)]
    finally:
        h.stop()


def test_stop_commits_everything_already_submitted(store: Store) -> None:
    h = Harness(store, group_records=100)
    futures = [h.writer.submit([Obs("a", float(b * 50 + i), 1.0) for i in range(50)]) for b in range(20)]
    h.stop()
    assert all(f.done() and f.result() == 50 for f in futures)
    assert store.series_summary() == [SeriesSummary("a", 1000, 0.0, 999.0)]
    late = h.writer.submit([Obs("a", 5000.0, 1.0)])
    with pytest.raises(RuntimeError, match="not running"):
        late.result(timeout=1)


@pytest.mark.postgres
def test_a_role_that_may_not_create_tables_gets_store_error(fresh_postgres_url: str) -> None:
    # PostgreSQL 15 no longer lets every role create tables in `public`: a common set-up mistake.
    role = f"limited_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(fresh_postgres_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
            conn.execute(sa.text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
        with pytest.raises(StoreError, match="permission denied for schema public"):
            Store.open(fresh_postgres_url.replace("postgres@", f"{role}@"))
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def test_stores_opened_at_once_on_a_new_postgresql_database_all_open(fresh_postgres_url: str) -> None:
    """Cluster members started together (systemd starts them at once) each create the schema if it
    is missing: one makes it, the others find it, none fails on the race."""
    barrier = threading.Barrier(6)
    outcomes: list[object] = []

    def open_store() -> None:
        barrier.wait()
        try:
            store = Store.open(fresh_postgres_url)
            outcomes.append(store.schema_version())
            store.close()
        except Exception as exc:   # what the test reports
            outcomes.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes == [SCHEMA_VERSION] * 6, outcomes


def test_a_store_the_user_cannot_read_is_a_clear_error_not_a_traceback(tmp_path: Path, monkeypatch) -> None:
    """`adaptd initializers` by a member of adaptd-clients: the store sits in /var/lib/private
    (mode 0700) under DynamicUser, and looking for it raises PermissionError. (Tests often run
    as root, whom no mode stops: the OS's answer is given here.)"""
    store_file = f"{tmp_path}/private/adaptd.db"
    real_stat = os.stat

    def stat(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path) == store_file:
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)
    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(StoreError, match="permission denied .*need the daemon's access"):
        Store.open(f"sqlite:///{store_file}", must_exist=True)
    with pytest.raises(StoreError, match="no store at"):   # missing, not unreadable
        Store.open(f"sqlite:///{tmp_path}/elsewhere/adaptd.db", must_exist=True)
