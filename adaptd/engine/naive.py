"""Seasonal-naive / last-value forecasting: the fallback for series with little history.

Intervals are split-conformal: the `coverage` quantile of the rule's own past absolute
errors at each lead (the rule has no parameters, so its past errors are honest out-of-sample).
"""

from __future__ import annotations

import bisect
import threading
from typing import Any, Sequence

import numpy as np

from ..records import Observation
from .base import Engine, Forecast, ForecastPoint, NotReady, UnknownSeries
from .history import SeriesHistory, infer_season, infer_step

FORMAT_VERSION = 1
KINDS = ("last_value", "seasonal_naive")   # the model.kind of its answers
MAX_RESIDUAL_ORIGINS = 512
MIN_RESIDUALS = 8
_FLOAT_MAX = float(np.finfo(np.float64).max)


def naive_lags(horizon: int, season: int) -> np.ndarray:
    """How far back the value forecast for lead h (1..H) lies: m*ceil(h/m) (m=1: last value)."""
    h = np.arange(1, horizon + 1)
    return season * np.ceil(h / season).astype(np.int64)


def interval_halfwidths(y: np.ndarray, lags: np.ndarray, coverage: float) -> np.ndarray:
    """Per lead, the `coverage` quantile of |y[j] - y[j - lag]| over recent targets j."""
    n = len(y)
    widths = np.empty(len(lags))
    fallback = None
    for i, lag in enumerate(lags):
        lo = max(int(lag), n - MAX_RESIDUAL_ORIGINS)
        errors = np.abs(y[lo:] - y[lo - lag: n - lag]) if lo < n else np.empty(0)
        if errors.size >= MIN_RESIDUALS:
            level = min(1.0, coverage * (1 + 1 / errors.size))  # finite-sample conformal correction
            widths[i] = np.quantile(errors, level)
        else:
            if fallback is None:  # too little history: spread of one-step changes, grown with sqrt(h)
                one_step = np.abs(np.diff(y))
                fallback = float(one_step.max()) if one_step.size else 0.0
            widths[i] = fallback * np.sqrt(i + 1)
    return widths


def last_value_halfwidths(values: np.ndarray, horizon: int, coverage: float) -> np.ndarray:
    """`interval_halfwidths` of the last-value rule (lag h at lead h) for many short series at
    once: values (n, m), each row's never-observed places NaN on the left; returns (n, horizon).

    >>> y = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 4.5, 6.0, 5.0, 7.0, 6.5, 8.0, 7.0])
    >>> batch = np.concatenate([[np.nan, np.nan], y])[None]
    >>> bool(np.allclose(last_value_halfwidths(batch, 6, 0.9)[0], interval_halfwidths(y, naive_lags(6, 1), 0.9)))
    True
    """
    n, m = values.shape
    one_step = np.abs(np.diff(values, axis=1))
    seen = ~np.isnan(one_step)
    fallback = np.where(seen, one_step, 0.0).max(axis=1) if m > 1 else np.zeros(n)
    widths = fallback[:, None] * np.sqrt(np.arange(1, horizon + 1))[None, :]
    for h in range(1, min(horizon, m - MIN_RESIDUALS) + 1):
        errors = np.sort(np.abs(values[:, h:] - values[:, :-h]), axis=1)   # never-observed (NaN) last
        k = (~np.isnan(errors)).sum(axis=1)
        enough = k >= MIN_RESIDUALS
        if not enough.any():
            continue
        level = np.minimum(1.0, coverage * (1 + 1 / np.maximum(k, 1)))   # as np.quantile's "linear"
        pos = level * (k - 1)
        below = np.clip(np.floor(pos).astype(np.int64), 0, errors.shape[1] - 1)
        above = np.minimum(below + 1, np.maximum(k - 1, 0))
        a = np.take_along_axis(errors, below[:, None], axis=1)[:, 0]
        b = np.take_along_axis(errors, above[:, None], axis=1)[:, 0]
        widths[enough, h - 1] = (a + (b - a) * (pos - below))[enough]
    return widths


