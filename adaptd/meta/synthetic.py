"""Regime-switching series with known change points, for meta-training tests and `bench meta`.

Each regime has its own level, daily seasonal shape, AR(1) dynamics and noise; a series moves
through regimes at random times, and with probability `revisit` a change returns to a regime
the series was in before (winter load, weekend traffic), which regime memory can exploit.

>>> s = regime_series(3, 600, np.random.default_rng(0))
>>> len(s.values), len(s.values[0]), all(0 < c < 600 for c in s.changes[0])
(3, 600, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Regimes:
    values: list[np.ndarray]
    changes: list[list[int]]      # change times per series
    regime: list[np.ndarray]      # regime id at every step


def _regime(rng: np.random.Generator, period: int) -> dict[str, object]:
    harmonics = rng.normal(0, 1, (3, 2)) / np.arange(1, 4)[:, None]
    return {"level": rng.normal(0, 10), "amplitude": rng.uniform(0.5, 5), "harmonics": harmonics,
            "phi": rng.uniform(-0.2, 0.95), "noise": rng.uniform(0.2, 2.0), "period": period}


def _season(t: np.ndarray, r: dict[str, object]) -> np.ndarray:
    period, h = int(r["period"]), np.asarray(r["harmonics"])   # type: ignore[call-overload]
    angle = 2 * np.pi * t[:, None] * np.arange(1, 4)[None, :] / period
    return float(r["amplitude"]) * (np.cos(angle) @ h[:, 0] + np.sin(angle) @ h[:, 1])   # type: ignore[arg-type]


def regime_series(n: int, length: int, rng: np.random.Generator, period: int = 24, mean_stay: int = 240,
                  min_stay: int = 96, revisit: float = 0.5) -> Regimes:
    values, changes, regimes = [], [], []
    for _ in range(n):
        library = [_regime(rng, period)]
        current, t, y, ids, cuts = 0, 0, np.empty(length), np.empty(length, dtype=np.int64), []
        ar = 0.0
        while t < length:
            stay = min_stay + int(rng.exponential(mean_stay - min_stay))
            end = min(length, t + stay)
            r = library[current]
            steps = np.arange(t, end)
            noise = rng.normal(0, float(r["noise"]), end - t)   # type: ignore[arg-type]
            for k in range(end - t):
                ar = float(r["phi"]) * ar + noise[k]            # type: ignore[arg-type]
                noise[k] = ar
            y[t:end] = float(r["level"]) + _season(steps, r) + noise   # type: ignore[arg-type]
            ids[t:end] = current
            t = end
            if t < length:
                cuts.append(t)
                if len(library) > 1 and rng.random() < revisit:
                    current = int(rng.choice([i for i in range(len(library)) if i != current]))
                else:
                    library.append(_regime(rng, period))
                    current = len(library) - 1
        values.append(y)
        changes.append(cuts)
        regimes.append(ids)
    return Regimes(values, changes, regimes)
