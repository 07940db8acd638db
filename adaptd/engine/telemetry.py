"""What an engine reports while it works: the daemon's metrics listen, replay and benchmarks don't.

Calls come from the learning thread with whole arrays (one call per batch, never per record),
so a listener can fold thousands of scored forecasts in one vectorised update. Drift detections
are the exception: rare (at most one per series per cooldown), each is reported as it happens.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


# What a drift adaptation can end with (learner.adapt), in the order that wins ties.
CANDIDATES = ("finetuned", "init", "memory", "previous")


class SeriesNow(NamedTuple):
    """One series at its newest observation, for per-series export (NaN: not known yet)."""
    ts: float
    value: float
    forecast: float        # the lead-1 forecast that was issued for this observation
    lo: float
    hi: float
    scaled_error: float    # rolling |lead-1 error| in units of the series' typical one-step change


class Telemetry:
    """The silent listener; `adaptd.metrics.Metrics` overrides these."""

    def scored(self, leads: np.ndarray, scaled_error: np.ndarray, inside: np.ndarray) -> None:
        """Matured forecasts: their lead (steps), |error| in units of the series' typical
        one-step change, and whether the value fell inside the issued interval (NaN-free)."""

    def drifted(self, detector: str) -> None:
        """One drift detection, as the detector fires (before its event is stored in SQL)."""

    def adaptation(self, outcome: str, seconds: float, winner: str | None = None) -> None:
        """One finished adaptation: "adapted" (new weights won), "kept" or "failed"; `winner` says
        which candidate won (learner.CANDIDATES: finetuned, init, memory or previous)."""

    def gaps(self, filled: int, filled_steps: int, unfilled: int) -> None:
        """Time gaps the models met: gaps filled by interpolation (and their missing steps),
        and gaps too long to fill."""

    def nonfinite(self, count: int) -> None:
        """Model outputs that were not finite and were replaced (a sign of a broken model)."""


SILENT = Telemetry()
