"""What the daemon knows about each series without asking SQL: counts and time range.

Loaded from the store at start-up and kept exact afterwards by the ingest writer, which
tells it, for every committed record, whether the (series, ts) was new.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterable

from .records import Observation
from .store import SeriesSummary


@dataclass
class SeriesInfo:
    observations: int
    first_ts: float
    last_ts: float
    late: int = 0        # records older than the newest one already stored
    overwritten: int = 0  # re-sent (series, ts) pairs whose value was replaced
    received: float = 0.0  # time.monotonic() of its newest commit (start-up time for loaded series):
    #                        a clock step must not make live series look silent


class SeriesCatalog:
    def __init__(self, summaries: list[SeriesSummary] | None = None):
        self._lock = threading.Lock()
        started = time.monotonic()
        self._series: dict[str, SeriesInfo] = {
            s.name: SeriesInfo(s.observations, s.first_ts, s.last_ts, received=started) for s in summaries or []}

    def last_ts(self, name: str) -> float | None:
        info = self._series.get(name)
        return info.last_ts if info else None

    def record(self, rows: Iterable[Observation], stored_before: set[tuple[str, float]]) -> int:
        """Count committed rows; `stored_before` holds the (series, ts) that were overwritten.

        Returns how many rows were late (new, but older than their series' newest record).
        """
        late = 0
        series = self._series
        now = time.monotonic()
        with self._lock:
            for name, ts, _value in rows:
                info = series.get(name)
                if info is None:
                    series[name] = SeriesInfo(1, ts, ts, received=now)
                    continue
                info.received = now
                if ts > info.last_ts:
                    info.observations += 1
                    info.last_ts = ts
                elif (name, ts) in stored_before:
                    info.overwritten += 1
                else:
                    info.observations += 1
                    info.late += 1
                    info.first_ts = min(info.first_ts, ts)
                    late += 1
        return late

    def pruned(self, name: str, deleted: int, first_ts: float | None) -> None:
        """Retention deleted the series' `deleted` oldest observations; it now starts at `first_ts`."""
        with self._lock:
            info = self._series.get(name)
            if info is not None:
                info.observations = max(0, info.observations - deleted)
                if first_ts is not None:
                    info.first_ts = first_ts

    def silent_since(self, cutoff: float) -> list[str]:
        """Series whose newest record arrived before `cutoff` (time.monotonic()), oldest arrival first."""
        with self._lock:
            return [name for name, info in sorted(self._series.items(), key=lambda item: item[1].received)
                    if info.received < cutoff]

    def forget(self, name: str) -> None:
        """The series was removed from the store (`[store] forget_after`)."""
        with self._lock:
            self._series.pop(name, None)

    def stale(self, older_than: float) -> int:
        """Series that have received nothing for `older_than` seconds."""
        cutoff = time.monotonic() - older_than
        with self._lock:
            return sum(info.received < cutoff for info in self._series.values())

    def get(self, name: str) -> SeriesInfo | None:
        return self._series.get(name)

    def snapshot(self) -> dict[str, SeriesInfo]:
        with self._lock:
            return {name: SeriesInfo(**vars(info)) for name, info in self._series.items()}

    def __len__(self) -> int:
        return len(self._series)

    def __contains__(self, name: object) -> bool:
        return name in self._series
