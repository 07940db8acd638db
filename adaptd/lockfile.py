"""An exclusive lock file held for the life of a process (flock: the kernel releases it however
the process ends, so nothing is left to clean up after a crash)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def hold(path: str | Path) -> int | None:
    """The descriptor holding an exclusive lock on `path` (created if missing; close it to let
    go), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
