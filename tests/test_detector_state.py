"""Drift detector state as checkpoint arrays: a detector loaded from it goes on exactly as the
one saved, including from the layout older checkpoints used."""

from __future__ import annotations

import numpy as np
import pytest

from adaptd.engine.detector_state import load_state, save_state
from adaptd.engine.drift import make_detector

PARAMS = {"adwin": {}, "kswin": {"alpha": 0.005, "window_size": 60, "stat_size": 20, "seed": 3},
          "page_hinkley": {}}


def residuals(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.abs(np.concatenate([rng.normal(0, 1, n // 2), rng.normal(0, 4, n - n // 2)]))


@pytest.mark.parametrize("name, rng_dtype", [("adwin", None), ("kswin", "uint32"), ("page_hinkley", None),
                                             ("kswin", "int64")])   # int64: KSWIN's RNG in older checkpoints
def test_a_loaded_detector_fires_exactly_where_the_saved_one_does(name, rng_dtype):
    errors = residuals(600)
    saved = make_detector(name, PARAMS[name])
    for x in errors[:200]:
        saved.update(float(x))
    state = save_state(name, saved)
    if rng_dtype is not None:
        assert state["rng"].dtype == np.uint32
        state["rng"] = state["rng"].astype(rng_dtype)
    loaded = make_detector(name, PARAMS[name])
    load_state(name, loaded, state)
    fired = [[], []]
    for x in errors[200:]:
        for detector, out in zip((saved, loaded), fired):
            detector.update(float(x))
            out.append(bool(detector.drift_detected))
    assert any(fired[0]), "the volatility change should be detected"
    assert fired[1] == fired[0]
