"""Where meta-training reads series: the daemon's SQL store, or an M4-style file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..store import Store


def series_from_m4(path: str | Path) -> dict[str, np.ndarray]:
    """M4's layout: one row per series, its id then its values (rows end early when shorter)."""
    out: dict[str, np.ndarray] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader, None)   # V1, V2, ...
        for row in reader:
            if not row:
                continue
            values = np.array([float(v) for v in row[1:] if v.strip()], dtype=np.float64)
            if values.size and np.isfinite(values).all():
                out[row[0]] = values
    return out


# Series read per query: their rows are held as Python tuples only that long.
READ_CHUNK = 100


def series_from_store(store: Store, max_series: int = 2000, max_history: int = 10_000,
                      seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """At most `max_series` stored series (a fixed random choice of them when there are more),
    each one's newest `max_history` values in time order, and where the daemon's drift
    detectors fired in them: the index of the value each recorded detection came with.
    (`[meta] max_series` and `max_history`: a store of years of many series must not have to
    fit in memory.)"""
    names = sorted(s.name for s in store.series_summary())
    if len(names) > max_series:
        names = sorted(np.random.default_rng(seed).choice(names, max_series, replace=False).tolist())
    series, detections = {}, {}
    fired = store.drift_times()
    for at in range(0, len(names), READ_CHUNK):
        chunk = set(names[at:at + READ_CHUNK])
        for name, rows in store.recent(max_history, owns=chunk.__contains__).items():
            if not rows:
                continue
            ts = np.array([t for t, _ in rows])
            series[name] = np.array([v for _, v in rows], dtype=np.float64)
            hit = np.searchsorted(ts, fired.get(name, []))
            detections[name] = [int(i) for i, e in zip(hit, fired.get(name, [])) if i < ts.size and ts[i] == e]
    return series, detections
