"""Online conformal prediction intervals by quantile tracking (adaptive conformal inference).

Per series and scored lead, q tracks the `coverage` quantile of the absolute normalised
error: after each matured forecast, q grows by rate*coverage on a miss and shrinks by
rate*(1-coverage) on a hit, so the long-run miss rate is 1-coverage whatever the drift
(Angelopoulos, Candès & Tibshirani, "Conformal PID control", 2023: the quantile tracker).

>>> import numpy as np
>>> tracker = QuantileTracker(coverage=0.9, rate=0.05, initial=1.0)
>>> tracker.resize(1, 1)
>>> rng, misses = np.random.default_rng(0), 0
>>> for _ in range(5000):
...     score = np.abs(rng.normal(size=1))
...     misses += int(score[0] > tracker.q[0, 0])
...     tracker.update(np.array([0]), np.array([0]), score)
>>> abs(misses / 5000 - 0.1) < 0.01    # the long-run miss rate is 1 - coverage
True
"""

from __future__ import annotations

import numpy as np


class QuantileTracker:
    def __init__(self, coverage: float = 0.9, rate: float = 0.05, initial: float = 1.5):
        self.coverage = coverage
        self.rate = rate
        self.initial = initial
        self.q = np.zeros((0, 0))

    def resize(self, capacity: int, leads: int) -> None:
        old = self.q.shape[0]
        if capacity > old or self.q.shape[1] != leads:
            q = np.full((capacity, leads), self.initial)
            q[:old, : self.q.shape[1]] = self.q[:, :leads]
            self.q = q

    def update(self, slots: np.ndarray, lead_index: np.ndarray, score: np.ndarray) -> None:
        """Fold in |normalised error| `score` of matured forecasts (one per slot/lead pair)."""
        ok = np.isfinite(score)
        slots, lead_index, score = slots[ok], lead_index[ok], score[ok]
        miss = (score > self.q[slots, lead_index]).astype(float)
        step = self.rate * (miss - (1 - self.coverage))
        # A scale-free step: proportional to the current width, floored for a q near zero.
        width = np.maximum(self.q[slots, lead_index], 0.05)
        np.add.at(self.q, (slots, lead_index), step * width * 2)
        np.maximum(self.q, 0.0, out=self.q)
