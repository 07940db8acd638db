"""The daemon's lifecycle: startup -> serve until SIGTERM/SIGINT -> graceful shutdown.

Startup waits (bounded) for a database that is not up yet, then restores state from the store
before binding the socket, so `READY=1` means "answers forecasts as before the restart" (as the
models answered once they had learnt every record).
Shutdown stops accepting, lets requests in flight finish, commits everything
acknowledged-or-queued, then removes the socket. A second SIGTERM/SIGINT during shutdown
exits at once.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from . import liveness
from .catalog import SeriesCatalog
from .catch_up import with_unlearnt
from .cluster import CLAIM_CHECK, Claim, ClaimRefused
from .config import Settings
from .engine.base import Engine, NotReady, UnknownSeries
from .engine.naive import NaiveEngine
from .ingest import IngestWriter
from .learning import LearningWorker
from .metrics import Metrics
from .retention import Retention
from .sdnotify import Notifier, StillStarting
from .server import SocketServer, claim_socket, refuse_if_served
from .service import Service
from .store import Store, redact
from .store_wait import open_store

# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). The
# learning and store threads run Python between their numpy/torch calls; with the default, an
# answer on the event loop waited for them. Measured with `adaptd bench latency --series 1000`
# (1 observation per series per second, 4 clients): 1 ms gave 1.6x the answers/s, p50 1.6 -> 1.1
# ms, p99 5.0 -> 3.4 ms, and learning was no slower.
GIL_SWITCH_INTERVAL = 0.001

if TYPE_CHECKING:
    from .meta.schedule import InitializerJobs

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The first retention pass runs this soon after start, not an interval later: a daemon restarted
# more often than the interval would otherwise never prune.
RETENTION_DELAY = 10.0


class StartupError(RuntimeError):
    """The daemon cannot start as configured; the message names the setting."""


class Daemon:
    def __init__(self, settings: Settings, metrics: Metrics | None = None, notifier: Notifier | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier()
        self._stop = asyncio.Event()
        self.store: Store | None = None
        self.writer: IngestWriter | None = None
        self.server: SocketServer | None = None
        self.service: Service | None = None
        self.engine: Engine | None = None
        self.learner: LearningWorker | None = None
        self.scheduler = None
        self._metrics_server = None
        self._initializer_jobs: InitializerJobs | None = None
        self._retention: Retention | None = None
        # Held while a checkpoint is taken and saved, and while a removed series' state is
        # deleted: so a checkpoint taken before a removal is never saved after its deletion.
        self._checkpoint_lock = threading.Lock()
        self._claim: int | None = None   # the socket's lock file, held while this process lives
        self._share: Claim | None = None   # this daemon's hold on its series in the store
        self.ours = settings.membership()   # with [cluster], only the series that hash to this daemon

    async def startup(self) -> bool:
        """Restore state and bind the socket; False when stopped while waiting for the store."""
        s = self.settings
        started = time.monotonic()
        log.info("starting adaptd with %s; store %s", s.source, redact(s.store.url))
        # Before the store: its series are the other daemon's. The lock settles two starting at
        # once; the probe, one serving that holds no lock (an older adaptd, another host's mount).
        self._claim = claim_socket(s.socket_path())
        refuse_if_served(s.socket_path())
        ours = self.ours

        def claim(store: Store) -> None:   # before the migration: a refused daemon changes nothing
            if self._share is not None:    # an attempt that failed after claiming (unreachable)
                self._share.release()
            self._share = Claim(store, ours)

        try:
            self.store = await self._open_store(claim)
        except ClaimRefused as exc:
            raise StartupError(str(exc)) from None
        if self.store is None:
            return False
        self.metrics.store_claim.set(1)
        owns = None if ours.alone else ours.owns   # a cluster member reads its own share of the store
        # Reading a large store takes minutes (each series' count and times, its newest records):
        # systemd is told so, phase by phase, instead of killing the start at TimeoutStartSec.
        starting = StillStarting(self.notifier, "counting each series' stored records")
        still = asyncio.create_task(starting.run())
        try:
            catalog = SeriesCatalog(await asyncio.to_thread(self.store.series_summary, owns))
            starting.phase = "building the models"
            self.engine = engine = await asyncio.to_thread(self._build_engine)
            starting.phase = f"reading the newest records of {len(catalog)} series"
            recent = await asyncio.to_thread(self.store.recent, s.model.history, owns)
            starting.phase = "restoring checkpoints"
            checkpoints = await asyncio.to_thread(self.store.load_checkpoints, owns)
            pending = await asyncio.to_thread(engine.restore, recent, checkpoints)
            starting.phase = "reading the records checkpoints missed"
            # Half the backlog at most: ingest after the restart must still find room.
            pending = await asyncio.to_thread(with_unlearnt, self.store, engine, recent, pending,
                                              s.model.learning_backlog // 2)
        finally:
            still.cancel()
        self.metrics.series.set(len(catalog))
        self._watch(engine, catalog)
        self.learner = LearningWorker(engine, self.store, self.metrics, s.model.learning_backlog,
                                      headroom=s.server.max_pending_records + s.server.max_batch_records,
                                      shed_lag=s.model.shed_lag)
        self.learner.start()
        if pending:   # learnt in the background; the fallback answers those series meanwhile
            await asyncio.to_thread(self.learner.submit, pending)
        self.writer = IngestWriter(self.store, engine, catalog, self.metrics, s.ingest.group_commit_records,
                                   self.learner)
        self.writer.start()
        self._start_scheduler(catalog)
        self.service = service = Service(
            s, self.store, self.writer, engine, catalog, self.metrics, self.learner,
            meta_training=self._meta_training if self._initializer_jobs is not None else None,
            retention=self._retention_state, drop_state=self.drop_state)
        try:
            self._metrics_server = self.metrics.serve(s.metrics.listen)
        except OSError as exc:
            raise StartupError(f"metrics.listen = {s.metrics.listen!r}: {exc.strerror}") from None
        server = SocketServer(s.socket_path(), service.handle_line, self.metrics,
                              mode=s.socket_mode(), group=s.server.socket_group,
                              max_line_bytes=s.server.max_line_bytes, max_connections=s.server.max_connections,
                              request_timeout=s.server.request_timeout)
        _freeze_startup_heap()
        await server.start()
        self.server = server  # only now is the socket file ours to remove at shutdown
        log.info("ready: %d series restored in %.2fs%s", len(catalog), time.monotonic() - started,
                 "" if ours.alone else f" (cluster member {ours.member} of {ours.members}: the series that hash here)")
        self.notifier.notify(f"READY=1\nSTATUS=serving {len(catalog)} series\nMAINPID={os.getpid()}")
        return True

    async def _open_store(self, before_migrate: Callable[[Store], None]) -> Store | None:
        """The store, waited for while the database is unreachable; None if SIGTERM/SIGINT came first.

        No WATCHDOG=1 meanwhile: systemd arms the watchdog only after READY=1 (systemd.service(5))
        but would arm it early on a ping, and then a long restore without pings would be killed.
        """
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.request_stop, sig)
        try:
            return await open_store(self.settings.store, self.notifier, self._stop, before_migrate=before_migrate)
        finally:
            for sig in STOP_SIGNALS:   # the rest of start-up, as before: SIGTERM ends it at once
                loop.remove_signal_handler(sig)
                if previous[sig] is not None:   # None: set outside Python, left as it is
                    signal.signal(sig, previous[sig])

    def request_stop(self, signum: int | None = None) -> None:
        if self._stop.is_set():
            # Like uvicorn: a second Ctrl-C forces the exit. A repeated SIGTERM is not a person
            # insisting (`timeout` and process-group kills send it twice); systemd escalates itself.
            if signum == signal.SIGINT:
                log.error("second interrupt: exiting without a clean shutdown")
                os._exit(1)
            return
        log.info("received %s: shutting down", signal.Signals(signum).name if signum else "stop request")
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.request_stop, sig)
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await self._stop.wait()
        finally:
            watchdog.cancel()

    async def _watchdog(self) -> None:
        """Ping systemd only while the event loop turns and the store writer and the learning
        thread do their jobs (`liveness`): else systemd restarts the daemon."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            problem = liveness.health((self.writer, self.learner))
            if problem is None:
                self.notifier.notify("WATCHDOG=1")
            else:
                log.error("%s; withholding the watchdog ping", problem)
            await asyncio.sleep(interval)

    def _watch(self, engine: Engine, catalog: SeriesCatalog) -> None:
        s, m = self.settings, self.metrics
        exported = tuple(self.ours.own(s.metrics.series))   # of the names, this member's
        m.watch(engine, catalog, s.model.coverage, s.metrics.stale_after, exported, s.metrics.max_series)
        stats = engine.stats()
        if "init" in stats:   # an engine that adapts on drift
            m.drift_events.labels(s.drift.detector)   # present at zero, so rate() and alerts have data
            m.initializer.labels(stats["init"], stats["init_version"]).set(1)

    def _build_engine(self) -> Engine:
        s, store = self.settings, self.store
        assert store is not None
        if s.model.engine == "naive":   # torch is not even imported: ~250 MB and seconds of start-up
            return NaiveEngine.for_model(s.model)
        from .engine.factory import build_engine, online_config, stored_initializer
        return build_engine(s, stored_initializer(s, store, online_config(s)))

    def _start_scheduler(self, catalog: SeriesCatalog) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        s, sched = self.settings, self.settings.scheduler
        self.scheduler = BackgroundScheduler(daemon=True)
        every = {"trigger": "interval", "max_instances": 1, "coalesce": True,
                 "misfire_grace_time": int(sched.misfire_grace_time)}
        self.scheduler.add_job(self.checkpoint, seconds=sched.checkpoint_interval, id="checkpoint", **every)
        self.metrics.schedule_interval.labels("checkpoint").set(sched.checkpoint_interval)
        if s.store.retention > 0 or s.store.forget_after > 0:
            assert self.store is not None
            self._retention = Retention(self.store, s.store.retention, s.model.history, self.metrics,
                                        owns=None if self.ours.alone else self.ours.owns, catalog=catalog,
                                        forget_after=s.store.forget_after, writer=self.writer,
                                        drop_state=self.drop_state)
            first = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=RETENTION_DELAY)
            self.scheduler.add_job(self._retention.prune, seconds=sched.retention_interval, id="retention",
                                   next_run_time=first, **every)
            self.metrics.schedule_interval.labels("retention").set(sched.retention_interval)
        if self._share is not None and self._share.advisory:
            self.scheduler.add_job(self._keep_share, seconds=CLAIM_CHECK, id="store-claim", **every)
        if s.model.engine == "online":
            from .meta.schedule import InitializerJobs

            assert self.store is not None and self.engine is not None
            self._initializer_jobs = jobs = InitializerJobs(s, self.store, self.engine, self.metrics,
                                                            trains=self.ours.trains)
            self.scheduler.add_job(jobs.refresh, seconds=s.meta.refresh_interval, id="initializer-refresh", **every)
            if s.meta.retrain_interval > 0 and self.ours.trains:
                first = datetime.datetime.fromtimestamp(jobs.first_run(time.time()), datetime.timezone.utc)
                self.scheduler.add_job(jobs.retrain, seconds=s.meta.retrain_interval, id="meta-train",
                                       next_run_time=first, **every)
                self.metrics.schedule_interval.labels("meta_training").set(s.meta.retrain_interval)
            elif s.meta.retrain_interval > 0:
                log.info("cluster member %d: meta-training is member 0's job; promoted initializers are "
                         "picked up every %gs", s.cluster.member, s.meta.refresh_interval)
        self.scheduler.start()

    def _meta_training(self) -> dict[str, Any]:
        """The scheduled meta-training, for stats: whether this daemon runs it, the run in
        progress, the newest finished one (kept in the store across restarts), and when the next is due."""
        jobs, s = self._initializer_jobs, self.settings
        assert jobs is not None and self.scheduler is not None
        job = self.scheduler.get_job("meta-train")
        due = job.next_run_time if job is not None else None
        return {"interval_s": s.meta.retrain_interval, "here": job is not None,
                "running_since": jobs.running_since, "progress": jobs.progress, "last_run": jobs.last_run,
                "next_run": due.timestamp() if due is not None else None}

    def _retention_state(self) -> dict[str, Any]:
        """`[store] retention` and how its newest pass went, for stats."""
        return {"keep_s": self.settings.store.retention, "forget_after_s": self.settings.store.forget_after,
                "last_pass": self._retention.last_pass if self._retention is not None else None}

    def _keep_share(self) -> None:
        assert self._share is not None
        self.metrics.store_claim.set(1 if self._share.keep() else 0)

    def checkpoint(self) -> None:
        """Save every series' model state (runs on the scheduler's thread and at shutdown)."""
        if self.engine is None or self.store is None:
            return
        with self._checkpoint_lock:
            started = time.monotonic()
            try:
                items = self.engine.checkpoint()
                self.store.save_checkpoints(items)
            except Exception:
                self.metrics.checkpoint_failures.inc()
                log.exception("checkpoint failed; the previous one stays in the store")
                return
            self.metrics.checkpoint_seconds.observe(time.monotonic() - started)
            self.metrics.last_checkpoint.set_to_current_time()
            if items:
                log.info("checkpointed %d series in %.2fs", len(items), time.monotonic() - started)
            self.save_forecasts()

    def drop_state(self, names: list[str]) -> int:
        """Delete removed series' checkpoints, stored forecasts and drift events (`Store.drop_state`),
        never while a checkpoint is being taken and saved."""
        assert self.store is not None
        with self._checkpoint_lock:
            return self.store.drop_state(names)

    def save_forecasts(self) -> None:
        """Store the current forecasts of the series exported to metrics, for Grafana's curves."""
        if self.engine is None or self.store is None:
            return
        m = self.settings.metrics
        found = []
        for name in self.ours.own(m.series)[: m.max_series]:
            try:
                found.append(self.engine.forecast(name, self.settings.model.max_horizon))
            except (UnknownSeries, NotReady):
                continue
        try:
            self.store.save_forecasts(found)
        except Exception:
            log.exception("could not store the forecasts of %d series", len(found))

    async def shutdown(self, failed: bool = False) -> None:
        """Release everything that was opened; `failed`: start-up or the run ended in an error
        (reported by the caller), so the last line does not claim a clean stop."""
        self.notifier.notify("STOPPING=1")
        # One budget for requests in flight, pending commits and learning, so that systemd's
        # TimeoutStopSec (shutdown_timeout plus the final checkpoint) is never exceeded.
        deadline = time.monotonic() + self.settings.daemon.shutdown_timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        if self.service is not None:
            self.service.stopping = True   # a removal waiting for learning stops waiting
        if self.server is not None:
            await self.server.close(left())
        if self._retention is not None:   # before the writer: a removal in progress stops, not fails
            self._retention.stop()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.stop, left())
        if self.learner is not None:
            await asyncio.to_thread(self.learner.stop, left())
            if self.learner.alive:
                log.warning("the learning thread did not stop in time; checkpointing what it has learnt")
        if self._initializer_jobs is not None:
            self._initializer_jobs.stop()
        if self.scheduler is not None:   # waits for a job under way (a checkpoint) off the event
            await asyncio.to_thread(self.scheduler.shutdown, True)   # loop: a second Ctrl-C still ends it
        if self._initializer_jobs is not None:
            self._initializer_jobs.record_ends()   # a run's end the store did not take before
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)   # waits for an adaptation under way
            if self.server is not None:
                await asyncio.to_thread(self.checkpoint)
            else:   # it never served: nothing was acknowledged here, and the store may be another's
                log.info("start-up did not finish: no checkpoint written (the store keeps its last one)")
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self._share is not None:
            self._share.release()
        if self.store is not None:
            self.store.close()
        if self._claim is not None:   # last: the socket file is gone, the store closed
            os.close(self._claim)
            self._claim = None
        log.info("stopped after an error" if failed else "stopped cleanly")


def _freeze_startup_heap() -> None:
    """Leave what start-up built (torch, scipy, river, the restored models: ~240,000 objects)
    out of the garbage collector's full passes. Each pass stops every thread, and walking that
    heap took 140-290 ms: the worst forecast answer times, at a few minutes' intervals. Frozen
    objects are still freed when their last reference goes; only a reference cycle among them
    would outlive them, and start-up's garbage is collected first."""
    gc.collect()
    gc.freeze()


async def _serve(settings: Settings) -> None:
    daemon = Daemon(settings)
    failed = True
    try:
        if await daemon.startup():
            await daemon.run()
        failed = False
    finally:
        await daemon.shutdown(failed)


def serve(settings: Settings) -> int:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    asyncio.run(_serve(settings))
    return 0
