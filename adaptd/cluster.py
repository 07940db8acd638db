"""Several daemons sharing one database (`[cluster] members = N, member = k`, DESIGN.md §4).

Each series belongs to one member: the CRC-32 of its name (UTF-8) modulo N, the same in every
process and Python version. A member stores, learns, checkpoints and answers only its own
series, so no two daemons ever write the same series' rows; records of another member's series
are rejected with the member to send them to. What the members share is the store's
initializers: only member 0 meta-trains on the schedule, every member picks up what it promotes.
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
