"""Drift detection on forecast residuals with river's detectors, one per series.

The detector sees each series' absolute normalised one-step error. Nothing non-finite ever
reaches it (a single NaN poisons river's running statistics), and after a detection the
series is left alone for `cooldown` observations so one change triggers one adaptation.

>>> monitor = DriftMonitor("page_hinkley", {"threshold": 5.0, "min_instances": 10}, cooldown=50)
>>> fired = [t for t in range(200) if monitor.update(0, 0.1 if t < 100 else 3.0, t)]
>>> len(fired), 100 <= fired[0] < 110
(1, True)
"""

from __future__ import annotations

import math
from typing import Any

from river import drift
from river.base import DriftDetector

DETECTORS: dict[str, type[DriftDetector]] = {
    "adwin": drift.ADWIN,
    "kswin": drift.KSWIN,
    "page_hinkley": drift.PageHinkley,
}


def make_detector(name: str, params: dict[str, Any]) -> DriftDetector:
    return DETECTORS[name](**params)


class DriftMonitor:
    def __init__(self, detector: str, params: dict[str, Any], cooldown: int):
        self.detector = detector
        self.params = dict(params)
        self.cooldown = cooldown
        self._detectors: dict[int, DriftDetector] = {}
        self._quiet_until: dict[int, int] = {}

    def reset(self, slot: int) -> None:
        self._detectors.pop(slot, None)
        self._quiet_until.pop(slot, None)

    def update(self, slot: int, residual: float, count: int) -> bool:
        """Feed one residual of `slot` at observation `count`; True when drift is declared."""
        if not math.isfinite(residual):
            return False
        detector = self._detectors.get(slot)
        if detector is None:
            detector = self._detectors[slot] = make_detector(self.detector, self.params)
        detector.update(min(residual, 1e6))
        if not detector.drift_detected or count < self._quiet_until.get(slot, -1):
            return False
        self._quiet_until[slot] = count + self.cooldown
        # A fresh detector: its window spanned the change and would keep firing on it.
        self._detectors[slot] = make_detector(self.detector, self.params)
        return True
