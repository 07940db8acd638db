"""The store writer: group commit of validated records, then the engine, then the ack.

Client batches queue up while a commit is in flight; the writer takes everything waiting
(up to `group_records`) into one transaction. That amortises the commit (an fsync) over
many clients, which is what lets socket ingest approach SQLite's raw insert rate.
A batch's future resolves only after its transaction committed and the engine recorded it;
the models learn it afterwards, on the learning thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from typing import NamedTuple, Sequence

from .catalog import SeriesCatalog
from .engine import Engine
from .learning import LearningWorker
from .metrics import Metrics
from .records import Observation
from .store import Store

log = logging.getLogger(__name__)


class _Batch(NamedTuple):
    rows: Sequence[Observation]
    done: Future[int]


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

    def start(self) -> None:
        self._thread.start()

    def submit(self, rows: Sequence[Observation]) -> Future[int]:
        """Queue validated records; the future gives their count once committed."""
        done: Future[int] = Future()
        if not rows:
            done.set_result(0)
            return done
        if not self.alive:
            done.set_exception(RuntimeError("the store writer is not running"))
            return done
        self._add_pending(len(rows))
        self._queue.put(_Batch(rows, done))
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
                group.append(item)
                size += len(item.rows)  # type: ignore[union-attr]
            self._commit(group)  # type: ignore[arg-type]
            self._add_pending(-size)

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
            log.exception("engine failed to record %d committed records", len(rows))
        if self.learner is not None:
            self.learner.submit(rows)
        for batch in group:
            _resolve(batch.done, result=len(batch.rows))

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
