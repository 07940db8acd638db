"""Which daemon a client command talks to: the one `[server] socket`, or, given `[cluster] sockets`
(every member's socket, in member order), the member that owns the series (`ownership.owner`).
Each of those daemons is first checked to be the member its place in the list says, so a list in
the wrong order, or of the wrong length, is refused before a record is sent.

>>> route = Route((Path("a.sock"), Path("b.sock"), Path("c.sock")), cluster=True)
>>> route.member_of("load-eu-1"), route.member_of("load-eu-2")
(1, 2)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .client import Client, ClientError
from .config import Settings
from .ownership import owner


CHECK_TIMEOUT = 5.0   # seconds: other members checked when the one asked cannot be reached
STATS = {"op": "stats"}


class ClusterMismatch(ClientError):
    """A daemon behind `[cluster] sockets` is not the member its place in the list says."""


def mismatch(position: int, count: int, path: Path, stats: dict[str, Any]) -> str | None:
    """Why the daemon at `path`, by its answer to `stats`, is not member `position` of `count`.

    >>> mismatch(1, 2, Path("b.sock"), {"cluster": {"members": 2, "member": 1}}) is None
    True
    >>> mismatch(0, 2, Path("b.sock"), {"cluster": {"members": 2, "member": 1}})
    '[cluster] sockets[0] is b.sock, whose daemon is member 1 of 2, not member 0: list the sockets in member order'
    """
    cluster = stats.get("cluster") or {"members": 1, "member": 0}   # a daemon from before [cluster]
    members, member = cluster.get("members"), cluster.get("member")
    if members != count:
        return (f"[cluster] sockets lists {count} socket{'' if count == 1 else 's'}, but the daemon at {path} is member {member} of "
                f"{members} (its [cluster] members = {members}): list every member's socket, in member order")
    if member != position:
        return (f"[cluster] sockets[{position}] is {path}, whose daemon is member {member} of {members}, "
                f"not member {position}: list the sockets in member order")
    return None


@dataclass(frozen=True)
class Route:
    sockets: tuple[Path, ...]
    cluster: bool = False       # from [cluster] sockets: every daemon is checked before use
    source: str = "<config>"    # the config file, named in refusals

    @classmethod
    def of(cls, settings: Settings) -> "Route":
        if settings.cluster.sockets:
            return cls(tuple(Path(p) for p in settings.cluster.sockets), True, settings.source)
        return cls((settings.socket_path(),), False, settings.source)

    @property
    def members(self) -> int:
        return len(self.sockets)

    def member_of(self, series: str) -> int:
        return owner(series, self.members) if self.members > 1 else 0

    def label(self, member: int) -> str:
        """How messages name a member's daemon: not at all when there is one."""
        return f"member {member} ({self.sockets[member]}): " if self.members > 1 else ""

    def connect(self, member: int, timeout: float | None = 60.0) -> Client:
        """A connection to `member`'s daemon (close it when done), checked to be that member."""
        return self.open(member, timeout, stats=False)[0]

    def open(self, member: int, timeout: float | None = 60.0, stats: bool = True
             ) -> tuple[Client, dict[str, Any] | None]:
        """`connect`, and the daemon's answer to `stats` (with `stats`, or when the check asked
        for it anyway: a caller that needs it does not ask twice).

        When that daemon cannot be asked, the other members are checked before that is reported: a
        list with a socket too many names a member that does not exist, and `forecast` of a series
        the list gives to it would otherwise say only that no daemon is running there, not that
        the list is wrong."""
        try:
            return self._connect(member, timeout, stats)
        except ClusterMismatch:
            raise
        except ClientError:
            if self.cluster:
                self._check_the_others(member, CHECK_TIMEOUT if timeout is None else min(timeout, CHECK_TIMEOUT))
            raise

    def _check_the_others(self, member: int, timeout: float) -> None:
        """Raise ClusterMismatch if a member other than `member` that answers is not where the list
        puts it; members that do not answer are left out."""
        for other in range(self.members):
            if other == member:
                continue
            try:
                self._connect(other, timeout, False)[0].close()
            except ClusterMismatch:
                raise
            except ClientError:
                continue

    def _connect(self, member: int, timeout: float | None, want_stats: bool
                 ) -> tuple[Client, dict[str, Any] | None]:
        path = self.sockets[member]
        client = Client(path, timeout)
        client.connect()
        if not (self.cluster or want_stats):
            return client, None
        try:
            stats = client.request(STATS)
            if not self.cluster:
                return client, stats
            if not stats.get("ok"):
                error = stats.get("error", {})
                raise ClientError(f"the daemon at {path} answered stats with {error.get('code')}: "
                                  f"{error.get('message')}")
            why = mismatch(member, self.members, path, stats)
            if why is not None:
                raise ClusterMismatch(f"{self.source}: {why}")
        except BaseException:
            client.close()
            raise
        return client, stats

    def ask(self, member: int, request: dict[str, Any]) -> dict[str, Any]:
        client, stats = self.open(member, stats=request == STATS)
        try:
            return stats if stats is not None and request == STATS else client.request(request)
        finally:
            client.close()


Send = Callable[[int, list[dict[str, Any]], list[int]], None]


class Batches:
    """A file's records in batches of up to `size` for the members that own their series, each
    member's records in file order: `send(member, records, lines)` gets every full batch as it
    fills, `flush()` sends what is left.

    >>> route = Route((Path("a.sock"), Path("b.sock")))
    >>> [route.member_of(name) for name in "abcde"]
    [1, 1, 1, 0, 0]
    >>> sent = []
    >>> batches = Batches(route, 2, lambda member, records, lines: sent.append((member, lines)))
    >>> for line, name in enumerate("abcde", start=2):
    ...     batches.add({"series": name, "ts": 0, "value": 1.0}, line)
    >>> batches.flush()
    >>> sent
    [(1, [2, 3]), (0, [5, 6]), (1, [4])]
    """

    def __init__(self, route: Route, size: int, send: Send):
        self.member_of = route.member_of
        self.size = size
        self.send = send
        self.records: list[list[dict[str, Any]]] = [[] for _ in route.sockets]
        self.lines: list[list[int]] = [[] for _ in route.sockets]

    def add(self, record: dict[str, Any], line: int) -> None:
        member = self.member_of(record["series"])
        self.records[member].append(record)
        self.lines[member].append(line)
        if len(self.records[member]) >= self.size:
            self._send(member)

    def flush(self) -> None:
        for member, records in enumerate(self.records):
            if records:
                self._send(member)

    def _send(self, member: int) -> None:
        records, lines = self.records[member], self.lines[member]
        self.records[member], self.lines[member] = [], []   # taken, whatever `send` then does
        self.send(member, records, lines)