class NaiveEngine(Engine):
    kind = "naive"

    def __init__(self, history: int = 1024, max_horizon: int = 168, season: int = 0, coverage: float = 0.9):
        self.capacity = history
        self.max_horizon = max_horizon
        self.season = season
        self.coverage = coverage
        self._series: dict[str, SeriesHistory] = {}
        self._cache: dict[str, tuple[int, Forecast]] = {}
        self._lock = threading.Lock()

    def record(self, batch: Sequence[Observation]) -> None:
        with self._lock:
            for obs in batch:
                hist = self._series.get(obs.series)
                if hist is None:
                    hist = self._series[obs.series] = SeriesHistory(self.capacity)
                hist.add(obs.ts, obs.value)

    def forecast(self, series: str, horizon: int) -> Forecast:
        with self._lock:
            hist = self._series.get(series)
            if hist is None:
                raise UnknownSeries(series)
            cached = self._cache.get(series)
            if cached is not None and cached[0] == hist.version:
                return cached[1].head(horizon)
            ts, y, version = list(hist.ts), hist.array(), hist.version
        full = self._compute(series, ts, y)
        with self._lock:
            self._cache[series] = (version, full)
        return full.head(horizon)

    def _compute(self, series: str, ts: list[float], y: np.ndarray) -> Forecast:
        step = infer_step(ts)
        if step is None:
            raise NotReady(f"series {series!r} has {len(ts)} observation(s) at one time; "
                           "a forecast needs at least 2 timestamps to know its step")
        season = infer_season(step, self.season)
        if len(y) < 2 * season:
            season = 1
        lags = naive_lags(self.max_horizon, season)
        leads = np.arange(1, self.max_horizon + 1)
        values = y[len(y) - 1 + leads - lags]  # always within the newest season
        with np.errstate(over="ignore", invalid="ignore"):
            widths = interval_halfwidths(y, lags, self.coverage)
            # Finite values near the float limit make errors overflow; keep the interval finite
            # (a forecast with inf/NaN in it cannot be answered in JSON at all).
            widths = np.nan_to_num(widths, nan=_FLOAT_MAX, posinf=_FLOAT_MAX)
            lo = np.clip(values - widths, -_FLOAT_MAX, _FLOAT_MAX)
            hi = np.clip(values + widths, -_FLOAT_MAX, _FLOAT_MAX)
        origin = ts[-1]
        points = tuple(ForecastPoint(origin + step * (i + 1), float(v), float(a), float(b))
                       for i, (v, a, b) in enumerate(zip(values, lo, hi)))
        model = {"kind": KINDS[1] if season > 1 else KINDS[0], "version": FORMAT_VERSION,
                 "init": None, "last_drift": None, "adaptations": 0, "season": season}
        return Forecast(series, origin, step, points, model)

    def last_ts(self, series: str) -> float | None:
        hist = self._series.get(series)
        return hist.ts[-1] if hist is not None and hist.ts else None

    def since(self, series: str, after: float, limit: int) -> list[tuple[float, float]] | None:
        """The series' (ts, value) records newer than `after`, oldest first, as they arrived;
        None when there are more than `limit`, `after` is older than everything kept, or one of
        them arrived out of order or was re-sent (learning, in arrival order, reads them otherwise)."""
        with self._lock:
            hist = self._series.get(series)
            if hist is None or hist.revised > after:
                return None
            start = bisect.bisect_right(hist.ts, after)
            if len(hist.ts) - start > limit or start == 0:
                return None
            return list(zip(hist.ts[start:], hist.values[start:]))

    def step(self, series: str) -> float | None:
        """The series' sampling interval, inferred from its newest timestamps."""
        with self._lock:
            hist = self._series.get(series)
            return infer_step(hist.ts) if hist is not None else None

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "series": len(self._series)}
