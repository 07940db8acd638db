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

import json
import logging
import math
from typing import Any

import numpy as np
import river
from river import drift
from river.base import DriftDetector

from .detector_state import load_state, save_state

log = logging.getLogger(__name__)
PREFIX = "drift_"   # checkpoint keys of the detector's state

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
        # Which detector, with which parameters, in which river: a saved state is only loaded
        # into the same (another river may lay out ADWIN's bytes differently).
        self.kind = json.dumps([detector, self.params, river.__version__], sort_keys=True)
        self.cooldown = cooldown
        self._detectors: dict[int, DriftDetector] = {}
        self._quiet_until: dict[int, int] = {}

    def reset(self, slot: int) -> None:
        self._detectors.pop(slot, None)
        self._quiet_until.pop(slot, None)

    def state(self, slot: int) -> dict[str, np.ndarray]:
        """The slot's detector state and cool-down as checkpoint arrays (none: no detector yet)."""
        out = {f"{PREFIX}kind": np.array(self.kind), f"{PREFIX}quiet": np.array(self._quiet_until.get(slot, -1))}
        detector = self._detectors.get(slot)
        if detector is not None:
            out.update({PREFIX + k: v for k, v in save_state(self.detector, detector).items()})
        return out

    def load(self, slot: int, arrays: dict[str, np.ndarray], series: str) -> bool:
        """Restore what `state` saved; False (and an empty detector) if there is none or it was
        saved by another detector or with other parameters, or does not fit."""
        self.reset(slot)
        if f"{PREFIX}kind" not in arrays or str(arrays[f"{PREFIX}kind"]) != self.kind:
            return False
        state = {k[len(PREFIX):]: v for k, v in arrays.items() if k.startswith(PREFIX)}
        try:
            quiet = int(state["quiet"])
            if "fired" in state:   # else saved before the detector saw a residual
                detector, probe = (make_detector(self.detector, self.params) for _ in range(2))
                load_state(self.detector, detector, state)
                # Damaged bytes can load and then fail at the first update, in the learning
                # thread: try one on a copy of the state first.
                load_state(self.detector, probe, state)
                probe.update(0.0)
                self._detectors[slot] = detector
        except BaseException as exc:   # river's Rust decoding panics (a BaseException) on bad bytes
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            log.warning("series %r: drift detector state not restored (%s); it starts empty", series, exc)
            self.reset(slot)
            return False
        if quiet >= 0:
            self._quiet_until[slot] = quiet
        return True

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
