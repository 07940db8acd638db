"""The store writer when the database is busy or the writer has a bug: an ingest the database
cannot commit right now is refused as `overloaded` (clients back off and re-send) and nothing
sent behind it goes ahead of it; a writer stuck in the database is reported; a bug fails its
step's clients, not every later one."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from adaptd import liveness
from adaptd import service as service_module
from adaptd import store as store_module
from adaptd.catalog import SeriesCatalog
from adaptd.config import parse_config
from adaptd.engine.naive import NaiveEngine
from adaptd.ingest import IngestWriter
from adaptd.metrics import Metrics
from adaptd.protocol import Conversation
from adaptd.records import Observation
from adaptd.service import Service
from adaptd.store import Store


def serving(path: Path, learner: Any = None) -> tuple[Store, IngestWriter, Service, Metrics]:
    """A store at `path`, its running ingest writer (over a naive engine) and the service."""
    store = Store.open(f"sqlite:///{path}")
    engine = NaiveEngine(history=64, max_horizon=8)
    catalog, metrics = SeriesCatalog(store.series_summary()), Metrics()
    writer = IngestWriter(store, engine, catalog, metrics, learner=learner)
    writer.start()
    return store, writer, Service(parse_config({}), store, writer, engine, catalog, metrics), metrics


def ingest(service: Service, records: list[dict], conversation: Conversation) -> dict:
    line = json.dumps({"op": "ingest", "records": records}).encode()
    return json.loads(asyncio.run(service.handle_line(line, conversation)))


def test_a_batch_the_locked_database_cannot_commit_is_overloaded_and_the_next_one_commits(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "SQLITE_BUSY_MS", 200)
    path = tmp_path / "a.db"
    store, writer, service, metrics = serving(path)
    batch = [{"series": "s", "ts": 3600.0 * t, "value": float(t)} for t in range(5)]
    locker = sqlite3.connect(path, isolation_level=None)   # another program holding the write lock
    try:
        locker.execute("BEGIN IMMEDIATE")
        conversation = Conversation()
        refused = ingest(service, batch, conversation)
        assert refused["ok"] is False and refused["error"]["code"] == "overloaded", refused
        message = refused["error"]["message"]
        assert "database is locked" in message and "retry after a short pause" in message
        assert "INSERT" not in message   # the database's reason, not SQLAlchemy's statement
        assert conversation.refused      # what this connection had sent behind it is refused too
        locker.execute("ROLLBACK")
        assert ingest(service, batch, Conversation()) == {"ok": True, "accepted": 5, "rejected": []}
    finally:
        locker.close()
        writer.stop(timeout=20)
    assert [ts for ts, _ in store.history("s")] == [3600.0 * t for t in range(5)]
    assert metrics.value("adaptd_store_commit_failures_total") == 1
    store.close()


def stats(service: Service) -> dict:
    return json.loads(asyncio.run(service.handle_line(b'{"op":"stats"}')))


def test_a_writer_stuck_in_the_database_is_reported_until_it_moves(tmp_path: Path, monkeypatch) -> None:
    """What withholds systemd's watchdog ping (so systemd restarts a daemon whose store hangs)."""
    monkeypatch.setattr(liveness, "STUCK_AFTER", 0.3)
    path = tmp_path / "a.db"
    store, writer, service, metrics = serving(path)
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        time.sleep(0.5)
        assert writer.problem() is None and stats(service)["health"] == "ok"   # idle is not stuck
        locker.execute("BEGIN IMMEDIATE")
        committed = writer.submit([Observation("s", 0.0, 1.0)])   # waits up to busy_timeout (10 s)
        assert writer.problem() is None   # its long idle wait before this work is not a stuck commit
        time.sleep(0.8)
        assert "store writer has not moved for" in (writer.problem() or "")
        assert "store writer has not moved for" in stats(service)["health"]
        locker.execute("ROLLBACK")
        assert committed.result(timeout=20) == 1
        assert writer.problem() is None and stats(service)["health"] == "ok"
    finally:
        locker.close()
        writer.stop(timeout=20)
        store.close()


def test_liveness_names_a_stopped_or_stuck_worker() -> None:
    assert liveness.problem("learning thread", False, 0, 0.0, now=1.0) == "the learning thread stopped"
    assert liveness.problem("learning thread", True, 0, 0.0, now=1e6) is None   # nothing to do
    assert liveness.problem("learning thread", True, 5, 0.0, now=liveness.STUCK_AFTER) is None
    assert liveness.problem("learning thread", True, 5, 0.0, now=liveness.STUCK_AFTER + 1) == (
        f"the learning thread has not moved for {liveness.STUCK_AFTER + 1:.0f}s with 5 records waiting")


class BrokenLearner:
    """A learning thread whose `submit` has a bug for series "bad" (after the commit)."""

    alive = True

    def submit(self, rows) -> None:  # type: ignore[no-untyped-def]
        if any(r.series == "bad" for r in rows):
            raise RuntimeError("a bug after the commit")


def test_a_bug_in_a_writer_step_fails_its_clients_and_the_writer_goes_on(tmp_path: Path) -> None:
    """Before, the writer thread died and every later ingest waited for ever."""
    store, writer, service, _ = serving(tmp_path / "b.db", learner=BrokenLearner())
    try:
        failed = ingest(service, [{"series": "bad", "ts": 0.0, "value": 1.0}], Conversation())
        assert failed["error"]["code"] == "internal" and "re-send it" in failed["error"]["message"]
        assert writer.alive and writer.problem() is None
        assert ingest(service, [{"series": "good", "ts": 0.0, "value": 1.0}], Conversation())["ok"]
    finally:
        writer.stop(timeout=20)
    assert store.history("good") == [(0.0, 1.0)]
    store.close()


class _Orig(Exception):
    """A driver's exception, as psycopg raises them (with the server's SQLSTATE)."""

    def __init__(self, message: str, sqlstate: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize("exc, passing", [
    (sa.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")), True),
    (sa.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full")), False),
    (sa.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("attempt to write a readonly database")), False),
    (sa.exc.OperationalError("INSERT", {}, _Orig("terminating connection", "57P01")), True),   # server restart
    (sa.exc.OperationalError("INSERT", {}, _Orig("connection failure", "08006")), True),
    (sa.exc.OperationalError("INSERT", {}, _Orig("could not serialize", "40001")), True),
    (sa.exc.OperationalError("INSERT", {}, _Orig("disk full", "53100")), False),
    (sa.exc.InterfaceError("INSERT", {}, _Orig("the connection is closed")), True),
    (sa.exc.IntegrityError("INSERT", {}, _Orig("null value", "23502")), False),
    (RuntimeError("a bug"), False),
])
def test_only_a_busy_restarting_or_unreachable_database_is_worth_a_retry(exc: BaseException, passing: bool) -> None:
    """`overloaded` (back off, re-send) for those; `internal` for a full, read-only or broken one."""
    assert service_module._passing(exc) is passing
