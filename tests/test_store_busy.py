"""An ingest the database cannot commit right now (busy, restarting, unreachable) is refused as
`overloaded`, so clients back off and re-send, and nothing sent behind it goes ahead of it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from adaptd import store as store_module
from adaptd.catalog import SeriesCatalog
from adaptd.config import parse_config
from adaptd.engine.naive import NaiveEngine
from adaptd.ingest import IngestWriter
from adaptd.metrics import Metrics
from adaptd.protocol import Conversation
from adaptd.service import Service
from adaptd.store import Store


def ingest(service: Service, records: list[dict], conversation: Conversation) -> dict:
    line = json.dumps({"op": "ingest", "records": records}).encode()
    return json.loads(asyncio.run(service.handle_line(line, conversation)))


def test_a_batch_the_locked_database_cannot_commit_is_overloaded_and_the_next_one_commits(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "SQLITE_BUSY_MS", 200)
    path = tmp_path / "a.db"
    store = Store.open(f"sqlite:///{path}")
    engine = NaiveEngine(history=64, max_horizon=8)
    catalog, metrics = SeriesCatalog(store.series_summary()), Metrics()
    writer = IngestWriter(store, engine, catalog, metrics)
    writer.start()
    service = Service(parse_config({}), store, writer, engine, catalog, metrics)
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
