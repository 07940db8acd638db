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
import time
from typing import Any

from ..config import Settings
from ..engine.base import Engine
from ..engine.factory import online_config, stored_initializer
from ..metrics import Metrics
from ..store import Store
from .train import ALGORITHMS

log = logging.getLogger(__name__)

EXIT_NOT_ENOUGH_DATA = 3
# An overdue run starts this long after the daemon does, not with it: start-up first learns the
# stored history.
OVERDUE_DELAY = 300.0


class InitializerJobs:
    def __init__(self, settings: Settings, store: Store, engine: Engine, metrics: Metrics):
        self.settings = settings
        self.store = store
        self.engine = engine
        self.metrics = metrics
        self._newest_seen: int | None = store.newest_promoted_version()
        self._proc: subprocess.Popen[str] | None = None
        self._stopping = False
        # For `adaptd status` (since the daemon started): when the run in progress started
        # (wall clock) and how far it got, and how the newest finished one ended.
        self.running_since: float | None = None
        self.progress: dict[str, Any] | None = None
        self.last_run: dict[str, Any] | None = None

    def refresh(self) -> None:
        """Switch to the best-fitting promoted initializer when a newer one appears."""
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
        """When the first scheduled run is due: `retrain_interval` after the newest stored
        meta-trained initializer, or on a store never meta-trained after its first series came,
        so that the schedule survives restarts (a daemon restarted more often than the interval
        would otherwise never run it); soon after start when that is past.

        Counted from when a run stored its result, so each restart moves the schedule later by
        one run's length; a run that stored nothing (too little history, failed, stopped by the
        restart) leaves the clock where it was, so the next start tries again."""
        interval = self.settings.meta.retrain_interval
        last = self.store.newest_initializer_time(ALGORITHMS)
        if last is None:
            last = self.store.first_series_time()
        if last is None:
            return now + interval
        return min(max(float(last) + interval, now + OVERDUE_DELAY), now + interval)

    def retrain(self) -> None:
        """Run `adaptd meta-train` on the store's history; count the outcome; pick up the result."""
        self.running_since = time.time()
        try:
            self._retrain()
        finally:
            self.running_since = self.progress = None

    def _retrain(self) -> None:
        argv = [sys.executable, "-m", "adaptd", "meta-train", "--json", "--no-progress", "--progress-lines",
                "--nice", str(self.settings.meta.nice)]
        if self.settings.source not in ("<defaults>", "<config>"):
            argv += ["--config", self.settings.source]
        started = time.monotonic()
        log.info("meta-training the initializer on stored history")
        try:
            proc = self._run(argv)
        except OSError as exc:
            self._count("failed", started)
            log.error("meta-training could not start: %s", exc)
            return
        if self._stopping:
            return
        if proc.returncode == EXIT_NOT_ENOUGH_DATA:
            self._count("not_enough_data", started)
            log.info("meta-training skipped: %s", (proc.stderr.strip().splitlines() or ["not enough data"])[-1])
            return
        report: dict[str, Any] = {}
        if proc.returncode == 0:
            try:
                report = json.loads(proc.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                report = {}
        if not report:
            self._count("failed", started)
            log.error("meta-training failed (exit %d): %s", proc.returncode, proc.stderr.strip()[-2000:])
            return
        self._count("promoted" if report["promoted"] else "not_promoted", started, report["version"])
        log.info("meta-training stored initializer version %s (validation %.4f, %s)", report["version"],
                 report["val_score"], "promoted" if report["promoted"] else "not promoted")
        self.refresh()

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """Run the trainer to its end (stoppable meanwhile by stop()), keeping its newest
        progress line (with when it came); its stdout without those lines. Its stderr goes to
        a file: a pipe nobody reads while stdout is read could fill and stall it."""
        with tempfile.TemporaryFile() as errors:
            self._proc = proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True,
                                                 errors="replace")
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

    def _count(self, outcome: str, started: float, version: int | None = None) -> None:
        seconds = time.monotonic() - started
        self.metrics.meta_training_runs.labels(outcome).inc()
        self.metrics.meta_training_seconds.set(seconds)
        self.running_since = self.progress = None   # over: status shows this run as the last one
        self.last_run = {"outcome": outcome, "finished": time.time(), "seconds": round(seconds, 1),
                         "version": version}


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
