"""River drift detectors' state as plain arrays, so checkpoints stay pickle-free.

A restarted daemon must detect exactly as before (and so adapt exactly as before): each
detector's running state goes into the series' checkpoint. ADWIN keeps it in a Rust object
that serialises itself to bytes (data, not code: no pickle); KSWIN and Page-Hinkley keep a few
Python attributes. All three also keep whether the last update fired, which resets them at the
next one. These read river's private attributes: river is pinned (constraints.txt), and a state
that does not fit raises, so the detector starts empty rather than wrong.

>>> from river import drift
>>> a, b = drift.ADWIN(), drift.ADWIN()
>>> for x in [0.0] * 100 + [5.0] * 40:
...     _ = a.update(x)
>>> load_state("adwin", b, save_state("adwin", a))
>>> _ = a.update(5.0), b.update(5.0)
>>> a.drift_detected == b.drift_detected, a.width == b.width
(True, True)
"""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np


def save_state(name: str, detector: Any) -> dict[str, np.ndarray]:
    state = {"fired": np.array(bool(detector._drift_detected))}
    if name == "adwin":
        state["adwin"] = np.frombuffer(detector._helper.__getstate__(), dtype=np.uint8).copy()
    elif name == "kswin":
        version, internal, gauss = detector._rng.getstate()
        state.update(window=np.array(detector.window, dtype=np.float64), n=np.array(detector.n),
                     # Mersenne Twister: 624 32-bit words and a position (older checkpoints
                     # hold them as int64; both load).
                     p_value=np.array(float(detector.p_value)), rng=np.array(internal, dtype=np.uint32),
                     rng_meta=np.array([version, math.nan if gauss is None else gauss]))
    elif name == "page_hinkley":
        state["stats"] = np.array([detector._x_mean.n, detector._x_mean._mean, detector._sum_increase,
                                   detector._sum_decrease, detector._min_increase, detector._max_decrease])
    else:
        raise ValueError(f"no state codec for detector {name!r}")
    return state


def load_state(name: str, detector: Any, state: dict[str, np.ndarray]) -> None:
    """Put `state` (from save_state) into a fresh `detector` made with the same parameters."""
    if name == "adwin":
        detector._helper.__setstate__(state["adwin"].astype(np.uint8).tobytes())
    elif name == "kswin":
        window = state["window"].astype(np.float64)
        if window.ndim != 1 or window.size > detector.window_size or state["rng"].shape != (625,):
            raise ValueError("KSWIN state does not fit this detector")
        version, gauss = state["rng_meta"].tolist()
        detector._rng.setstate((int(version), tuple(int(x) for x in state["rng"]),
                                None if math.isnan(gauss) else gauss))
        detector.window = collections.deque(window.tolist(), maxlen=detector.window_size)
        detector.n, detector.p_value = int(state["n"]), float(state["p_value"])
    elif name == "page_hinkley":
        n, mean, up, down, low, high = (float(v) for v in state["stats"])
        detector._x_mean.n, detector._x_mean._mean = n, mean
        detector._sum_increase, detector._sum_decrease = up, down
        detector._min_increase, detector._max_decrease = low, high
    else:
        raise ValueError(f"no state codec for detector {name!r}")
    detector._drift_detected = bool(state["fired"])
