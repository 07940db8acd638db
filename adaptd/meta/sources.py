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


def series_from_store(store: Store, limit: int = 100_000) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """Every stored series' newest `limit` values, in time order, and where the daemon's drift
    detectors fired in them: the index of the value each recorded detection came with."""
    series, detections = {}, {}
    fired = store.drift_times()
    for name, rows in store.recent(limit).items():
        if not rows:
            continue
        ts = np.array([t for t, _ in rows])
        series[name] = np.array([v for _, v in rows], dtype=np.float64)
        at = np.searchsorted(ts, fired.get(name, []))
        detections[name] = [int(i) for i, e in zip(at, fired.get(name, [])) if i < ts.size and ts[i] == e]
    return series, detections
