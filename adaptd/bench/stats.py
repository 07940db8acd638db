"""Paired comparisons for the benchmarks: a ratio of means with a bootstrap interval."""

from __future__ import annotations

import numpy as np


def bootstrap_ratio(arm: np.ndarray, ref: np.ndarray, reps: int, seed: int) -> tuple[float, float, float]:
    """mean(arm) / mean(ref) and its paired 95% bootstrap interval: the same units (tasks, change
    episodes) are resampled for both, so what they share cancels.

    >>> bootstrap_ratio(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0]), 200, 0)
    (0.5, 0.5, 0.5)
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arm.size, (reps, arm.size))
    ratios = arm[idx].mean(axis=1) / ref[idx].mean(axis=1)
    return float(arm.mean() / ref.mean()), float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))
