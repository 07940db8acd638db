"""Several daemons sharing one database (`[cluster] members = N, member = k`, DESIGN.md §4).

Each series belongs to one member: the CRC-32 of its name (UTF-8) modulo N, the same in every
process and Python version. A member stores, learns, checkpoints and answers only its own
series, so no two daemons ever write the same series' rows; records of another member's series
are rejected with the member to send them to. What the members share is the store's
initializers: only member 0 meta-trains on the schedule, every member picks up what it promotes.
While it runs, a daemon holds its share of the store (`Claim`), so that a misconfigured second
daemon (the same member number, another cluster size, a second one on an SQLite file) is
refused before it reads a series.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable, TypeVar

T = TypeVar("T")


def owner(series: str, members: int) -> int:
    """The member a series belongs to.

    >>> owner("load-eu-1", 1), owner("load-eu-1", 3), owner("load-eu-2", 3)
    (0, 1, 2)
    """
    return zlib.crc32(series.encode("utf-8", "surrogatepass")) % members


@dataclass(frozen=True)
class Membership:
    members: int = 1
    member: int = 0

    @property
    def alone(self) -> bool:
        return self.members == 1

    @property
    def trains(self) -> bool:
        """Whether this member runs the scheduled meta-training (one per cluster)."""
        return self.member == 0

    def owns(self, series: str) -> bool:
        return self.alone or owner(series, self.members) == self.member

    def refusal(self, series: str) -> str | None:
        """Why a record of `series` is not this member's to store (None: it is)."""
        if self.owns(series):
            return None
        return (f"series {series!r} belongs to cluster member {owner(series, self.members)} of {self.members} "
                f"([cluster]); this daemon is member {self.member}: send it there")

    def own(self, names: Iterable[T], key=lambda name: name) -> list[T]:  # type: ignore[no-untyped-def]
        """The items (series names, or objects with `key` giving one) that are this member's."""
        return [item for item in names if self.owns(key(item))]


# Advisory-lock keys (PostgreSQL scopes them to the database): a member number held exclusively,
# and the cluster size held shared by every member running with it.
MEMBER_KEY, LAYOUT_KEY, GATE = 0x61647031, 0x61647032, 0x61647033   # GATE: one member checks at a time
PREDECESSOR_WAIT = 5.0   # seconds


class ClaimRefused(RuntimeError):
    """Another daemon already serves these series from this database; the message says which."""


class Claim:
    """This daemon's hold on its share of a store, for the life of the process.

    PostgreSQL: an exclusive advisory lock on the member number and a shared one on the cluster
    size, on a connection of its own (the server drops both when the process dies). A second
    daemon with the same member number, or with another `members` while any member runs, is
    refused before it reads a series. SQLite: an exclusive lock on `<database>.lock` (a cluster
    needs PostgreSQL, config.py), so two daemons never serve one database file.
    """

    def __init__(self, store, membership: Membership):  # type: ignore[no-untyped-def]
        self._connection = None
        self._fd: int | None = None
        url = store.engine.url
        if store.dialect == "postgresql":
            self._hold_advisory(store, membership)
        elif url.database and url.database != ":memory:":
            self._hold_file(f"{url.database}.lock", str(url.database))

    def _hold_advisory(self, store, m: Membership) -> None:  # type: ignore[no-untyped-def]
        import sqlalchemy as sa

        conn = store.engine.connect()
        try:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:g)"), {"g": GATE})   # until the commit below
            running = sorted({int(n) for (n,) in conn.execute(sa.text(
                "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND classid = :k AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
                {"k": LAYOUT_KEY})} - {m.members})
            if running:
                raise ClaimRefused(f"daemons with [cluster] members = {running[0]} are running on this database; "
                                   f"this one has members = {m.members}: stop every member, then start all "
                                   "with the new size")
            if not self._try_lock(conn, m.member):
                raise ClaimRefused(f"cluster member {m.member} of {m.members} is already running on this database "
                                   "(another adaptd with the same [cluster] member, or [cluster] left out: "
                                   "give each daemon its own member number)")
            conn.execute(sa.text("SELECT pg_advisory_lock_shared(:k, :n)"), {"k": LAYOUT_KEY, "n": m.members})
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._connection = conn

    @staticmethod
    def _try_lock(conn, member: int) -> bool:  # type: ignore[no-untyped-def]
        """The member's lock, waited for briefly: a predecessor killed a moment ago holds it until
        the server notices its connection is gone."""
        import time

        import sqlalchemy as sa

        deadline = time.monotonic() + PREDECESSOR_WAIT
        while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k, :m)"), {"k": MEMBER_KEY, "m": member}).scalar():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def _hold_file(self, lock: str, database: str) -> None:
        import fcntl
        import os

        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ClaimRefused(f"another adaptd already serves the database {database} (it holds {lock}); "
                               "one SQLite file serves one daemon") from None
        self._fd = fd

    def release(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._fd is not None:
            import os

            os.close(self._fd)
            self._fd = None
