"""The daemon's lifecycle: startup -> serve until SIGTERM/SIGINT -> graceful shutdown.

Startup restores state from the store before binding the socket, so `READY=1` means
"answers forecasts as before the restart". Shutdown stops accepting, lets requests in
flight finish, commits everything acknowledged-or-queued, then removes the socket.
A second SIGTERM/SIGINT during shutdown exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from .catalog import SeriesCatalog
from .config import Settings
from .engine.base import Engine
from .engine.naive import NaiveEngine
from .ingest import IngestWriter
from .metrics import Metrics
from .sdnotify import Notifier
from .server import SocketServer
from .service import Service
from .store import Store, redact

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The daemon cannot start as configured; the message names the setting."""


def build_engine(settings: Settings) -> Engine:
    m = settings.model
    return NaiveEngine(history=m.history, max_horizon=m.max_horizon, season=m.season, coverage=m.coverage)


class Daemon:
    def __init__(self, settings: Settings, metrics: Metrics | None = None, notifier: Notifier | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier()
        self._stop = asyncio.Event()
        self.store: Store | None = None
        self.writer: IngestWriter | None = None
        self.server: SocketServer | None = None
        self._metrics_server = None

    async def startup(self) -> None:
        s = self.settings
        started = time.monotonic()
        log.info("starting adaptd with %s; store %s", s.source, redact(s.store.url))
        self.store = await asyncio.to_thread(Store.open, s.store.url, s.store.sqlite_synchronous,
                                             s.store.pool_size)
        catalog = SeriesCatalog(await asyncio.to_thread(self.store.series_summary))
        engine = build_engine(s)
        engine.restore(await asyncio.to_thread(self.store.recent, s.model.history))
        self.metrics.series.set(len(catalog))
        self.writer = IngestWriter(self.store, engine, catalog, self.metrics, s.ingest.group_commit_records)
        self.writer.start()
        service = Service(s, self.store, self.writer, engine, catalog, self.metrics)
        try:
            self._metrics_server = self.metrics.serve(s.metrics.listen)
        except OSError as exc:
            raise StartupError(f"metrics.listen = {s.metrics.listen!r}: {exc.strerror}") from None
        server = SocketServer(s.socket_path(), service.handle_line, self.metrics,
                              mode=s.socket_mode(), group=s.server.socket_group,
                              max_line_bytes=s.server.max_line_bytes)
        await server.start()
        self.server = server  # only now is the socket file ours to remove at shutdown
        log.info("ready: %d series restored in %.2fs", len(catalog), time.monotonic() - started)
        self.notifier.notify(f"READY=1\nSTATUS=serving {len(catalog)} series\nMAINPID={os.getpid()}")

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
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await self._stop.wait()
        finally:
            watchdog.cancel()

    async def _watchdog(self) -> None:
        """Ping systemd only while the event loop turns and the store writer lives."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            if self.writer is not None and self.writer.alive:
                self.notifier.notify("WATCHDOG=1")
            else:
                log.error("store writer is not running; withholding the watchdog ping")
            await asyncio.sleep(interval)

    async def shutdown(self) -> None:
        self.notifier.notify("STOPPING=1")
        timeout = self.settings.daemon.shutdown_timeout
        if self.server is not None:
            await self.server.close(timeout)
        if self.writer is not None:
            await asyncio.to_thread(self.writer.stop, timeout)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self.store is not None:
            self.store.close()
        log.info("stopped cleanly")


async def _serve(settings: Settings) -> None:
    daemon = Daemon(settings)
    try:
        await daemon.startup()
        await daemon.run()
    finally:
        await daemon.shutdown()


def serve(settings: Settings) -> int:
    asyncio.run(_serve(settings))
    return 0
