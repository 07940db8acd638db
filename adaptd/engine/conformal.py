"""Online conformal prediction intervals by quantile tracking (adaptive conformal inference).

Per series and scored lead, q tracks the `coverage` quantile of the absolute normalised
error: after each matured forecast, log q grows by 2*rate*coverage on a miss and shrinks by
2*rate*(1-coverage) on a hit, so the long-run miss rate is 1-coverage whatever the drift
(Angelopoulos, Candès & Tibshirani, "Conformal PID control", 2023: the quantile tracker, here
on the log scale so that its step is proportional to the width, the same for every series).
Below FLOOR the step is additive (FLOOR times the log step), so a q near zero moves at all.

A miss is judged against the width the forecast was issued with, not the tracker's width when
its target arrives H steps later: by then the misses of the forecasts in between (errors that
overlap this one's) have widened it, and judging against that hides this miss. On ETTh2 at
H=24 coverage was 0.882 at lead 24 against 0.898 at lead 1 (where the two widths are the same
and the 0.2 points came from the step used before, additive and proportional to q).

Two things make long-lead intervals narrower at the same coverage (ETTh2, H=48: -15% at lead
24, -29% at lead 48; BENCHMARKS.md, "Interval coverage"):
- Scores are in `lead_units`: at lead 1 the fast scale the models use counts half, and with
  the lead the series' long-run scale takes over. The volatility at the origin says less and
  less about the error many steps later, so normalising by it alone made scores heavy-tailed.
- The step shrinks past lead SLOW_AFTER (rate x SLOW_AFTER / lead): the errors of forecasts
  from consecutive origins overlap, so a lead-h score brings about 1/h of new information, and
  a tracker stepping at the lead-1 rate swung widely about its quantile; the mean width of a
  swinging width is larger (a wide spell costs more than a narrow one saves). A long lead
  starts `initial` x sqrt(lead) wide, so a young series' slow tracker starts wide, not narrow.

>>> import numpy as np
>>> tracker = QuantileTracker(coverage=0.9, rate=0.05, initial=1.0)
>>> tracker.resize(1)
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

FLOOR = 0.05      # below this q (in units of the series' scale) steps are additive
CEILING = 1e6     # q stays finite whatever the errors (scores are not clipped)
SLOW_AFTER = 12   # leads beyond this step more slowly (rate x SLOW_AFTER / lead)


def lead_units(ratio: np.ndarray, leads: np.ndarray) -> np.ndarray:
    """(n, len(leads)) size of an interval unit at each lead, in units of the fast scale, given
    `ratio` (n,) = fast scale / long-run scale at the origin: fast^w x long-run^(1-w) with
    w = 1/(1+lead), so half each at lead 1 and mostly the long-run scale at long leads."""
    return np.asarray(ratio, dtype=float)[:, None] ** (-leads / (1.0 + leads))


class QuantileTracker:
    def __init__(self, coverage: float = 0.9, rate: float = 0.05, initial: float = 1.5,
                 leads: np.ndarray | None = None):
        self.coverage = coverage
        leads = np.ones(1) if leads is None else np.asarray(leads, dtype=float)
        self.rate = rate * np.minimum(1.0, SLOW_AFTER / leads)   # per lead
        self.initial = initial * np.sqrt(leads)                  # per lead
        self.q = np.zeros((0, leads.size))

    def resize(self, capacity: int) -> None:
        old = self.q.shape[0]
        if capacity > old:
            q = np.tile(self.initial, (capacity, 1))
            q[:old] = self.q
            self.q = q

    def update(self, slots: np.ndarray, lead_index: np.ndarray, score: np.ndarray,
               issued: np.ndarray | None = None) -> None:
        """Fold in |normalised error| `score` of matured forecasts, at most one per slot/lead
        pair, whose intervals were issued `issued` wide (None or NaN: not known, e.g. from a
        checkpoint written before widths were kept; judged against the current width)."""
        ok = np.isfinite(score)
        slots, lead_index, score = slots[ok], lead_index[ok], score[ok]
        current = self.q[slots, lead_index]
        width = current if issued is None else np.where(np.isfinite(issued[ok]), issued[ok], current)
        step = 2 * self.rate[lead_index] * ((score > width) - (1 - self.coverage))
        # On log q the steps telescope, so the miss rate is on target in the long run (a step
        # proportional to q instead, as before, missed ~0.2 points more).
        stepped = np.where(current >= FLOOR, current * np.exp(step), np.maximum(current + step * FLOOR, 0.0))
        self.q[slots, lead_index] = np.minimum(stepped, CEILING)
