"""The learning thread: models learn committed records behind the ack path.

Acks wait only for the store (and the engine's cheap `record`); learning — scoring, gradient
steps, drift detection — runs here, taking everything queued at once so that many series'
records are learnt in one batched step. A bounded backlog keeps memory flat: when learning
falls behind by more than `max_backlog` records, `submit` waits, which slows acks and, through
the ingest queue, makes clients see `overloaded` instead of the daemon growing without limit.

Before that, learning sheds load: a chunk whose oldest record has waited longer than `shed_lag`
seconds is learnt without the recurrent models' gradient steps (most of a learning round's
cost), so the models stay current, and forecasts keep coming from them, through a burst or a
restart's catch-up instead of falling further behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Sequence

from . import liveness
from .engine import Engine
from .metrics import Metrics
from .records import Observation
from .store import Store

log = logging.getLogger(__name__)
SHED_WARNING_EVERY = 60.0   # seconds


class LearningWorker:
    def __init__(self, engine: Engine, store: Store, metrics: Metrics, max_backlog: int = 1_000_000,
                 max_chunk: int = 20_000, headroom: int = 0, shed_lag: float = 0.0):
        self.engine = engine
        self.store = store
        self.metrics = metrics
        self.max_backlog = max_backlog
        # New ingests are refused while the backlog is full (`full`); what was already admitted
        # still arrives, so `submit` blocks only past max_backlog + headroom (the ingest queue).
        self.headroom = headroom
        self.max_chunk = max_chunk
        self.shed_lag = shed_lag            # 0: never shed
        self.shedding = False
        self._warned_at = -float("inf")
        self._queue: deque[tuple[float, Sequence[Observation]]] = deque()   # (submitted at, rows)
        self._backlog = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="adaptd-learner", daemon=True)
        self.last_beat = time.monotonic()
        self._rate = 0.0   # records learnt per second, smoothed over chunks (0: not measured yet)
        self._progress = (0.0, time.monotonic())   # the engine's progress(), when it last changed

    @property
    def backlog(self) -> int:
        return self._backlog

    @property
    def full(self) -> bool:
        return self._backlog >= self.max_backlog

    @property
    def catch_up_seconds(self) -> float:
        """About how long learning needs for its backlog at the rate it has been learning
        (0 until it has learnt a chunk)."""
        return self._backlog / self._rate if self._rate > 0 else 0.0

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def problem(self) -> str | None:
        """Why it is not learning (stopped, or stuck in a step); None: it is. A long step that
        keeps taking rounds or finishing adaptations is moving."""
        now, progress = time.monotonic(), self.engine.progress()
        if progress != self._progress[0]:
            self._progress = (progress, now)
        moved = max(self.last_beat, self._progress[1])
        return liveness.problem("learning thread", self.alive, self._backlog, moved, now)

    def start(self) -> None:
        self._thread.start()

    def submit(self, rows: Sequence[Observation]) -> None:
        with self._cond:
            while self._backlog >= self.max_backlog + self.headroom and not self._stopping and self.alive:
                self._cond.wait(0.5)
            now = time.monotonic()
            if self._backlog == 0:   # idle until now: its wait for work is not a stuck step
                self.last_beat = now
            for start in range(0, len(rows), self.max_chunk):   # a restart's catch-up: many chunks, so it sheds too
                self._queue.append((now, rows[start:start + self.max_chunk]))
            self._backlog += len(rows)
            self.metrics.learning_backlog.set(self._backlog)
            self._cond.notify_all()

    def stop(self, timeout: float | None = None) -> None:
        """Stop learning at the next record boundary. What was not learnt is in the store: the
        next start learns it from there (after its checkpoint)."""
        self.engine.halt_learning()
        with self._cond:
            self._stopping = True
            dropped = self._backlog
            self._queue.clear()
            self._backlog = 0
            self._cond.notify_all()
        if dropped:
            log.info("stopping with %d records not yet learnt; they will be learnt after restart", dropped)
        self._thread.join(timeout)

    def _take(self) -> tuple[list[Observation], float] | None:
        """The next chunk and how long its oldest record has waited (seconds)."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait(1.0)
                self.last_beat = time.monotonic()
            if self._stopping:
                return None
            waited = time.monotonic() - self._queue[0][0]
            chunk: list[Observation] = []
            while self._queue and len(chunk) < self.max_chunk:
                chunk.extend(self._queue.popleft()[1])
            return chunk, waited  # still counted in the backlog until learnt

    def _done(self, n: int) -> None:
        with self._cond:
            self._backlog = max(0, self._backlog - n)
            self.metrics.learning_backlog.set(self._backlog)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            chunk, waited = taken
            self.last_beat = time.monotonic()
            shed = self._should_shed(waited)
            started = time.perf_counter()
            try:
                self.engine.learn(chunk, shed=shed)
                if shed:
                    self.metrics.learning_shed.inc(len(chunk))
            except Exception:
                self.metrics.learning_failed.labels("learn").inc(len(chunk))
                log.exception("models failed to learn %d records; they stay stored", len(chunk))
            seconds = time.perf_counter() - started
            self.metrics.learn_seconds.observe(seconds)
            if seconds > 0:
                rate = len(chunk) / seconds
                self._rate = rate if self._rate == 0 else 0.7 * self._rate + 0.3 * rate
            self._record_drift()    # before `_done`: an empty backlog means learnt and recorded
            self._done(len(chunk))

    def _should_shed(self, waited: float) -> bool:
        shed = 0 < self.shed_lag < waited
        if shed != self.shedding:
            self.shedding = shed
            # Under steady overload shedding turns on and off every few chunks: one warning a
            # minute at most; the counter adaptd_learning_shed_records_total has the detail.
            now = time.monotonic()
            if not shed:
                log.debug("learning caught up (%.2fs behind): recurrent models learn every record again", waited)
                return shed
            loud = now - self._warned_at >= SHED_WARNING_EVERY
            if loud:
                self._warned_at = now
            log.log(logging.WARNING if loud else logging.DEBUG,
                    "learning is %.1fs behind the acks: skipping the recurrent models' gradient steps "
                    "until it catches up ([model] shed_lag = %gs)", waited, self.shed_lag)
        return shed

    def _record_drift(self) -> None:
        """Store the chunk's drift events in SQL (the engine counted each in the metrics as it fired)."""
        events = self.engine.take_drift_events()
        if not events:
            return
        try:
            self.store.add_drift_events(events)
        except Exception:
            log.exception("could not record %d drift events", len(events))
