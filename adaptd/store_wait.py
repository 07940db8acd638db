"""Start-up's wait for a database that is down or not up yet.

At boot PostgreSQL may still be starting, or the network not be ready. Rather than exit at
once (and let systemd's start limit give up), start-up tries again with capped exponential
pauses for `[store] connect_timeout` seconds, one log line and one systemd STATUS= per failed
attempt. What waiting cannot fix (a login refused, an unknown database, a schema newer than
this adaptd, a bad URL) is a plain `StoreError` and ends start-up at once.

>>> list(itertools.islice(pauses(), 7))
[0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from typing import Any, Callable, Iterator

from .config import StoreSettings
from .sdnotify import Notifier
from .store import Store, StoreError, StoreUnreachable, redact

log = logging.getLogger(__name__)

FIRST_PAUSE = 0.5
MAX_PAUSE = 10.0


def pauses(first: float = FIRST_PAUSE, cap: float = MAX_PAUSE) -> Iterator[float]:
    """Seconds to wait after each failed attempt: doubling from `first`, at most `cap`."""
    pause = first
    while True:
        yield min(pause, cap)
        pause *= 2


async def open_store(settings: StoreSettings, notifier: Notifier, stop: asyncio.Event,
                     clock: Callable[[], float] = time.monotonic,
                     before_migrate: Callable[[Store], None] | None = None) -> Store | None:
    """The opened store, or None when `stop` is set while waiting for it.

    Raises `StoreError` at once for what waiting cannot fix, and once `connect_timeout`
    seconds have passed for a database that stays unreachable.
    """
    url = redact(settings.url)
    started = clock()
    delays = pauses()
    attempt = 0
    while True:
        attempt += 1
        try:
            store = await _in_thread(lambda: Store.open(settings.url, settings.sqlite_synchronous,
                                                        settings.pool_size, before_migrate=before_migrate), stop)
        except StoreUnreachable as exc:
            waited = clock() - started
            left = settings.connect_timeout - waited
            if left < FIRST_PAUSE / 10:   # timers may wake a hair early: no attempt for the last instant
                if settings.connect_timeout == 0:
                    raise
                raise StoreError(f"{exc}; gave up after {attempt} attempts in {waited:.0f}s "
                                 f"([store] connect_timeout = {settings.connect_timeout:g})") from None
            pause = min(next(delays), left)
            log.warning("store unreachable (attempt %d): %s; trying again in %.1fs, giving up in %.1fs",
                        attempt, exc, pause, left)
            notifier.notify(f"STATUS=waiting for the store {url}: attempt {attempt} failed, "
                            f"giving up in {left:.0f}s")
            if await _stopped(stop, pause):
                return None
            continue
        if store is not None and attempt > 1:
            log.info("store reachable after %d attempts in %.1fs", attempt, clock() - started)
            notifier.notify("STATUS=store reachable; restoring state")
        return store


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early (True) when a stop is requested."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        return False
    return True


async def _in_thread(attempt: Callable[[], Store], stop: asyncio.Event) -> Store | None:
    """Run one attempt on a daemon thread; None if `stop` comes first.

    Not `asyncio.to_thread`: its worker threads are joined at exit, so a stop would wait for an
    attempt stuck in connect(). An abandoned attempt that succeeds later closes its store.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Store] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.cancelled():
            if isinstance(result, Store):
                result.close()
        elif error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def run() -> None:
        try:
            result, error = attempt(), None
        except BaseException as exc:   # handed to the event loop, raised there
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:   # the loop is gone: the daemon is exiting
            if isinstance(result, Store):
                result.close()

    threading.Thread(target=run, name="adaptd-store-connect", daemon=True).start()
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({done, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not done.done():
        done.cancel()
        return None
    return done.result()
