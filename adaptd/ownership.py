"""Which cluster member a series belongs to (`[cluster] members = N`, DESIGN.md §4): the one hash
every daemon and client agrees on. Apart from cluster.py so that clients route without loading
the store's libraries.
"""

from __future__ import annotations

import zlib


def owner(series: str, members: int) -> int:
    """The member a series belongs to: the CRC-32 of its name (UTF-8) modulo `members`, the same
    in every process and Python version.

    >>> owner("load-eu-1", 1), owner("load-eu-1", 3), owner("load-eu-2", 3)
    (0, 1, 2)
    """
    return zlib.crc32(series.encode("utf-8", "surrogatepass")) % members
