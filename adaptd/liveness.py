"""Whether a worker thread is doing its job: alive, and moving while it has work.

A thread can be alive and still stuck: a PostgreSQL server that vanished without closing the
connection holds a commit for the TCP timeout (about 15 minutes) or for ever. Past STUCK_AFTER
the daemon reports it in `stats` and withholds systemd's watchdog ping, so systemd restarts it;
nothing acknowledged is lost by that (acks follow commits).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

# Far beyond any legitimate step: a group commit, a removal transaction, a learning chunk of
# 20,000 records with its inline adaptations each take seconds.
STUCK_AFTER = 300.0


def problem(worker: str, alive: bool, waiting: int, last_beat: float, now: float | None = None) -> str | None:
    """Why `worker` is not doing its job (None: it is). `waiting`: its work not yet done;
    `last_beat`: when (time.monotonic) it last started a step or looked for work."""
    if not alive:
        return f"the {worker} stopped"
    still = (time.monotonic() if now is None else now) - last_beat
    if waiting > 0 and still > STUCK_AFTER:
        return f"the {worker} has not moved for {still:.0f}s with {waiting} records waiting"
    return None


def health(workers: Iterable[Any]) -> str | None:
    """The problems of these workers (each with `problem()`; None: not started), or None."""
    problems = [w.problem() if w is not None else "not started" for w in workers]
    return "; ".join(p for p in problems if p) or None
