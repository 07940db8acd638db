"""The daemon's meta-learning jobs: re-learn θ* on a schedule, pick up promoted versions live.

Meta-training runs as its own process (`adaptd meta-train`): its torch threads and memory never
compete with forecasts for the daemon's GIL, and a crash there cannot take the daemon down. It
runs `[meta] nice` steps below the daemon's CPU priority: when both want a core, the daemon
gets it.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

import sqlalchemy as sa

from ..config import Settings
from ..engine.base import Engine
from ..engine.factory import online_config, stored_initializer
from ..metrics import Metrics
from ..store import Store, StoreError
from .train import ALGORITHMS

log = logging.getLogger(__name__)

EXIT_NOT_ENOUGH_DATA = 3
# An overdue run starts this long after the daemon does, not with it: start-up first learns the
# stored history.
OVERDUE_DELAY = 300.0
MAX_BACKOFF = 12                     # doublings of OVERDUE_DELAY (the interval caps it anyway)
# How a run can end by itself; the others (`stopped` at shutdown, `interrupted` by a daemon
# that died) were cut off and do not count as a run for the schedule.
ENDED_ON_ITS_OWN = ("promoted", "not_promoted", "not_enough_data", "failed")
DETAIL_CHARS = 500                   # of the trainer's last stderr line, kept with the run


class InitializerJobs:
    def __init__(self, settings: Settings, store: Store, engine: Engine, metrics: Metrics, trains: bool = True):
        """`trains`: whether this daemon runs the scheduled meta-training (in a cluster, member 0
        does); the others only pick up what it promotes."""
        self.settings = settings
        self.store = store
        self.engine = engine
        self.metrics = metrics
        self.trains = trains
        self._newest_seen: int | None = store.newest_promoted_version()
        self._proc: subprocess.Popen[str] | None = None
        self._run_id: int | None = None      # the store's row of the run in progress
        # Finished runs' ends the store did not take, by run id (the retrain and refresh jobs
        # run in different threads: under the lock).
        self._unrecorded: dict[int, tuple[Any, ...]] = {}
        self._unrecorded_lock = threading.Lock()
        self._stopping = False
        if trains:   # a run without an outcome was cut off when its daemon died
            self._store_safely("close the unfinished runs of", store.close_unfinished_meta_runs)
        # For `adaptd status`: when the run in progress started (wall clock) and how far it
        # got, and how the newest finished one ended (from the store: it outlives restarts).
        self.running_since: float | None = None
        self.progress: dict[str, Any] | None = None
        self.last_run: dict[str, Any] | None = self._newest_finished_run()
        if trains:   # the alerts' view of the schedule outlives restarts too
            for run in self._store_safely("read", self.store.meta_runs, 1, True, ENDED_ON_ITS_OWN) or []:
                metrics.meta_training_ended(run["outcome"], run["finished_at"])

    def refresh(self) -> None:
        """Switch to the best-fitting promoted initializer when a newer one appears (and, on a
        daemon that does not train, learn how the trainer's newest run ended)."""
        if not self.trains:
            self.last_run = self._newest_finished_run()
        else:
            self.record_ends()
        newest = self.store.newest_promoted_version()
        if newest == self._newest_seen:
            return
        self._newest_seen = newest
        init = stored_initializer(self.settings, self.store, online_config(self.settings))
        current = getattr(self.engine, "init", None)
        if current is None or init.version == current.version:
            return
        self.engine.set_initializer(init)   # type: ignore[attr-defined]
        self.metrics.initializer.clear()
        self.metrics.initializer.labels(init.kind, init.label).set(1)
        log.info("series now restart from %s initializer version %s", init.kind, init.version)

    def first_run(self, now: float) -> float:
        """When the first scheduled run is due: `retrain_interval` after the newest run that
        ended on its own (whatever its outcome) or meta-trained initializer stored (a run by
        hand counts too); on a store never meta-trained, after its first series came. So the
        schedule survives restarts: a daemon restarted more often than the interval would
        otherwise never run it, and one restarted daily would retry a doomed run at each start.

        When that time has passed the run starts soon after start, later the more runs in a row
        restarts cut off (OVERDUE_DELAY doubled each time, at most one interval): a daemon
        restarted more often than a run lasts would otherwise start one, in vain, each time."""
        interval = self.settings.meta.retrain_interval
        cut_off, ended = 0, None
        # (Past MAX_BACKOFF cut-off runs in a row the back-off no longer grows; the run before
        # them then counts only through the initializer it stored, if any.)
        for run in self.store.meta_runs(MAX_BACKOFF + 1):
            if run["outcome"] in ENDED_ON_ITS_OWN:
                ended = run["finished_at"]
                break
            cut_off += 1
        stored = self.store.newest_initializer_time(ALGORITHMS)
        last = max((t for t in (ended, stored) if t is not None), default=None)
        if last is None:
            last = self.store.first_series_time()
        if last is None:
            return now + interval
        delay = min(OVERDUE_DELAY * 2 ** min(cut_off, MAX_BACKOFF), interval)
        return min(max(float(last) + interval, now + delay), now + interval)

    def retrain(self) -> None:
        """Run `adaptd meta-train` on the store's history; count the outcome; pick up the result."""
        if self._stopping:   # due between stop() and the scheduler's shutdown
            return
        self.running_since, started = time.time(), time.monotonic()
        self._run_id = self._store_safely("record the start of", self.store.start_meta_run, self.running_since)
        try:
            self._retrain(started)
        finally:
            if self.running_since is not None:   # no outcome yet: stopped at shutdown, or broke here
                if self._stopping:
                    self._record("stopped")
                else:
                    self._count("failed", started, detail="the daemon lost track of the run: see its log")

    def _retrain(self, started: float) -> None:
        argv = [sys.executable, "-m", "adaptd", "meta-train", "--json", "--no-progress", "--progress-lines",
                "--nice", str(self.settings.meta.nice)]
        if self.settings.source not in ("<defaults>", "<config>"):
            argv += ["--config", self.settings.source]
        log.info("meta-training the initializer on stored history")
        try:
            proc = self._run(argv)
        except OSError as exc:
            self._count("failed", started, detail=f"could not start: {exc}")
            log.error("meta-training could not start: %s", exc)
            return
        if self._stopping and proc.returncode < 0:   # ended by stop()'s signal (one that finished first counts)
            return
        reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:DETAIL_CHARS]
        if proc.returncode == EXIT_NOT_ENOUGH_DATA:
            self._count("not_enough_data", started, detail=reason)
            log.info("meta-training skipped: %s", reason)
            return
        report: dict[str, Any] = {}
        if proc.returncode == 0:
            try:
                report = json.loads(proc.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                report = {}
        if not report:
            self._count("failed", started, detail=reason)
            log.error("meta-training failed (exit %d): %s", proc.returncode, proc.stderr.strip()[-2000:])
            return
        self._count("promoted" if report["promoted"] else "not_promoted", started, report["version"])
        log.info("meta-training stored initializer version %s (validation %.4f, %s)", report["version"],
                 report["val_score"], "promoted" if report["promoted"] else "not promoted")
        if not self._stopping:   # (the next start picks it up)
            self.refresh()

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """Run the trainer to its end (stoppable meanwhile by stop()), keeping its newest
        progress line (with when it came); its stdout without those lines. Its stderr goes to
        a file: a pipe nobody reads while stdout is read could fill and stall it."""
        with tempfile.TemporaryFile() as errors:
            # Its own session: a Ctrl-C at the daemon's terminal is the daemon's to handle (stop()
            # ends the run and records it as stopped), not the trainer's to die of first.
            self._proc = proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True,
                                                 errors="replace", start_new_session=True)
            rest = []
            try:
                if self._stopping:   # stop() came between the start of this run and here
                    proc.terminate()
                assert proc.stdout is not None
                with proc.stdout:
                    for line in proc.stdout:
                        progress = _progress(line)
                        if progress is not None:
                            self.progress = {**progress, "at": time.time()}
                        else:
                            rest.append(line)
            except BaseException:
                proc.kill()   # reading failed: do not leave the trainer running unwatched
                raise
            finally:
                proc.wait()
                self._proc = None
            errors.seek(0)
            return subprocess.CompletedProcess(argv, proc.returncode, "".join(rest),
                                               errors.read().decode(errors="replace"))

    def stop(self) -> None:
        """At shutdown: end a meta-training run in progress (it stores nothing unfinished)."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            log.info("stopping the meta-training run in progress")
            proc.terminate()

    def _count(self, outcome: str, started: float, version: int | None = None, detail: str | None = None) -> None:
        seconds = time.monotonic() - started
        self.metrics.meta_training_runs.labels(outcome).inc()
        self.metrics.meta_training_seconds.set(seconds)
        self._record(outcome, version, detail)

    def _record(self, outcome: str, version: int | None = None, detail: str | None = None) -> None:
        """The run is over: status shows it as the last one, and the store keeps it."""
        finished, started_at = time.time(), self.running_since
        assert started_at is not None, "a run is recorded over once, by retrain"
        self.running_since = self.progress = None
        self.last_run = _run_state(outcome, started_at, finished, version, detail)
        if outcome in ENDED_ON_ITS_OWN:
            self.metrics.meta_training_ended(outcome, finished)
        run_id, self._run_id = self._run_id, None
        if run_id is not None:
            with self._unrecorded_lock:
                self._unrecorded[run_id] = (outcome, finished, version, detail)
            self.record_ends()

    def record_ends(self) -> None:
        """Write finished runs' ends to the store, keeping those it does not take for the next
        refresh (and the daemon's last try at shutdown): a run left without an outcome would
        count as cut off at the next start, and back off the schedule."""
        with self._unrecorded_lock:
            for run_id, end in list(self._unrecorded.items()):
                if self._store_safely("record the end of", self.store.finish_meta_run, run_id, *end,
                                      failed=False) is not False:
                    del self._unrecorded[run_id]

    def _newest_finished_run(self) -> dict[str, Any] | None:
        runs = self._store_safely("read", self.store.meta_runs, 1, True)
        if not runs:
            return None
        run = runs[0]
        return _run_state(run["outcome"], run["started_at"], run["finished_at"], run["version"], run["detail"])

    def _store_safely(self, what: str, call: Callable[..., Any], *args: Any, failed: Any = None) -> Any:
        """A store call whose failure must not stop the run (a database down now may be up by
        the time the trainer reads it): logged, `failed` returned."""
        try:
            return call(*args)
        except (StoreError, sa.exc.SQLAlchemyError) as exc:
            log.warning("could not %s the meta-training run in the store: %s", what, exc)
            return failed


def _run_state(outcome: str, started: float, finished: float | None, version: int | None,
               detail: str | None) -> dict[str, Any]:
    """How a run ended, as status shows it (`finished` None: cut off at an unknown time)."""
    return {"outcome": outcome, "started": started, "finished": finished,
            "seconds": None if finished is None else round(finished - started, 1), "version": version,
            "detail": detail}


def _progress(line: str) -> dict[str, Any] | None:
    """A `meta-train --progress-lines` line's content; None for any other line."""
    if not line.startswith('{"progress"'):
        return None
    try:
        progress = json.loads(line)["progress"]
        counts = int(progress["iteration"]), int(progress["iterations"])
        eta = float(progress["eta_s"])
    except (ValueError, KeyError, TypeError):
        return None
    if not math.isfinite(eta) or min(counts) < 0:
        return None
    return {"iteration": counts[0], "iterations": counts[1], "eta_s": eta}
