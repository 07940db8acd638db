"""The systemd notify protocol over $NOTIFY_SOCKET (no libsystemd needed).

>>> Notifier({}).notify("READY=1")   # not under systemd: a quiet no-op
False
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET", "")
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")

    def notify(self, message: str) -> bool:
        """Send one state message (e.g. READY=1); False when not under a supervisor or it failed."""
        if not self.address:
            return False
        # A leading '@' names a socket in the abstract namespace.
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(address)
                sock.sendall(message.encode())
            return True
        except OSError as exc:
            log.warning("could not notify systemd (%s): %s", self.address, exc)
            return False

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the supervisor's timeout), if it asked for them."""
        if not self._watchdog_usec:
            return None
        if self._watchdog_pid and self._watchdog_pid != str(os.getpid()):
            return None  # the watchdog is meant for another process (e.g. our parent)
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.warning("ignoring WATCHDOG_USEC=%r: not an integer", self._watchdog_usec)
            return None
        return usec / 2 / 1e6 if usec > 0 else None


# While start-up reads a large store: a message every EXTEND_EVERY seconds asks for EXTEND_BY
# more seconds past TimeoutStartSec, for at most MAX_EXTENSION seconds in all (a store that
# hangs still ends the start).
EXTEND_EVERY = 20.0
EXTEND_BY = 60.0
MAX_EXTENSION = 1800.0


class StillStarting:
    """Tells the supervisor that start-up is still getting somewhere: `run` (a task, cancelled
    when start-up is done) sends EXTEND_TIMEOUT_USEC with a STATUS naming `phase`."""

    def __init__(self, notifier: Notifier, phase: str):
        self.notifier = notifier
        self.phase = phase

    async def run(self) -> None:
        began = time.monotonic()
        while time.monotonic() - began + EXTEND_BY <= MAX_EXTENSION:   # at once: the start may be near its timeout
            self.notifier.notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_BY * 1e6)}\n"
                                 f"STATUS=starting: {self.phase} ({time.monotonic() - began:.0f}s)")
            await asyncio.sleep(EXTEND_EVERY)
