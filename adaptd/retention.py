"""Retention: the store keeps `[store] retention` seconds of each series' history, and forgets
series silent for `[store] forget_after` seconds.

Counted back from each series' newest record (or from now, if that is dated later), not from
the clock: a series whose newest record is old (a backfill, or one that stopped reporting)
keeps its last stretch. Late records older than the cut go at the next pass. The newest
`[model] history` observations of every series always stay: a restart restores from them. Drift
events before the cut go with the observations (meta-training cuts its tasks at them). Deletes
run in short transactions of BATCH rows, so ingest commits (SQLite has one writer) never wait
long for them. In a cluster each member prunes the series it serves.

That last stretch is what `forget_after` is for: series that come and go (hosts, containers)
would otherwise add up in the store and in the daemon's memory. A series that has received no
record for that long (by arrival, on a steady clock) is removed whole by the ingest writer
(`IngestWriter.forget`, which keeps any record that arrives meanwhile), first thing in a pass.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from typing import Any, Callable

import sqlalchemy as sa

from .catalog import SeriesCatalog
from .ingest import IngestWriter, Removal
from .metrics import Metrics
from .store import Owns, Store, StoreError

log = logging.getLogger(__name__)

BATCH = 5000   # observations per delete transaction: tens of milliseconds of SQLite's write lock


class Retention:
    def __init__(self, store: Store, keep_seconds: float, keep_newest: int, metrics: Metrics,
                 owns: Owns | None = None, catalog: SeriesCatalog | None = None,
                 forget_after: float = 0.0, writer: IngestWriter | None = None,
                 drop_state: Callable[[list[str]], int] | None = None):
        """`catalog`: the daemon's counts of each series' observations, kept exact (and when its
        series last received a record: `forget_after` needs it, and the `writer`). `drop_state`:
        what deletes removed series' checkpoints (default `Store.drop_state`; the daemon's keeps
        clear of its checkpoints)."""
        if forget_after > 0 and (catalog is None or writer is None):
            raise ValueError("forgetting silent series needs the catalog and the ingest writer")
        self.store = store
        self.catalog = catalog
        self.keep_seconds = keep_seconds
        self.keep_newest = keep_newest
        self.forget_after = forget_after
        self.writer = writer
        self.drop_state = drop_state or store.drop_state
        self.metrics = metrics
        self.owns = owns
        self._stopping = threading.Event()
        self._last_success = 0.0   # when the newest pass that went through every series ended
        self.last_pass: dict[str, Any] | None = None   # for `adaptd status`

    def prune(self) -> None:
        """One pass over every series (the scheduled job); stops early at shutdown."""
        started, at = time.monotonic(), time.time()
        done = {"deleted": 0, "series": 0, "forgotten": 0}   # so far: a store error keeps the count
        error = None
        forgetting = 0   # observations of forgotten series
        try:
            if self.forget_after > 0:
                self._forget_silent(done)
            forgetting = done["deleted"]
            if self.keep_seconds > 0:
                self._cut(done)
        except Exception as exc:   # a store error (or a bug: then with its traceback); the next pass goes on
            error = " ".join(str(getattr(exc, "orig", None) or exc).split()) or type(exc).__name__
            self.metrics.retention_failures.inc()
            log.warning("retention pass stopped after deleting %d observations: %s", done["deleted"], error,
                        exc_info=not isinstance(exc, (StoreError, sa.exc.SQLAlchemyError)))
            # Passes that each get partway and fail do not get through: back to the last whole one.
            self.metrics.retention_progress.set(self._last_success)
        else:
            self._last_success = time.time()
            self.metrics.retention_success.set(self._last_success)
            self.metrics.retention_progress.set(self._last_success)
        seconds = time.monotonic() - started
        self.metrics.retention_seconds.set(seconds)
        self.last_pass = {"at": at, "seconds": round(seconds, 2), **done, "error": error}
        if done["forgotten"]:
            log.info("retention: forgot %d series that received nothing for %gs ([store] forget_after), "
                     "deleting %d observations", done["forgotten"], self.forget_after, forgetting)
        if done["series"]:
            log.info("retention: deleted %d observations of %d series (older than %gs before each one's "
                     "newest record) in %.1fs", done["deleted"] - forgetting, done["series"], self.keep_seconds,
                     seconds)

    def _cut(self, done: dict[str, int]) -> None:
        """Delete what `keep_seconds` no longer keeps, series by series."""
        for series_id, name in self.store.series_to_prune(self.owns):
            if self._stopping.is_set():
                return
            if self.catalog is not None and name not in self.catalog:   # no observations: forgotten
                continue
            cutoff = self.store.prune_cutoff(series_id, self.keep_seconds, self.keep_newest, time.time())
            start: float | None = -math.inf if cutoff is not None else None
            here = 0
            try:
                while start is not None and not self._stopping.is_set():
                    assert cutoff is not None
                    count, start = self.store.prune_before(series_id, cutoff, BATCH, start)
                    here += count
                    self.metrics.retention_deleted.inc(count)
            finally:
                if here:
                    done["deleted"] += here
                    done["series"] += 1
                    if self.catalog is not None:
                        self.catalog.pruned(name, here, self.store.first_ts(series_id))
            self.metrics.retention_progress.set(time.time())   # a long pass is not a hung one

    def _forget_silent(self, done: dict[str, int]) -> None:
        """Remove the series that have received nothing for `forget_after` seconds, one at a
        time (the writer's removal fails only by a store error, which ends the pass), then their
        checkpoints. Not one when no series at all has received anything for that long: then
        the feed is down, not the series."""
        assert self.catalog is not None and self.writer is not None
        cutoff = time.monotonic() - self.forget_after
        silent = self.catalog.silent_since(cutoff)
        if silent and len(silent) == len(self.catalog):
            log.warning("no series has received a record for %gs: forgetting none of them ([store] "
                        "forget_after) while nothing arrives at all", self.forget_after)
            return
        removed: list[str] = []
        try:
            for name in silent:
                if self._stopping.is_set():
                    return
                removal = self._wait(self.writer.forget(name, cutoff, BATCH))
                if removal is None:   # shutdown: the writer finishes or stops the removal
                    return
                done["deleted"] += removal.deleted
                self.metrics.retention_deleted.inc(removal.deleted)
                if removal.removed:   # else a record came, or learning has not reached its newest one yet
                    removed.append(name)
                    done["forgotten"] += 1
                    self.metrics.series_forgotten.inc()
                    self.metrics.retention_progress.set(time.time())
        finally:
            if removed:
                self.drop_state(removed)

    def _wait(self, pending: concurrent.futures.Future[Removal]) -> Removal | None:
        """The removal's outcome; None at shutdown."""
        assert self.writer is not None
        while not self._stopping.is_set():
            try:
                return pending.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                if not self.writer.alive:
                    raise RuntimeError("the ingest writer stopped with a removal queued") from None
        return None

    def stop(self) -> None:
        self._stopping.set()
