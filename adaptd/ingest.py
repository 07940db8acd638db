"""The store writer: group commit of validated records, then the engine, then the ack.

Client batches queue up while a commit is in flight; the writer takes everything waiting
(up to `group_records`) into one transaction. That amortises the commit (an fsync) over
many clients, which is what lets socket ingest approach SQLite's raw insert rate.
A batch's future resolves only after its transaction committed and the engine recorded it;
the models learn it afterwards, on the learning thread.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from typing import Any, Callable, NamedTuple, Sequence

import sqlalchemy as sa

from . import liveness
from .catalog import SeriesCatalog
from .engine import Engine
from .learning import LearningWorker
from .metrics import Metrics
from .records import Observation
from .store import Store

log = logging.getLogger(__name__)


class WriterStopped(RuntimeError):
    """The writer is not running (shutdown): what was asked of it was not done."""


class _Batch(NamedTuple):
    rows: Sequence[Observation]
    done: Future[int]


# Why a removal stopped unfinished (`Removal.stopped`).
ARRIVED = "arrived"     # a record for the series arrived after the cutoff: it is kept
LEARNING = "learning"   # its newest records are not learnt yet, or it is being adapted
STOPPED = "stopped"     # the writer is shutting down
GONE = "gone"           # it has no observations (left): removed already, by another removal


class Removal(NamedTuple):
    """How a removal (`IngestWriter.forget`) ended."""
    removed: bool   # whole; False: see `stopped`
    deleted: int    # observations deleted (also by a removal that stopped: they stay deleted)
    stopped: str = ""   # why it did not finish: ARRIVED, LEARNING, STOPPED or GONE


class _Forget(NamedTuple):
    """Remove a series silent since `cutoff` (time.monotonic()) from the store, then from memory."""
    series: str
    cutoff: float
    batch: int
    done: Future[Removal]
    deleted: int = 0                # by the transactions so far,
    start: float = -math.inf        # which left its observations from this time on
    received: float | None = None   # when its newest record had arrived, at the first step


_STOP = object()


def _resolve(done: Future[int], result: int = 0, exception: BaseException | None = None) -> None:
    """Settle a batch's future unless its client cancelled it (e.g. a connection closed at
    shutdown): setting a cancelled future raises, which would kill the writer thread."""
    try:
        if exception is not None:
            done.set_exception(exception)
        else:
            done.set_result(result)
    except InvalidStateError:
        pass


class IngestWriter:
    def __init__(self, store: Store, engine: Engine, catalog: SeriesCatalog, metrics: Metrics,
                 group_records: int = 50_000, learner: LearningWorker | None = None):
        self.store = store
        self.engine = engine
        self.catalog = catalog
        self.metrics = metrics
        self.group_records = group_records
        self.learner = learner
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="adaptd-writer", daemon=True)
        self.last_beat = time.monotonic()

    @property
    def pending_records(self) -> int:
        return self._pending

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def problem(self) -> str | None:
        """Why it is not committing (stopped, or stuck in the store); None: it is."""
        return liveness.problem("store writer", self.alive, self._pending, self.last_beat)

    def start(self) -> None:
        self._thread.start()

    def submit(self, rows: Sequence[Observation]) -> Future[int]:
        """Queue validated records; the future gives their count once committed."""
        done: Future[int] = Future()
        if not rows:
            done.set_result(0)
            return done
        if not self.alive:
            done.set_exception(WriterStopped("the store writer is not running"))
            return done
        if self._pending == 0:   # idle until now: its wait for work is not a stuck commit
            self.last_beat = time.monotonic()
        self._add_pending(len(rows))
        self._queue.put(_Batch(rows, done))
        return done

    def forget(self, series: str, cutoff: float, batch: int) -> Future[Removal]:
        """Remove a series that has received nothing since `cutoff` (`[store] forget_after`, or
        `adaptd forget`):
        its observations `batch` at a time, oldest first, with commits of records in between,
        then its drift events, then its state in the engine and the catalog (its checkpoint:
        `Store.drop_state`).
        Done here, in the thread that commits records, so that a record that arrives for it
        meanwhile is never deleted: it stops the removal (whatever was deleted before stays
        deleted, as retention would have), and so does learning or adapting still going on."""
        done: Future[Removal] = Future()
        if not self.alive:
            done.set_exception(WriterStopped("the store writer is not running"))
        else:
            self._queue.put(_Forget(series, cutoff, batch, done))
        return done

    def stop(self, timeout: float | None = None) -> None:
        """Commit everything already submitted, then stop."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _add_pending(self, n: int) -> None:
        with self._pending_lock:
            self._pending += n
            self.metrics.ingest_queue_records.set(self._pending)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            self.last_beat = time.monotonic()
            if item is _STOP:
                break
            if isinstance(item, _Forget):
                self._guarded(self._forget_step, item, [item])
                continue
            group = [item]
            size = len(item.rows)  # type: ignore[union-attr]
            while size < self.group_records:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                if isinstance(item, _Forget):   # after this group's commit (it may stop the removal)
                    self._queue.put(item)
                    break
                group.append(item)
                size += len(item.rows)  # type: ignore[union-attr]
            self._guarded(self._commit, group, group)
            self._add_pending(-size)
        while True:   # removals not finished: whoever waits for them learns they stopped
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Forget):
                self._forget_stopped(item)

    def _guarded(self, step: Callable[[Any], None], item: Any, waiting: Sequence[_Batch] | Sequence[_Forget]) -> None:
        """Run one step; an error past the store's own (a bug) fails the clients waiting on it
        (unless answered already) instead of ending the thread, which would leave every later
        client waiting for ever."""
        try:
            step(item)
        except Exception as exc:
            log.exception("the store writer failed on a step; its clients get an error")
            for work in waiting:
                _resolve(work.done, exception=exc)  # type: ignore[arg-type]

    def _commit(self, group: list[_Batch]) -> None:
        # The last value of a (series, ts) within a group wins, as across groups. Then time
        # order: a batch sent newest first is not late to itself (the models skip late records).
        latest = {(r.series, r.ts): r for batch in group for r in batch.rows}
        rows = sorted(latest.values(), key=lambda r: r.ts)
        started = time.perf_counter()
        try:
            with self.store.engine.begin() as conn:
                existing = self._already_stored(conn, rows)
                self.store.upsert_observations(conn, rows)
        except Exception as exc:
            self.store.forget_ids()
            self.metrics.commit_failures.inc()
            log.exception("store commit of %d records failed; their clients get an error", len(rows))
            for batch in group:
                _resolve(batch.done, exception=exc)
            return
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.metrics.commit_records.observe(len(rows))
        self._account(rows, existing)
        try:
            self.engine.record(rows)
        except Exception:  # the records are durable; a model that failed to see them must not lose the ack
            self.metrics.learning_failed.labels("record").inc(len(rows))
            log.exception("engine failed to record %d committed records", len(rows))
        if self.learner is not None:
            self.learner.submit(rows)
        for batch in group:
            _resolve(batch.done, result=len(batch.rows))

    def _forget_step(self, item: _Forget) -> None:
        """One transaction of a removal; queued again (behind waiting records) until it is done."""
        name = item.series
        info = self.catalog.get(name)
        if info is None:   # removed by another removal (before this one, or between its steps)
            self._forget_stopped(item, why=GONE)
            return
        try:
            arrived = info.received >= item.cutoff or (item.received is not None and info.received != item.received)
            if arrived or not self.engine.forgettable(name):
                self._forget_stopped(item, why=ARRIVED if arrived else LEARNING)
                return
            count, start = self.store.forget_step(name, item.batch, item.start)
            if start is not None:
                self._queue.put(item._replace(deleted=item.deleted + count, start=start, received=info.received))
                return
            self.engine.forget(name)   # before the catalog: the next pass finds what this left
            self.catalog.forget(name)
            self.metrics.series.set(len(self.catalog))
        except Exception as exc:   # a store error; the writer itself must go on
            log.warning("removing series %r stopped: %s", name, exc,
                        exc_info=not isinstance(exc, sa.exc.SQLAlchemyError))
            self._forget_stopped(item, exc)
            return
        _resolve(item.done, Removal(True, item.deleted + count))   # type: ignore[arg-type]

    def _forget_stopped(self, item: _Forget, exc: BaseException | None = None, why: str = STOPPED) -> None:
        """A removal ends unfinished: what it deleted stays deleted, and the catalog counts that."""
        if item.deleted:
            try:
                first_ts = self.store.first_ts_of(item.series)
            except Exception:
                first_ts = None
            self.catalog.pruned(item.series, item.deleted, first_ts)
        if exc is not None:
            _resolve(item.done, exception=exc)   # type: ignore[arg-type]
        else:
            _resolve(item.done, Removal(False, item.deleted, why))   # type: ignore[arg-type]

    def _already_stored(self, conn: object, rows: list[Observation]) -> set[tuple[str, float]]:
        """(series, ts) pairs that were stored before this group (only late records can be)."""
        suspects: dict[str, list[float]] = {}
        last_ts = self.catalog.last_ts
        for name, ts, _value in rows:
            last = last_ts(name)
            if last is not None and ts <= last:
                suspects.setdefault(name, []).append(ts)
        if not suspects:
            return set()
        ids = self.store.series_ids(conn, suspects)  # type: ignore[arg-type]
        return {(name, ts) for name, tss in suspects.items()
                for ts in self.store.existing_ts(conn, ids[name], tss)}  # type: ignore[arg-type]

    def _account(self, rows: list[Observation], existing: set[tuple[str, float]]) -> None:
        before = len(self.catalog)
        late = self.catalog.record(rows, existing)
        self.metrics.records_ingested.inc(len(rows))
        if existing:
            self.metrics.records_overwritten.inc(len(existing))
        if late:
            self.metrics.records_late.inc(late)
        if len(self.catalog) != before:
            self.metrics.series.set(len(self.catalog))
