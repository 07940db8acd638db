"""Several daemons sharing one database (`[cluster] members = N, member = k`, DESIGN.md §4).

Each series belongs to one member: the CRC-32 of its name (UTF-8) modulo N (`owner`, in
ownership.py), the same in every process and Python version. A member stores, learns,
checkpoints and answers only its own series, so no two daemons ever write the same series' rows;
records of another member's series are rejected with the member to send them to (`adaptd ingest`
routes them, given `[cluster] sockets`: route.py). What the members share is the store's
initializers: only member 0 meta-trains on the schedule, every member picks up what it promotes.
While it runs, a daemon holds its share of the store (`Claim`), so that a misconfigured second
daemon (the same member number, another cluster size, a second one on an SQLite file) is
refused before it reads a series.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Iterable, TypeVar

import sqlalchemy as sa

from . import lockfile
from .ownership import owner

T = TypeVar("T")
log = logging.getLogger(__name__)


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

    def owner_of(self, series: str) -> int:
        """The member whose series it is."""
        return owner(series, self.members)

    def owns(self, series: str) -> bool:
        return self.alone or self.owner_of(series) == self.member

    def refusal(self, series: str) -> str | None:
        """Why a record of `series` is not this member's to store (None: it is)."""
        if self.owns(series):
            return None
        return (f"series {series!r} belongs to cluster member {self.owner_of(series)} of {self.members} "
                f"([cluster]); this daemon is member {self.member}: send it there")

    def own(self, names: Iterable[T], key=lambda name: name) -> list[T]:  # type: ignore[no-untyped-def]
        """The items (series names, or objects with `key` giving one) that are this member's."""
        return [item for item in names if self.owns(key(item))]


# Advisory-lock keys (PostgreSQL scopes them to the database): a member number held exclusively,
# and the cluster size held shared by every member running with it.
MEMBER_KEY, LAYOUT_KEY, GATE = 0x61647031, 0x61647032, 0x61647033   # GATE: one member checks at a time
PREDECESSOR_WAIT = 5.0   # seconds
CLAIM_CHECK = 30.0       # seconds between checks that the store lock is still held


class ClaimRefused(RuntimeError):
    """Another daemon already serves these series from this database; the message says which."""


class Claim:
    """This daemon's hold on its share of a store, for the life of the process.

    PostgreSQL: an exclusive advisory lock on the member number and a shared one on the cluster
    size, on a connection of its own (the server drops both when the process dies). A second
    daemon with the same member number, or with another `members` while any member runs, is
    refused before it reads a series. A server restart or a dropped connection loses the locks
    silently: `keep` (the daemon's scheduler, every CLAIM_CHECK seconds) notices and takes them
    again. SQLite: an exclusive lock on `<database>.lock` (a cluster needs PostgreSQL,
    config.py), so two daemons never serve one database file.
    """

    def __init__(self, store, membership: Membership):  # type: ignore[no-untyped-def]
        self.membership = membership
        self._engine = None
        self._connection = None
        self._fd: int | None = None
        url = store.engine.url
        if store.dialect == "postgresql":
                # Its own connection, outside the store's pool; TCP keepalives, so that a server that
            # vanished is noticed in about a minute rather than the system's two hours.
            self._engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={
                "connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                "keepalives_count": 3})
            self._hold_advisory()
        elif url.database and url.database != ":memory:":
            self._hold_file(f"{url.database}.lock", str(url.database))

    @property
    def advisory(self) -> bool:
        return self._engine is not None

    def _hold_advisory(self) -> None:
        m = self.membership
        conn = self._engine.connect()  # type: ignore[union-attr]
        try:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:g)"), {"g": GATE})   # until the commit below
            running = sorted({int(n) for (n,) in conn.execute(sa.text(
                "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND classid = :k AND objsubid = 2 "
                "AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
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
            conn.close()   # the session ends: whatever it locked is released
            raise
        self._connection = conn

    def held(self) -> bool:
        """Whether the member lock is still this daemon's (always, for a lock file)."""
        if not self.advisory:
            return True
        if self._connection is None:   # lost, and not taken back
            return False
        try:
            found = self._connection.execute(sa.text(  # type: ignore[union-attr]
                "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory' "
                "AND classid = :k AND objid = :m AND objsubid = 2 AND granted"),
                {"k": MEMBER_KEY, "m": self.membership.member}).scalar()
            self._connection.commit()  # type: ignore[union-attr]
            return bool(found)
        except sa.exc.SQLAlchemyError:
            return False

    def keep(self) -> bool:
        """Check the hold and take it again if it was lost; False while it cannot be had."""
        if self.held():
            return True
        log.error("lost the store lock of cluster member %d (the database restarted, or dropped the "
                  "connection); taking it again", self.membership.member)
        self._close_connection()
        try:
            self._hold_advisory()
        except ClaimRefused as exc:
            log.critical("cannot take back the store lock: %s. Another daemon serves these series now; "
                         "stop this one", exc)
            return False
        except sa.exc.SQLAlchemyError as exc:
            log.error("cannot take back the store lock yet: %s", exc)
            return False
        log.info("took the store lock of cluster member %d again", self.membership.member)
        return True

    @staticmethod
    def _try_lock(conn, member: int) -> bool:  # type: ignore[no-untyped-def]
        """The member's lock, waited for briefly: a predecessor killed a moment ago holds it until
        the server notices its connection is gone."""
        deadline = time.monotonic() + PREDECESSOR_WAIT
        while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k, :m)"), {"k": MEMBER_KEY, "m": member}).scalar():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def _hold_file(self, lock: str, database: str) -> None:
        self._fd = lockfile.hold(lock)
        if self._fd is None:
            raise ClaimRefused(f"another adaptd already serves the database {database} (it holds {lock}); "
                               "one SQLite file serves one daemon")

    def _close_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:   # a connection the server dropped may fail to close cleanly
                pass
            self._connection = None

    def release(self) -> None:
        self._close_connection()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
