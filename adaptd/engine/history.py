"""A bounded, time-ordered buffer of one series' newest observations, and its time grid."""

from __future__ import annotations

import bisect
from array import array
from typing import Sequence

import numpy as np

DAY = 86_400.0
STEP_TIMESTAMPS = 65   # the newest timestamps a series' step is inferred from
WEEK = 7 * DAY


class SeriesHistory:
    """Newest `capacity` (ts, value) pairs in time order; late records are slotted in place."""

    __slots__ = ("capacity", "ts", "values", "version", "revised")

    def __init__(self, capacity: int):
        self.capacity = capacity
        # Flat arrays of doubles, not lists of float objects: a quarter of the memory, and
        # nothing for the garbage collector to walk (lists of 10,000 series' histories made
        # every full collection, which stops every thread, tens of milliseconds longer).
        self.ts = array("d")
        self.values = array("d")
        self.version = 0  # bumps on every change, so derived caches know when they are stale
        # The newest time at which a record arrived out of order or replaced a value: models
        # that learn in arrival order see the series differently from here on.
        self.revised = -float("inf")

    def add(self, ts: float, value: float) -> None:
        try:
            self._place(ts, value)
        finally:
            # Bumped after the change: a reader without the lock that sees this version also
            # sees the records it stands for (NaiveEngine.step relies on it).
            self.version += 1

    def _place(self, ts: float, value: float) -> None:
        if not self.ts or ts > self.ts[-1]:
            self.ts.append(ts)
            self.values.append(value)
        else:
            i = bisect.bisect_left(self.ts, ts)
            if i < len(self.ts) and self.ts[i] == ts:
                if self.values[i] != value:   # a re-sent record: the last value wins, as in the store
                    self.revised = max(self.revised, ts)
                    self.values[i] = value
                return                        # the same value again (a client's retry): nothing changed
            self.revised = max(self.revised, ts)
            if i == 0 and len(self.ts) >= self.capacity:
                return  # older than everything kept: stored, but too old to matter here
            self.ts.insert(i, ts)
            self.values.insert(i, value)
        if len(self.ts) > self.capacity:
            del self.ts[: len(self.ts) - self.capacity]
            del self.values[: len(self.values) - self.capacity]

    def __len__(self) -> int:
        return len(self.ts)

    def array(self) -> np.ndarray:
        # A copy: a numpy view would pin the buffer, and the array cannot grow while it is exported.
        return np.array(self.values, dtype=np.float64)


def infer_step(ts: Sequence[float]) -> float | None:
    """The sampling interval: the median gap of the newest timestamps (robust to a few gaps)."""
    if len(ts) < 2:
        return None
    gaps = np.diff(np.asarray(ts[-STEP_TIMESTAMPS:], dtype=np.float64))
    gaps = gaps[gaps > 0]
    return float(np.median(gaps)) if gaps.size else None


def infer_season(step: float, configured: int = 0) -> int:
    """Steps per season: as configured, else a day for sub-daily data, a week for daily data."""
    if configured > 0:
        return configured
    if step < DAY:
        per_day = DAY / step
        if not per_day < 1e9:   # sub-microsecond steps (or inf from a denormal): no daily season
            return 1
        if abs(per_day - round(per_day)) < 1e-6 and round(per_day) >= 2:
            return int(round(per_day))
    elif abs(step - DAY) < 1e-6:
        return 7
    return 1


MIN_GAPS = 4   # time gaps a series must have shown before its step is trusted


def missing_steps(recent_gaps: np.ndarray, gap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per series, (regular steps missing before a record `gap` seconds after the previous one,
    the step): floor(gap / step + 1/4) - 1, the step being the median of its recent gaps (rows
    of `recent_gaps`, NaN: unknown). So a record counts as following a missing one only from
    1.75 steps on: timestamp jitter, early records and a step not yet known are not gaps."""
    step = np.full(gap.shape, np.nan)
    missing = np.zeros(gap.shape, dtype=np.int64)
    known = (np.isfinite(recent_gaps).sum(axis=1) >= MIN_GAPS) & np.isfinite(gap)
    if known.any():
        step[known] = np.nanmedian(recent_gaps[known], axis=1)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            steps = np.floor(gap[known] / step[known] + 0.25) - 1
        missing[known] = np.clip(np.nan_to_num(steps, nan=0.0, posinf=1e15), 0, 1e15).astype(np.int64)
    return missing, step
