"""Seasonal-naive / last-value forecasting: the fallback for series with little history.

Intervals are split-conformal: the `coverage` quantile of the rule's own past absolute
errors at each lead (the rule has no parameters, so its past errors are honest out-of-sample).
"""

from __future__ import annotations

import bisect
import threading
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..records import Observation
from .base import Engine, Forecast, ForecastPoint, NotReady, UnknownSeries
from .history import STEP_TIMESTAMPS, SeriesHistory, infer_season, infer_step

if TYPE_CHECKING:
    from ..config import ModelSettings

FORMAT_VERSION = 1
KINDS = ("last_value", "seasonal_naive")   # the model.kind of its answers
MAX_RESIDUAL_ORIGINS = 512
RECORD_STRETCH = 256   # records recorded per hold of the lock
MIN_RESIDUALS = 8
_FLOAT_MAX = float(np.finfo(np.float64).max)


def naive_lags(horizon: int, season: int) -> np.ndarray:
    """How far back the value forecast for lead h (1..H) lies: m*ceil(h/m) (m=1: last value)."""
    h = np.arange(1, horizon + 1)
    return season * np.ceil(h / season).astype(np.int64)


def interval_halfwidths(y: np.ndarray, lags: np.ndarray, coverage: float) -> np.ndarray:
    """Per lead, the `coverage` quantile of |y[j] - y[j - lag]| over recent targets j.

    >>> y = np.sin(np.arange(40.0))
    >>> lags = naive_lags(6, 1)
    >>> slow = [np.quantile(np.abs(y[lag:] - y[:-lag]), 0.9 * (1 + 1 / (40 - lag))) for lag in lags]
    >>> bool(np.allclose(interval_halfwidths(y, lags, 0.9), slow))
    True
    """
    n = len(y)
    # Every lead's errors as one NaN-padded row: one sort instead of a quantile per lead (that
    # took milliseconds of the event loop per fallback answer).
    errors = np.full((len(lags), max(1, min(n, MAX_RESIDUAL_ORIGINS))), np.nan)
    for i, lag in enumerate(lags):
        lo = max(int(lag), n - MAX_RESIDUAL_ORIGINS)
        if lo < n:
            errors[i, : n - lo] = np.abs(y[lo:] - y[lo - lag: n - lag])
    widths = _conformal_quantiles(errors, coverage)
    few = (~np.isnan(errors)).sum(axis=1) < MIN_RESIDUALS   # as _conformal_quantiles counts
    if few.any():   # too little history: spread of one-step changes, grown with sqrt(h)
        one_step = np.abs(np.diff(y))
        fallback = float(one_step.max()) if one_step.size else 0.0
        widths[few] = fallback * np.sqrt(np.arange(1, len(lags) + 1)[few])
    return widths


def _conformal_quantiles(errors: np.ndarray, coverage: float) -> np.ndarray:
    """Per row of `errors` (never-observed places NaN), the `coverage` quantile of its k errors
    with the finite-sample conformal correction, interpolated as np.quantile's "linear"; NaN
    where k < MIN_RESIDUALS."""
    errors = np.sort(errors, axis=1)   # NaN last
    k = (~np.isnan(errors)).sum(axis=1)
    level = np.minimum(1.0, coverage * (1 + 1 / np.maximum(k, 1)))
    pos = level * (k - 1)
    below = np.clip(np.floor(pos).astype(np.int64), 0, errors.shape[1] - 1)
    above = np.minimum(below + 1, np.maximum(k - 1, 0))
    a = np.take_along_axis(errors, below[:, None], axis=1)[:, 0]
    b = np.take_along_axis(errors, above[:, None], axis=1)[:, 0]
    with np.errstate(invalid="ignore"):
        return np.where(k >= MIN_RESIDUALS, a + (b - a) * (pos - below), np.nan)


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
        errors = np.abs(values[:, h:] - values[:, :-h])
        enough = (~np.isnan(errors)).sum(axis=1) >= MIN_RESIDUALS
        widths[enough, h - 1] = _conformal_quantiles(errors[enough], coverage)
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
        self._steps: dict[str, tuple[SeriesHistory, int, float | None]] = {}   # (history, its version, step)
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, m: ModelSettings) -> NaiveEngine:
        """The daemon's `[model] engine = "naive"`."""
        return cls(history=m.history, max_horizon=m.max_horizon, season=m.season, coverage=m.coverage)

    def record(self, batch: Sequence[Observation]) -> None:
        # The lock is taken a few hundred records at a time: a group commit of 10,000 records
        # held it ~10 ms (more with the GIL shared), and forecasts on the event loop wait for it.
        for start in range(0, len(batch), RECORD_STRETCH):
            with self._lock:
                for obs in batch[start: start + RECORD_STRETCH]:
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
            ts, y, version = hist.ts[:], hist.array(), hist.version
        full = self._compute(series, ts, y)
        with self._lock:
            if self._series.get(series) is hist:   # not forgotten meanwhile (a new history restarts versions)
                self._cache[series] = (version, full)
        return full.head(horizon)

    def _compute(self, series: str, ts: Sequence[float], y: np.ndarray) -> Forecast:
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

    def forget(self, series: str) -> None:
        with self._lock:
            for known in (self._series, self._cache, self._steps):
                known.pop(series, None)

    def last_ts(self, series: str) -> float | None:
        hist = self._series.get(series)
        return hist.ts[-1] if hist is not None and hist.ts else None

    def revised(self, series: str) -> float:
        """The newest time at which one of the series' records arrived out of order or had its
        value replaced (-inf: never)."""
        hist = self._series.get(series)
        return hist.revised if hist is not None else -float("inf")

    def mark_revised(self, series: str, ts: float) -> None:
        """Note that what the models learnt at `ts` is not the stored value (found at a restart)."""
        with self._lock:
            hist = self._series.get(series)
            if hist is not None:
                hist.revised = max(hist.revised, ts)

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
        """The series' sampling interval, inferred from its newest timestamps (every answer
        needs it: kept until the series changes)."""
        # Without the lock (record may hold it): each read below is one atomic step under the
        # GIL. The version is read first and bumped only after a change, so a cached step is
        # never older than its version; one from newer records is only recomputed once more.
        hist = self._series.get(series)
        if hist is None:
            return None
        version, known = hist.version, self._steps.get(series)
        if known is None or known[0] is not hist or known[1] != version:   # (a forgotten series' history is another)
            known = self._steps[series] = (hist, version, infer_step(hist.ts[-STEP_TIMESTAMPS:]))
        return known[2]

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "series": len(self._series)}
