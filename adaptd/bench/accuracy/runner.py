"""Leak-free online evaluation of any model that implements `OnlineModel`.

The runner owns the data; a model only ever receives

- ``fit_warmup(Y)``: a read-only *copy* of the warm-up rows [0, first_target),
- ``observe(y)``: a read-only *copy* of one row, strictly in time order,
- ``forecast(horizon)``: nothing but the horizon,

so when it is asked for the forecast at origin t it has been given rows <= t and nothing else.
Copies (never views) matter: a view's ``.base`` would lead back to the whole array, future
included. The forecast is copied the moment it is returned, so a model cannot hand out a
buffer and fill in the truth after it has observed it. (The guarantee is about the API: Python
code that walks the interpreter's stack frames can read anything, and is not a model.)

Scoring: for every origin t whose H targets t+1..t+H all lie in [first_target, end), the
forecast is compared with those rows; MSE and MAE are averaged with equal weight over channels,
origins and steps, on the z-scored scale.

>>> import numpy as np
>>> class Zero:
...     name = "zero"
...     def fit_warmup(self, Y): pass
...     def observe(self, y): pass
...     def forecast(self, horizon): return np.zeros((1, horizon))
>>> r = evaluate(Zero(), np.array([[0.0], [1.0], [2.0], [-2.0]]), first_target=2, end=4, horizon=1)
>>> r.n_origins, r.mse, r.mae
(2, 4.0, 2.0)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class OnlineModel(Protocol):
    name: str

    def fit_warmup(self, Y: np.ndarray) -> None:
        """(T_warm, S) z-scored warm-up rows; optional pretraining. The rows are observed after."""

    def observe(self, y: np.ndarray) -> None:
        """(S,) z-scored values at the next time step, called in time order."""

    def forecast(self, horizon: int) -> np.ndarray:
        """(S, horizon) forecasts of t+1..t+horizon from the values observed so far (<= t)."""


class ModelError(RuntimeError):
    """A model broke the protocol (wrong shape, non-finite forecast); the message names it."""


@dataclass
class EvalResult:
    model: str
    horizon: int
    n_origins: int
    n_channels: int
    mse: float
    mae: float
    mse_by_step: list[float]
    mse_by_channel: list[float]
    wall_seconds: float          # everything: fit_warmup, warm-up observes, online loop, scoring
    warmup_seconds: float        # fit_warmup + observing the warm-up rows
    online_seconds: float        # the scored loop (forecast + observe + scoring)
    model_seconds: float         # time spent inside the model's methods only
    us_per_origin: float         # model time in the scored loop per origin (forecast + observe)
    forecasts: np.ndarray | None = field(default=None, repr=False)  # (n_origins, S, H) if kept
    extra: dict[str, Any] = field(default_factory=dict)
    origin_mse: np.ndarray | None = field(default=None, repr=False)  # (n_origins, S): MSE over the H steps
    drift_rows: list[tuple[int, int]] = field(default_factory=list)  # (channel, row) the model detected

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("forecasts", "origin_mse")}


def _readonly_copy(a: np.ndarray) -> np.ndarray:
    out = np.array(a, dtype=np.float64, copy=True, order="C")
    out.flags.writeable = False
    return out


def _checked_forecast(model: OnlineModel, horizon: int, n_channels: int, origin: int) -> np.ndarray:
    raw = model.forecast(horizon)
    f = np.array(raw, dtype=np.float64, copy=True)  # a copy now: later changes to `raw` do not count
    if f.shape != (n_channels, horizon):
        raise ModelError(f"{model.name}: forecast at origin {origin} has shape {f.shape}, "
                         f"expected {(n_channels, horizon)}")
    if not np.isfinite(f).all():
        raise ModelError(f"{model.name}: non-finite forecast at origin {origin}")
    return f


def scored_origins(first_target: int, end: int, horizon: int) -> range:
    """Origins t whose targets t+1..t+H all lie in [first_target, end).

    >>> list(scored_origins(3, 7, 1)), list(scored_origins(3, 7, 3))
    ([2, 3, 4, 5], [2, 3])
    """
    return range(first_target - 1, end - horizon)


def evaluate(model: OnlineModel, values: np.ndarray, first_target: int, end: int | None = None,
             horizon: int = 1, *, keep_forecasts: bool = False, progress: Any = None) -> EvalResult:
    """Run `model` over `values` (T, S) online and score it on targets [first_target, end).

    `progress`, if given, is called as ``progress(done, total)`` now and then during the loop.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be (T, S), got shape {values.shape}")
    T, S = values.shape
    end = T if end is None else end
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    if not 1 <= first_target <= end <= T:
        raise ValueError(f"need 1 <= first_target ({first_target}) <= end ({end}) <= T ({T})")
    origins = scored_origins(first_target, end, horizon)
    if len(origins) < 1:
        raise ValueError(f"no origin has all {horizon} targets inside [{first_target}, {end})")

    sse = np.zeros((S, horizon))
    sae = np.zeros((S, horizon))
    origin_mse = np.empty((len(origins), S))
    kept = np.empty((len(origins), S, horizon)) if keep_forecasts else None
    model_time = 0.0
    clock = time.perf_counter

    start = clock()
    model.fit_warmup(_readonly_copy(values[:first_target]))
    for t in range(first_target):  # state current up to the first origin, first_target - 1
        model.observe(_readonly_copy(values[t]))
    warm_done = clock()
    model_time += warm_done - start

    loop_model = 0.0
    last = origins[-1]
    step = max(1, len(origins) // 100)
    for i, t in enumerate(origins):
        # Invariant: the model has been given rows 0..t and nothing else.
        a = clock()
        f = _checked_forecast(model, horizon, S, t)
        loop_model += clock() - a
        err = f - values[t + 1: t + 1 + horizon].T
        sse += err * err
        sae += np.abs(err)
        origin_mse[i] = (err * err).mean(axis=1)
        if kept is not None:
            kept[i] = f
        if t < last:
            row = _readonly_copy(values[t + 1])
            a = clock()
            model.observe(row)
            loop_model += clock() - a
        if progress is not None and i % step == 0:
            progress(i, len(origins))
    stop = clock()
    model_time += loop_model

    n = len(origins)
    drift_rows = getattr(model, "drift_rows", None)
    return EvalResult(
        model=model.name, horizon=horizon, n_origins=n, n_channels=S,
        mse=float(sse.sum() / (n * S * horizon)), mae=float(sae.sum() / (n * S * horizon)),
        mse_by_step=(sse.sum(axis=0) / (n * S)).tolist(),
        mse_by_channel=(sse.sum(axis=1) / (n * horizon)).tolist(),
        wall_seconds=stop - start, warmup_seconds=warm_done - start, online_seconds=stop - warm_done,
        model_seconds=model_time, us_per_origin=1e6 * loop_model / n, forecasts=kept,
        extra=dict(getattr(model, "extra", {}) or {}), origin_mse=origin_mse,
        drift_rows=list(drift_rows()) if callable(drift_rows) else [])


def after_changes(results: list[EvalResult], first_origin: int, span: int) -> np.ndarray:
    """(n_origins, S) mask of the origins within `span` rows from any change that any of the
    models detected (the row it fired on and after): the same cells for every model."""
    n, S = results[0].origin_mse.shape   # type: ignore[union-attr]
    mask = np.zeros((n, S), dtype=bool)
    for res in results:
        for channel, row in res.drift_rows:
            start = row - first_origin
            mask[max(start, 0): max(min(start + span, n), 0), channel] = True
    return mask


@dataclass(frozen=True)
class BenchContext:
    """What a model factory may know about a task before it starts: no data values."""

    dataset: str           # "etth2", "ettm1", "wth"
    protocol: str          # "fsnet" or "dsof"
    horizon: int
    channels: tuple[str, ...]
    period: int            # daily seasonal period in rows (24 hourly, 96 for 15-minute data)
    step_seconds: float
    warmup_rows: int
    n_origins: int
    n_rows: int            # warm-up + scored rows

    @property
    def n_channels(self) -> int:
        return len(self.channels)


class SkipModel(Exception):
    """Raised by a model factory to decline a task; the report prints the reason."""


@dataclass(frozen=True)
class ModelSpec:
    """A named factory: ``build(context)`` returns a fresh `OnlineModel` for one task."""

    name: str
    build: Any  # Callable[[BenchContext], OnlineModel]
    description: str = ""
