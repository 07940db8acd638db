"""Which leads are scored, and how per-lead statistics spread to every lead.

Keeping matured-forecast state for every lead of every series costs S x H x H memory; the
engine scores a geometric subset of leads (1, 2, 3, 4, 6, 8, 12, ... and H) and interpolates
per-lead statistics (mixture losses, interval widths) linearly between them.

>>> scored_leads(24).tolist()
[1, 2, 3, 4, 6, 8, 12, 16, 24]
>>> spread = interpolation(scored_leads(4), 4)
>>> (np.array([[1.0, 2.0, 3.0, 4.0]]) @ spread).tolist()
[[1.0, 2.0, 3.0, 4.0]]
"""

from __future__ import annotations

import numpy as np

_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 168, 256, 336, 512, 720, 1024)


def scored_leads(horizon: int) -> np.ndarray:
    leads = sorted({h for h in _LADDER if h <= horizon} | {horizon})
    return np.asarray(leads, dtype=np.int64)


def interpolation(leads: np.ndarray, horizon: int) -> np.ndarray:
    """(L, H) matrix M such that stats_at_scored_leads @ M gives stats at leads 1..H."""
    matrix = np.zeros((len(leads), horizon))
    for h in range(1, horizon + 1):
        j = int(np.searchsorted(leads, h))
        if leads[j] == h:
            matrix[j, h - 1] = 1.0
        else:
            lo, hi = leads[j - 1], leads[j]
            w = (h - lo) / (hi - lo)
            matrix[j - 1, h - 1] = 1 - w
            matrix[j, h - 1] = w
    return matrix
