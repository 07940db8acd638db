"""Per-series normalisation and the model inputs and targets it defines.

Values are made relative to the last one and divided by a running scale (an exponentially
weighted mean absolute change), so a level shift changes nothing the models see except one
large step, and the models forecast changes from the last value. A slow running mean adds
one "level" input so that mean reversion can still be learnt.

For an origin o (an observation index) with scale s_o and slow mean m_o:
    window_i = (y[o-W+1+i] - y[o]) / s_o        i = 0..W-1
    level    = clip((y[o] - m_o) / s_o)
    target_h = (y[o+h] - y[o]) / s_o           h = 1..H
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

LEVEL_CLIP = 10.0
# In scale units. A jump after a flat stretch can be millions of "typical" changes: clipped,
# it still reads as huge to every model but cannot blow up what they learn.
VALUE_CLIP = 50.0
MIN_SCALE = 1e-9
TYPICAL_RATE = 0.01


def update_typical(typical: np.ndarray, raw_scale: np.ndarray, change: np.ndarray) -> np.ndarray:
    """The series' long-run scale; flat stretches (no change) leave it alone, so the floor it
    gives `safe_scale` survives them."""
    moved = change > 0
    updated = np.where(typical > 0, (1 - TYPICAL_RATE) * typical + TYPICAL_RATE * raw_scale, raw_scale)
    return np.where(moved, updated, typical)


def update_stats(scale: np.ndarray, mean: np.ndarray, prev: np.ndarray, y: np.ndarray,
                 scale_rate: float, mean_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Next (scale, mean) after observing y following prev (all (n,))."""
    change = np.abs(y - prev)
    scale = np.where(scale > 0, (1 - scale_rate) * scale + scale_rate * change, change)
    mean = (1 - mean_rate) * mean + mean_rate * y
    return scale, mean


def safe_scale(scale: np.ndarray, typical: np.ndarray) -> np.ndarray:
    """A scale never near zero: flat stretches borrow a fraction of the series' typical scale."""
    return np.maximum(np.maximum(scale, 0.1 * typical), MIN_SCALE)


def windows(values: np.ndarray, scale: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, W) normalised windows and (n,) levels from raw windows (n, W) ending at the origin."""
    last = values[:, -1]
    s = scale[:, None]
    window = np.clip((values - last[:, None]) / s, -VALUE_CLIP, VALUE_CLIP)
    level = np.clip((last - mean) / scale, -LEVEL_CLIP, LEVEL_CLIP)
    return window, level


def rls_level(last: np.ndarray, mean: np.ndarray, scale: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """The level as RLS reads it: in long-run units (`scale` / `ratio`, see
    OnlineEngine._rls_ratio), within ±VALUE_CLIP. The GRU's level is clipped at LEVEL_CLIP units
    of the fast scale; in calm stretches that clip cuts exactly the distance from the mean that
    RLS learns mean reversion from (on ETTm1 and WTH it bites at ~10% of origins, at half of them
    on WTH's pressure channels; BENCHMARKS.md, "RLS reads the whole level")."""
    return np.clip((last - mean) / scale * ratio, -VALUE_CLIP, VALUE_CLIP)


def rls_features(window: np.ndarray, level: np.ndarray, lags: int) -> np.ndarray:
    """RLS inputs: the newest `lags` relative values (the origin's own, always 0, left out),
    the level (`rls_level`) and a bias."""
    n = window.shape[0]
    return np.concatenate([window[:, -lags - 1:-1], level[:, None], np.ones((n, 1))], axis=1)


def rls_feature_count(lags: int) -> int:
    return lags + 2


def normalisation_path(y: np.ndarray, scale_rate: float, mean_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """The (safe scale, slow mean) the online engine holds after each value of y, for offline use
    (pretraining, meta-training). Must follow OnlineEngine._append step for step."""
    n = len(y)
    scale, mean = np.empty(n), np.empty(n)
    raw = typical = 0.0
    level = float(y[0]) if n else 0.0
    for t in range(n):
        change = abs(y[t] - y[t - 1]) if t else 0.0
        raw = (1 - scale_rate) * raw + scale_rate * change if raw > 0 else change
        if change > 0:
            typical = (1 - TYPICAL_RATE) * typical + TYPICAL_RATE * raw if typical > 0 else raw
        level = (1 - mean_rate) * level + mean_rate * y[t] if t else level
        scale[t] = max(raw, 0.1 * typical, MIN_SCALE)
        mean[t] = level
    return scale, mean


def series_examples(y: np.ndarray, window: int, horizon: int, scale_rate: float, mean_rate: float,
                    stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every origin of one series with a full window: (windows, levels, targets, masks), where a
    mask marks the leads that lie inside y (nothing past its end is invented)."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n <= window:
        empty = np.zeros((0, window))
        return empty, np.zeros(0), np.zeros((0, horizon)), np.zeros((0, horizon))
    scale, mean = normalisation_path(y, scale_rate, mean_rate)
    origins = np.arange(window - 1, n - 1, stride)
    return _examples(y, sliding_window_view(y, window)[origins - window + 1], origins, scale, mean, horizon)


def young_examples(y: np.ndarray, ages: np.ndarray, window: int, horizon: int, scale_rate: float,
                   mean_rate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What a cold start forecasts from: the origin after the first `a` values of y, for each a in
    `ages` (1 <= a <= window), with the window's never-observed places filled with the last value
    (zeros relative to it), as `OnlineEngine._predict` fills them. Same arrays as `series_examples`.

    >>> win, level, target, mask = young_examples(np.arange(10.0), np.array([3]), 5, 2, 0.1, 0.01)
    >>> win.round(2).tolist(), target.round(2).tolist(), mask.tolist()
    ([[0.0, 0.0, -2.0, -1.0, 0.0]], [[1.0, 2.0]], [[1.0, 1.0]])
    """
    y = np.asarray(y, dtype=np.float64)
    scale, mean = normalisation_path(y, scale_rate, mean_rate)
    origins = np.asarray(ages, dtype=np.int64) - 1
    places = origins[:, None] + np.arange(-window + 1, 1)[None, :]             # (m, W) indices into y
    raw = np.where(places >= 0, y[np.maximum(places, 0)], y[origins][:, None])
    return _examples(y, raw, origins, scale, mean, horizon)


def _examples(y: np.ndarray, raw: np.ndarray, origins: np.ndarray, scale: np.ndarray, mean: np.ndarray,
              horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw windows (m, W) ending at `origins` of y, normalised as the engine sees them, with
    their targets; a mask marks the leads that lie inside y (nothing past its end is invented)."""
    n = len(y)
    s, last = scale[origins], y[origins]
    win = np.clip((raw - last[:, None]) / s[:, None], -VALUE_CLIP, VALUE_CLIP)
    level = np.clip((last - mean[origins]) / s, -LEVEL_CLIP, LEVEL_CLIP)
    cols = origins[:, None] + np.arange(1, horizon + 1)[None, :]
    mask = (cols < n).astype(np.float64)
    target = np.clip((y[np.minimum(cols, n - 1)] - last[:, None]) / s[:, None], -VALUE_CLIP, VALUE_CLIP) * mask
    return win, level, target, mask
