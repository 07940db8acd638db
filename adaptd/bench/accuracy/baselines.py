"""Online baselines for `adaptd bench accuracy`, all implementing `OnlineModel`.

- `RepeatLast`: y_{t+h} = y_t.
- `SeasonalNaive`: y_{t+h} = y_{t+h-m*ceil(h/m)}, m the daily period (24 hourly, 96 for 15 min).
- `RLSAutoregression`: per channel, recursive least squares on the last p z-scored lags plus a
  bias, direct multi-horizon, through `adaptd.engine.rls.BatchedRLS` (slots = channels). The
  pair (x_o, y_{o+h}) is learned only at time o+h, once y_{o+h} has been observed.
- `RiverPerChannel`: one river forecaster per channel (`SNARIMAX`, `HoltWinters`), in pure Python.

>>> import numpy as np
>>> m = SeasonalNaive(period=3)
>>> for v in [1.0, 2.0, 3.0, 4.0]:
...     m.observe(np.array([v]))
>>> m.forecast(4)
array([[2., 3., 4., 2.]])
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any, Callable

import numpy as np

from ...engine.rls import BatchedRLS
from .runner import BenchContext, ModelSpec, SkipModel


class RepeatLast:
    name = "repeat-last"

    def __init__(self) -> None:
        self.last: np.ndarray | None = None

    def fit_warmup(self, Y: np.ndarray) -> None:
        pass

    def observe(self, y: np.ndarray) -> None:
        self.last = np.asarray(y, dtype=np.float64)

    def forecast(self, horizon: int) -> np.ndarray:
        assert self.last is not None, "forecast before any observation"
        return np.repeat(self.last[:, None], horizon, axis=1)


class SeasonalNaive:
    """The value one season before each target (falls back to the last value until a season is seen)."""

    def __init__(self, period: int, name: str | None = None):
        self.period = int(period)
        self.name = name or f"seasonal-naive(m={self.period})"
        self.buf: np.ndarray | None = None
        self.n = 0

    def fit_warmup(self, Y: np.ndarray) -> None:
        pass

    def observe(self, y: np.ndarray) -> None:
        if self.buf is None:
            self.buf = np.zeros((self.period, len(y)))
        self.buf[self.n % self.period] = y
        self.n += 1

    def forecast(self, horizon: int) -> np.ndarray:
        assert self.buf is not None, "forecast before any observation"
        m, t = self.period, self.n - 1  # t: index of the newest row
        h = np.arange(1, horizon + 1)
        back = m * np.ceil(h / m).astype(np.int64) - h  # target y_{t+h-m*ceil(h/m)} = y_{t-back}
        if self.n < m:
            back = np.zeros_like(back)
        return self.buf[(t - back) % m].T.copy()


class RLSAutoregression:
    """Direct multi-horizon online AR(p) with a bias, one RLS per channel, leak-free.

    Lags are z-scored values; features at origin t are x_t = [y_t, ..., y_{t-p+1}, 1]. The pair
    (x_o, y_{o+h}) is added for lead h at time o+h, once y_{o+h} has been observed. Until p rows
    are seen it forecasts the last value. Three ways to drive `BatchedRLS` (slots = channels):

    ``textbook``
        Ordinary recursive least squares per lead: the forecast for lead h uses the input
        covariance of exactly the origins whose lead-h targets have matured (origins <= t-h).
        All leads share one input sequence, so that covariance is the one `BatchedRLS` held
        h steps ago: P is snapshotted after each `learn_inputs`, and lead h uses the snapshot
        from t-h with the lead-h column of B. Reproduces BENCHMARK_ANCHORS' RLS rows.
    ``relative``
        `BatchedRLS` as the engine drives it: x_t enters P at time t, before its targets exist,
        so each unmatured origin acts like a pseudo-observation with target 0. Here the
        coordinates make 0 mean "no change": features [y_t, y_{t-1}-y_t, ..., y_{t-p+1}-y_t, 1],
        target y_{t+h}-y_t.
    ``raw``
        The same early inputs on raw lags with target y_{t+h}: the pseudo-target 0 pulls the
        forecast of a high-leverage input (a level shift to -51 sigma in ETTh2's LULL) to the
        training mean. Kept to show the pitfall.
    """

    MODES = ("textbook", "relative", "raw")

    def __init__(self, n_lags: int = 60, horizon: int = 1, forgetting: float = 0.999,
                 delta: float = 10.0, mode: str = "textbook", name: str | None = None):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}")
        self.p = int(n_lags)
        self.horizon = int(horizon)
        self.mode = mode
        self.forgetting = forgetting
        self.delta = delta
        self.name = name or f"rls-ar{self.p}" + ("" if mode == "textbook" else f"-{mode}")
        self.rls = BatchedRLS(n_features=self.p + 1, horizon=self.horizon, forgetting=forgetting, delta=delta)
        self.slots: np.ndarray | None = None
        self.lags: np.ndarray | None = None      # (S, p): lags[:, 0] = newest
        self.xs: np.ndarray | None = None        # (H+1, S, p+1): features of the last origins, ring
        self.ys: np.ndarray | None = None        # (H+1, S): values at the last origins, ring
        self.Ps: np.ndarray | None = None        # textbook: (H+1, S, p+1, p+1) snapshots of P, ring
        self.n = 0                               # rows observed; the newest row has index n - 1

    def fit_warmup(self, Y: np.ndarray) -> None:
        pass  # it learns from the warm-up rows as they are observed

    def _setup(self, S: int) -> None:
        K = self.horizon + 1
        self.slots = np.arange(S)
        self.rls.resize(S)
        self.lags = np.zeros((S, self.p))
        self.xs = np.zeros((K, S, self.p + 1))
        self.ys = np.zeros((K, S))
        if self.mode == "textbook":
            self.Ps = np.zeros((K, S, self.p + 1, self.p + 1))

    def observe(self, y: np.ndarray) -> None:
        if self.lags is None:
            self._setup(len(y))
        assert self.lags is not None and self.xs is not None and self.ys is not None and self.slots is not None
        t, K = self.n, self.horizon + 1
        y = np.asarray(y, dtype=np.float64)
        self.lags[:, 1:] = self.lags[:, :-1]
        self.lags[:, 0] = y
        self.ys[t % K] = y
        self.n += 1
        if self.n >= self.p:
            x = self.xs[t % K]
            x[:, :self.p] = self.lags
            x[:, self.p] = 1.0
            if self.mode == "relative":
                x[:, 1:self.p] -= y[:, None]
            # Inputs first: learn_inputs discounts B, so pairs added below keep weight 1 now.
            self.rls.learn_inputs(self.slots, x)
            if self.Ps is not None:
                self.Ps[t % K] = self.rls.P
        # Targets that matured now: y_t is lead h for origin t - h (if that origin had features).
        for h in range(1, self.horizon + 1):
            origin = t - h
            if origin < self.p - 1:
                break
            target = y - self.ys[origin % K] if self.mode == "relative" else y
            self.rls.learn_targets(self.slots, self.xs[origin % K], target[:, None], lead=h)

    def forecast(self, horizon: int) -> np.ndarray:
        assert self.lags is not None and self.xs is not None, "forecast before any observation"
        if horizon > self.horizon:
            raise ValueError(f"{self.name} was built for horizon {self.horizon}, asked for {horizon}")
        t, K = self.n - 1, self.horizon + 1
        if self.n < self.p:
            return np.repeat(self.lags[:, :1], horizon, axis=1)
        x = self.xs[t % K]
        if self.mode == "relative":
            return self.rls.predict(self.slots, x)[:, :horizon] + self.lags[:, :1]
        if self.mode == "raw":
            return self.rls.predict(self.slots, x)[:, :horizon]
        assert self.Ps is not None
        h = np.arange(1, horizon + 1)
        ready = t - h >= self.p - 1                               # a snapshot exists for lead h
        idx = (t - h) % K
        # P x_t for every snapshot in the ring (no gather copy of the big ring), then pick per lead.
        Px = np.matmul(self.Ps, x[None, :, :, None])[idx, :, :, 0]  # (H, S, p+1): P_{t-h} x_t
        out = np.einsum("hsi,sih->sh", Px, self.rls.B[:, :, :horizon])
        out[:, ~ready] = self.lags[:, :1]
        return out


# ---------------------------------------------------------------- river, one model per channel

def _hw_learn(model: Any, y: float) -> None:
    """`HoltWinters.learn_one`, with a sound start for the additive form.

    river 0.21-0.26 initialises the additive seasonal terms as y_i / level (the multiplicative
    formula) and the trend as the mean first difference of the first season, which on z-scored
    data (level near 0) gives huge seasonal terms and a trend that the small beta carries for
    thousands of steps. Once river has initialised, this resets the start to: level = mean of
    the first season, trend = 0, season_i = y_i - level.
    """
    was = model._initialized
    model.learn_one(y)
    if not was and model._initialized and not model.multiplicative:
        level = model.level[-1]
        if model.trend is not None:
            model.trend.clear()
            model.trend.append(0.0)
        if model.season is not None:
            firsts = list(model._first_values)
            model.season.clear()
            model.season.extend([v - level for v in firsts])


class RiverPerChannel:
    """One river forecaster per channel; `make()` builds one. Pure Python, so slow.

    Divergence guard: a channel's forecast path that is non-finite or leaves
    ±`DIVERGED` x (largest |value| observed so far on that channel, at least 1) is replaced by the
    last value and counted in ``extra["diverged_fallbacks"]`` (channel-origins). SNARIMAX's
    recursive H-step forecasts explode when its SGD-learned AR part turns non-stationary (ETTh2
    OT at H=48 reached MSE 3e7 without the guard). The bound uses observed values only.
    """

    DIVERGED = 10.0

    def __init__(self, name: str, make: Callable[[], Any], learn: Callable[[Any, float], None] | None = None,
                 tune: Callable[["RiverPerChannel", np.ndarray], None] | None = None, horizon: int = 1):
        self.name = name
        self.make = make
        self.learn = learn or (lambda model, y: model.learn_one(y))
        self.tune = tune
        self.horizon = horizon
        self.models: list[Any] | None = None
        self.makers: list[Callable[[], Any]] | None = None  # per-channel makers after tuning
        self.last: np.ndarray | None = None
        self.extra: dict[str, Any] = {"diverged_fallbacks": 0}
        self.maxabs: np.ndarray | None = None
        self.n_candidates = 0  # models tried per channel when tuning on warm-up (for the time estimate)

    def fit_warmup(self, Y: np.ndarray) -> None:
        if self.tune is not None:
            self.tune(self, Y)

    def observe(self, y: np.ndarray) -> None:
        if self.models is None:
            makers = self.makers or [self.make] * len(y)
            self.models = [make() for make in makers]
        for model, v in zip(self.models, y.tolist()):
            self.learn(model, v)
        self.last = np.asarray(y, dtype=np.float64)
        self.maxabs = np.abs(self.last) if self.maxabs is None else np.maximum(self.maxabs, np.abs(self.last))

    def forecast(self, horizon: int) -> np.ndarray:
        assert self.models is not None and self.last is not None, "forecast before any observation"
        out = np.empty((len(self.models), horizon))
        for i, model in enumerate(self.models):
            try:
                out[i] = model.forecast(horizon)
            except (IndexError, ZeroDivisionError, OverflowError, TypeError):
                out[i] = np.nan  # not initialised yet
            bound = self.DIVERGED * max(1.0, float(self.maxabs[i])) if self.maxabs is not None else np.inf
            if not (np.isfinite(out[i]).all() and np.abs(out[i]).max() <= bound):
                out[i] = self.last[i]
                self.extra["diverged_fallbacks"] += 1
        return out


def tune_per_channel(model: RiverPerChannel, Y: np.ndarray, candidates: dict[str, Callable[[], Any]],
                     horizon: int, first: int, stride: int = 4) -> None:
    """Per channel, keep the candidate with the lowest MSE on the warm-up rows at this horizon.

    Each candidate runs through the warm-up rows `Y` alone; forecasts from every `stride`-th
    origin from row `first` on are scored against later warm-up rows. Only warm-up data is used.
    """
    T, S = Y.shape
    if T - horizon <= first + stride:
        return
    chosen: list[str] = []
    for col in Y.T.tolist():
        scores = []
        for label, make in candidates.items():
            m = make()
            sse, n = 0.0, 0
            for t, v in enumerate(col):
                model.learn(m, v)
                if t >= first and t % stride == 0 and t + horizon < T:
                    try:
                        f = m.forecast(horizon)
                    except (IndexError, ZeroDivisionError, OverflowError, TypeError):
                        continue
                    sse += sum((a - b) ** 2 for a, b in zip(f, col[t + 1: t + 1 + horizon]))
                    n += horizon
            scores.append((sse / n if n and math.isfinite(sse) else math.inf, label))
        chosen.append(min(scores)[1])
    model.makers = [candidates[label] for label in chosen]
    model.extra["chosen"] = chosen


SNARIMAX_LRS = (0.001, 0.003, 0.01)


def snarimax(context: BenchContext, p: int = 3, d: int = 1, q: int = 1, sp: int = 1,
             tune: bool = True) -> RiverPerChannel:
    """river SNARIMAX(p, d, q) with one seasonal AR lag at the daily period, per channel.

    Regressor: StandardScaler | LinearRegression with SGD and gradient clipping at 1 (river's
    default SGD(0.01) without clipping diverges to 1e25 on ETTh2). The SGD step is picked per
    channel on the warm-up rows from {0.001, 0.003, 0.01}.
    """
    from river import linear_model, optim, preprocessing, time_series

    m, H = context.period, context.horizon

    def make(lr: float) -> Callable[[], Any]:
        return lambda: time_series.SNARIMAX(
            p=p, d=d, q=q, m=m, sp=sp, regressor=preprocessing.StandardScaler() | linear_model.LinearRegression(
                optimizer=optim.SGD(lr), clip_gradient=1.0))

    candidates = {f"lr={lr:g}": make(lr) for lr in SNARIMAX_LRS}
    name = f"snarimax({p},{d},{q})(sp={sp},m={m}){', lr tuned on warm-up' if tune else ''}"
    tuner = (lambda model, Y: tune_per_channel(model, Y, candidates, H, first=2 * m)) if tune else None
    model = RiverPerChannel(name, make(0.003), tune=tuner, horizon=H)
    model.n_candidates = len(candidates) if tune else 0
    return model


HW_GRID = {"alpha": (0.1, 0.3, 0.6, 0.9), "beta": (0.001, 0.01), "gamma": (0.05, 0.2)}


def holt_winters(context: BenchContext, tune: bool = True) -> RiverPerChannel:
    """river additive HoltWinters with the daily period; (alpha, beta, gamma) tuned per channel
    on the warm-up rows over `HW_GRID`."""
    from river import time_series

    m, H = context.period, context.horizon

    def make(a: float, b: float, g: float) -> Callable[[], Any]:
        return lambda: time_series.HoltWinters(alpha=a, beta=b, gamma=g, seasonality=m)

    candidates = {f"alpha={a:g},beta={b:g},gamma={g:g}": make(a, b, g)
                  for a, b, g in itertools.product(HW_GRID["alpha"], HW_GRID["beta"], HW_GRID["gamma"])}
    name = f"holt-winters(m={m}{', tuned on warm-up' if tune else ''})"
    tuner = (lambda model, Y: tune_per_channel(model, Y, candidates, H, first=2 * m)) if tune else None
    model = RiverPerChannel(name, make(0.3, 0.001, 0.1), learn=_hw_learn, tune=tuner, horizon=H)
    model.n_candidates = len(candidates) if tune else 0
    return model


# ---------------------------------------------------------------- budget for the slow models

def estimated_seconds(make: Callable[[], Any], learn: Callable[[Any, float], None], context: BenchContext,
                      n_candidates: int = 0, stride: int = 4, sample: int = 400) -> float:
    """Rough wall time of a pure-Python per-channel model on this task (plus tuning over
    `n_candidates` on the warm-up rows), from a short calibration."""
    rng = np.random.default_rng(0)
    series = np.cumsum(rng.normal(size=sample)) * 0.05
    model = make()
    start = time.perf_counter()
    for v in series.tolist():
        learn(model, v)
    learn_s = (time.perf_counter() - start) / sample
    start = time.perf_counter()
    reps = 30
    for _ in range(reps):
        model.forecast(context.horizon)
    forecast_s = (time.perf_counter() - start) / reps
    run = context.n_rows * learn_s + context.n_origins * forecast_s
    tuning = n_candidates * context.warmup_rows * (learn_s + forecast_s / stride)
    return context.n_channels * (run + tuning)


def budgeted(factory: Callable[[BenchContext], RiverPerChannel], budget_seconds: float | None
             ) -> Callable[[BenchContext], RiverPerChannel]:
    """Wrap a river factory: raise `SkipModel` when the estimated run time exceeds the budget."""
    def build(context: BenchContext) -> RiverPerChannel:
        model = factory(context)
        if budget_seconds is not None:
            est = estimated_seconds(model.make, model.learn, context, model.n_candidates)
            if est > budget_seconds:
                raise SkipModel(f"{model.name}: estimated {est:.0f} s on this task (pure-Python river, "
                                f"{context.n_channels} channels x {context.n_origins} origins x H={context.horizon}) "
                                f"exceeds --river-budget {budget_seconds:.0f} s")
            model.extra["estimated_seconds"] = round(est, 1)
        return model
    return build


# 0.9999 reproduces all of BENCHMARK_ANCHORS' RLS rows within ~1 % (ETTh2 AR(96): 0.351 / 1.761 /
# 2.927 vs 0.354 / 1.779 / 2.935); 0.999 matches at H = 1 (0.354) but gives 2.05 / 4.72 at
# H = 24 / 48: long leads need a longer memory to be stable.
TEXTBOOK_FORGETTING = 0.9999


def baseline_specs(river_budget: float | None = 900.0) -> dict[str, ModelSpec]:
    """The baselines by their --models name."""
    return {
        "repeat-last": ModelSpec("repeat-last", lambda c: RepeatLast(), "y_{t+h} = y_t"),
        "seasonal-naive": ModelSpec("seasonal-naive", lambda c: SeasonalNaive(c.period),
                                    "value one day earlier (period inferred from the timestamps)"),
        "rls-ar60": ModelSpec("rls-ar60", lambda c: RLSAutoregression(60, c.horizon, TEXTBOOK_FORGETTING),
                              f"textbook online RLS AR(60)+bias per channel and lead, forgetting {TEXTBOOK_FORGETTING}"),
        "rls-ar96": ModelSpec("rls-ar96", lambda c: RLSAutoregression(96, c.horizon, TEXTBOOK_FORGETTING),
                              f"textbook online RLS AR(96)+bias per channel and lead, forgetting {TEXTBOOK_FORGETTING}"),
        "rls-ar60-relative": ModelSpec(
            "rls-ar60-relative", lambda c: RLSAutoregression(60, c.horizon, 0.999, mode="relative"),
            "BatchedRLS as the engine drives it (inputs at origin time), lags and targets relative to y_t"),
        "rls-ar96-relative": ModelSpec(
            "rls-ar96-relative", lambda c: RLSAutoregression(96, c.horizon, 0.999, mode="relative"),
            "BatchedRLS as the engine drives it (inputs at origin time), lags and targets relative to y_t"),
        "rls-ar60-raw": ModelSpec(
            "rls-ar60-raw", lambda c: RLSAutoregression(60, c.horizon, 0.999, mode="raw"),
            "BatchedRLS with inputs at origin time on raw lags (the pitfall: unmatured inputs pull to 0)"),
        "snarimax": ModelSpec("snarimax", budgeted(snarimax, river_budget),
                              "river SNARIMAX(3,1,1) + seasonal AR lag at the daily period, one per channel, SGD with gradient "
                              "clipping, step tuned per channel on warm-up rows; a diverging forecast path (beyond 10x "
                              "the largest |value| seen) falls back to the last value and is counted"),
        "holt-winters": ModelSpec("holt-winters", budgeted(holt_winters, river_budget),
                                  "river additive Holt-Winters, daily period, (alpha,beta,gamma) tuned per "
                                  "channel on warm-up rows"),
    }

