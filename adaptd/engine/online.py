"""The online engine: per-series recurrent + linear forecasters that notice drift and re-adapt.

Every series owns a slot in stacked arrays. Each new observation of a series:
1. scores the forecasts that just matured (per expert and combined) -> mixture weights,
   conformal interval widths, and the one-step residual for the drift detector;
2. teaches the experts the newly observed targets (RLS: every lead; GRU: one SGD step on a
   few recent origins, each using only the leads already observed);
3. on drift: the GRU's candidates (θ* after k steps on the newest window, θ* as is, remembered
   regimes, the current weights) compete on the newest points; when new weights win, the GRU
   takes them and the mixture forgets its record and leans toward it;
4. forecasts all H leads from the new origin and caches them with their intervals.
Series with fewer than `window` observations are served by the naive engine meanwhile, unless
`cold_start` (n0) is set: from n0 observations on, the same experts forecast from the window
padded on the left with the last value (θ* reads it as a flat past), and their forecasts are
scored, weighted and given intervals exactly like a full window's.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from ..records import Observation
from ..store import Checkpoint
from .base import Engine, Forecast, ForecastPoint, UnknownSeries
from .conformal import CEILING, QuantileTracker, lead_units
from .drift import DriftMonitor
from .features import (MIN_SCALE, VALUE_CLIP, rls_feature_count, rls_features, safe_scale, update_stats, update_typical,
                       windows)
from .gru import GRUShape
from .history import missing_steps
from .leads import interpolation, scored_leads
from .learner import MEMORY, AdaptResult, Examples, Initializer, StackedGRU, adapt, use_torch_threads
from .mixture import Mixture
from .naive import NaiveEngine, last_value_halfwidths
from .regimes import POOL, Found, RegimeMemory, regime_key
from .rls import BatchedRLS
from .snapshot import FORMAT_VERSION, SnapshotError, decode, encode
from .telemetry import SeriesNow

log = logging.getLogger(__name__)

# Per-series arrays (one row per slot) and what a fresh series holds in them.
FRESH: dict[str, float] = {
    "count": 0, "first_origin": -1, "last_ts": -np.inf, "hist": np.nan, "scale_h": np.nan, "mean_h": np.nan,
    "typical_h": np.nan,
    "raw_scale": 0.0, "typical": 0.0, "preds": np.nan, "fc_value": np.nan, "fc_lo": np.nan, "fc_hi": np.nan,
    "fc_origin": np.nan, "last_drift": np.nan, "adaptations": 0, "restarts": 0, "gaps": np.nan,
    # The interval tracker's own widths (scored leads) as each recent forecast was issued: it
    # judges a matured forecast against them (conformal.py), so a restart must keep them.
    "issued_q": np.nan,
}
PER_SLOT = tuple(FRESH)
ADDED_LATER = {"gaps", "issued_q"}   # a checkpoint from before these keys loads them fresh
# The unit interval widths are kept in (checkpoint header "interval_units"): 1, the fast scale
# at every lead (before `lead_units`, absent from the header); 2, `lead_units`.
INTERVAL_UNITS = 2
GAP_MEMORY = 16          # recent time gaps kept per series; their median is its step
# Per-series arrays not checkpointed: for metrics (a restart starts them afresh), and how many
# observations the cached forecast was made from (restored from the checkpoint's `count`).
TRANSIENT: dict[str, float] = {"issued_width": np.nan, "now_fc": np.nan, "recent_error": np.nan,
                               "fc_count": np.nan}   # observations behind the cached forecast
ERROR_RATE = 0.05   # the rolling per-series error forgets with this weight per observation
# One linear learner (long memory, never reset: see the restart policy in `_apply`), the
# recurrent model and the last value.
EXPERTS = ("rls", "gru", "last")
RLS, GRU, LAST = 0, 1, 2
COMBINED = len(EXPERTS)
# The fixed blend an anchored mixture holds part of its weight on (`mixture_anchor`).
MIXTURE_PRIOR = np.array([0.5 if e in ("rls", "gru") else 0.0 for e in EXPERTS])
# Checkpoints written before a second linear learner, "rls_recent", was removed hold it as expert
# 1 of four. Once the restart policy stopped resetting it, it duplicated "rls" exactly, so such a
# checkpoint loads with it dropped (see `_without_retired_expert`).
RETIRED_EXPERT, RETIRED_INDEX = "rls_recent", 1
# With cold start, a new series' mixture gives the recurrent model (θ*) this share at first and
# splits the rest among the others (at that age: the last value; RLS has learnt nothing yet and
# forecasts no change). Measured on held-out series (issue #4), with four experts then: a half
# share beats both θ* alone and the uniform quarter over the first 48 steps. An anchored mixture
# keeps that share: its fixed prior gives the recurrent model half as well.
COLD_START_GRU_SHARE = 0.5
FLOAT_MAX = float(np.finfo(np.float64).max)
# Series stepped together in one batched learning step. Smaller steps issue their series' learnt
# forecasts sooner and are faster: at 3,000 series, steps of 128 learnt 3,000 records/s (10,000
# when shedding) against 1,600 (7,000) in one step of all 3,000 (smaller temporaries stay in cache).
ROUND_SERIES = 128


@dataclass(frozen=True)
class OnlineConfig:
    window: int = 48
    patch: int = 4
    hidden: int = 32
    horizon: int = 48
    rls_lags: int = 32
    rls_forgetting: float = 0.999
    learning_rate: float = 0.01
    train_every: int = 1        # [model] train_every sets it in the daemon (default 4)
    clip: float = 1.0
    mixture_eta: float = 4.0
    mixture_memory: float = 0.05
    mixture_anchor: float = 0.0  # [model] mixture_anchor sets it in the daemon (default 0.5)
    coverage: float = 0.9
    interval_rate: float = 0.02
    scale_rate: float = 0.04
    mean_rate: float = 0.005
    detector: str = "adwin"
    detector_params: dict[str, Any] = field(default_factory=dict)
    cooldown: int = 48
    adapt: bool = True
    adapt_steps: int = 5
    adapt_window: int = 96
    adapt_validation: int = 8
    adapt_keep: float = 0.0     # share of the current weights kept in every adaptation candidate
    adapt_workers: int = 0      # 0: adapt inline (replay: deterministic); n: a pool of n threads
    regime_memory: int = 0      # remembered regimes per series (0: none)
    regime_shared: int = 0      # remembered regimes shared by all series (0: none)
    regime_lookup: int = 0      # nearest remembered regimes tried at a drift (0: memory off)
    regime_pool: int = POOL     # remembered regimes nearest by key that are ranked at a drift
    history: int = 1024
    season: int = 0
    torch_threads: int = 1      # per thread that learns or adapts (see learner.use_torch_threads)
    max_gap_fill: int = 48      # missing steps filled by interpolation; a longer gap is not filled
    seed: int = 0
    cold_start: int = 0         # observations from which a young series is forecast (0: at `window`)

    @property
    def shape(self) -> GRUShape:
        return GRUShape(self.window, self.patch, self.hidden, self.horizon)

    @property
    def serving(self) -> int:
        """Observations a series needs before the models (not the naive fallback) forecast it."""
        return min(self.cold_start, self.window) if self.cold_start > 0 else self.window

    @property
    def cold(self) -> bool:
        """Whether young series (fewer than `window` observations) are forecast by the models."""
        return self.serving < self.window


@dataclass(frozen=True)
class DriftEvent:
    series: str
    ts: float
    detector: str
    statistic: float


@dataclass
class Adaptation:
    slot: int
    result: AdaptResult | None       # None: the adaptation failed
    seconds: float = 0.0
    found: Found | None = None       # the remembered regimes that were candidates
    departing: np.ndarray | None = None   # the key the current weights are remembered under


def _newest(train: Examples, origins: int) -> Examples:
    """The training examples of the newest `origins` origins only (`_support` puts them first):
    what remembered regimes are ranked on, the newest targets before the validation points.
    Origins without a known target (the newest `validation` ones) are left out: same loss, less work."""
    keep = torch.nonzero(train.mask[0, :origins].sum(dim=1) > 0)[:, 0]
    return Examples(train.window[:, keep], train.level[:, keep], train.target[:, keep], train.mask[:, keep])


def _without_retired_expert(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A checkpoint written with the retired expert in today's layout: its `rls_recent_*` arrays
    dropped, and its row (RETIRED_INDEX) of `mixture_loss` (four experts) and of the expert axis
    of `preds` (four experts, then the combined forecast). Other checkpoints are returned as they are."""
    retired = [key for key in arrays if key in (f"{RETIRED_EXPERT}_P", f"{RETIRED_EXPERT}_B")]
    if not retired:
        return arrays
    old = len(EXPERTS) + 1
    loss, preds = arrays["mixture_loss"], arrays["preds"]
    if loss.ndim != 2 or loss.shape[0] != old or preds.ndim != 3 or preds.shape[1] != old + 1:
        raise SnapshotError(f"a checkpoint with {RETIRED_EXPERT!r} needs {old} experts; it has mixture_loss "
                            f"of shape {loss.shape} and preds of shape {preds.shape}")
    converted = {key: value for key, value in arrays.items() if key not in retired}
    converted["mixture_loss"] = np.delete(loss, RETIRED_INDEX, axis=0)
    converted["preds"] = np.delete(preds, RETIRED_INDEX, axis=1)
    return converted


def _intervals_by_lead(arrays: dict[str, np.ndarray], leads: np.ndarray) -> None:
    """Convert a checkpoint's interval widths from the fast scale (written before `lead_units`)
    to `lead_units`, so the restored engine issues exactly the intervals the saved one would."""
    ratio = arrays["scale_h"] / arrays["typical_h"]   # at each kept origin, newest last
    issued = arrays.get("issued_q")
    with np.errstate(invalid="ignore"):   # NaN where no origin is kept yet: judged as unknown
        if issued is not None:
            arrays["issued_q"] = np.minimum(issued / lead_units(ratio[-issued.shape[0]:], leads), CEILING)
        if np.isfinite(ratio[-1]):
            arrays["conformal_q"] = np.minimum(arrays["conformal_q"] / lead_units(ratio[-1:], leads)[0], CEILING)


class OnlineEngine(Engine):
    kind = "online"

    def __init__(self, config: OnlineConfig, init: Initializer):
        c = self.config = config
        if c.window % c.patch:
            raise ValueError(f"model.window ({c.window}) must be a multiple of model.patch ({c.patch})")
        self.init = init
        self.naive = NaiveEngine(history=c.history, max_horizon=c.horizon, season=c.season, coverage=c.coverage)
        self.leads = scored_leads(c.horizon)
        self.spread = interpolation(self.leads, c.horizon)
        self.all_leads = np.arange(1, c.horizon + 1)
        self.span = c.window + max(c.horizon, c.adapt_window) + 2   # history kept per series
        self.origins = max(c.horizon, c.adapt_window) + 1              # origins whose scale we keep
        self.rls = BatchedRLS(rls_feature_count(c.rls_lags), c.horizon, c.rls_forgetting)
        self.gru = StackedGRU(c.shape)
        self.mixture = Mixture(len(EXPERTS), c.mixture_eta, c.mixture_memory, c.mixture_anchor, MIXTURE_PRIOR)
        self.conformal = QuantileTracker(c.coverage, c.interval_rate, leads=self.leads)
        self.drift = DriftMonitor(c.detector, c.detector_params, c.cooldown)
        self.names: list[str] = []
        self.slots: dict[str, int] = {}
        self._cache_lock = threading.Lock()    # held briefly: forecasts never wait for learning
        self._state_lock = threading.RLock()   # learning vs checkpointing
        self._pool = (ThreadPoolExecutor(c.adapt_workers, "adaptd-adapt", initializer=use_torch_threads,
                                         initargs=(c.torch_threads,)) if c.adapt_workers > 0 else None)
        self._running: dict[int, Future[Adaptation]] = {}
        self._halt = threading.Event()
        self._shed = False   # this batch skips the GRU's online steps (learn(shed=True))
        self.drift_events: list[DriftEvent] = []   # drained by the daemon into SQL
        # adapted = adapted_finetuned + adapted_init + adapted_memory: which candidate won.
        self.counters = {"drifts": 0, "adapted": 0, "kept": 0, "failed": 0, "adapted_finetuned": 0,
                         "adapted_init": 0, "adapted_memory": 0, "late_skipped": 0,
                         "gap_steps_filled": 0, "gaps_unfilled": 0, "nonfinite": 0, "gru_steps_shed": 0,
                         "adapt_seconds": 0.0}
        self.regimes = RegimeMemory(c.regime_memory, c.regime_shared, c.regime_lookup, c.regime_pool)
        self._allocate(0)

    # -- storage ----------------------------------------------------------------------------
    def _allocate(self, capacity: int) -> None:
        c, L, K = self.config, len(self.leads), len(EXPERTS)

        shapes = {"hist": (self.span,), "scale_h": (self.origins + 1,), "mean_h": (self.origins + 1,),
                  "typical_h": (self.origins + 1,),
                  "preds": (c.horizon + 1, K + 1, L), "fc_value": (c.horizon,), "fc_lo": (c.horizon,),
                  "fc_hi": (c.horizon,), "issued_width": (c.horizon + 1, L), "issued_q": (c.horizon + 1, L),
                  "now_fc": (3,),
                  "gaps": (GAP_MEMORY,)}
        for name, fresh in (FRESH | TRANSIENT).items():
            grown = np.full((capacity, *shapes.get(name, ())), fresh)
            old = getattr(self, name, None)
            if old is not None:
                grown[: old.shape[0]] = old
            setattr(self, name, grown)
        for name in ("stamp", "train_phase"):
            grown = np.zeros(capacity, dtype=np.int64)
            old = getattr(self, name, grown[:0])
            grown[: old.size] = old
            setattr(self, name, grown)
        # stamp: per slot, a sequence lock for `_provisional`: odd while a learning step or an
        # adaptation is changing the slot; a reader that saw it odd, or changed, discards what it
        # read. train_phase: offsets the series' GRU steps (`_learn`), from its name.
        self.rls.resize(capacity)
        self.gru.resize(capacity, self.init)
        self.mixture.resize(capacity, L)
        self.conformal.resize(capacity)

    def _slot(self, name: str) -> int:
        slot = self.slots.get(name)
        if slot is None:
            slot = len(self.names)
            if slot >= self.count.shape[0]:
                self._allocate(max(16, 2 * slot))
            self.names.append(name)
            self.slots[name] = slot
            # With train_every > 1, series that arrive together would all take their GRU steps in
            # the same rounds: a hash of the name (the same after a restart) spreads them.
            self.train_phase[slot] = zlib.crc32(name.encode())
            self.gru.load(np.array([slot]), self.init.params)   # a new series starts from θ*
            if self.config.cold:
                self.mixture.lean(np.array([slot]), GRU, COLD_START_GRU_SHARE)
        return slot

    # -- observing ----------------------------------------------------------------------------
    def record(self, batch: Sequence[Observation]) -> None:
        self.naive.record(batch)

    def learn(self, batch: Sequence[Observation], shed: bool = False) -> None:
        use_torch_threads(self.config.torch_threads)
        with self._state_lock:
            self._shed = shed
            try:
                self._observe_models(batch)
            finally:
                self._shed = False

    def caught_up(self, series: str) -> bool:
        slot = self.slots.get(series)
        newest = self.naive.last_ts(series)
        if slot is None or newest is None:
            return False
        # A served series is caught up once its cached forecast starts from the newest record
        # (written last in a step); a younger one once it has stepped (the fallback answers it).
        done = self.fc_origin[slot] if self.count[slot] >= self.config.serving else self.last_ts[slot]
        return bool(done >= newest)

    def _observe_models(self, batch: Sequence[Observation]) -> None:
        rounds: list[list[Observation]] = []
        seen: dict[str, int] = {}
        for obs in batch:   # round k holds each series' k-th record: series move in lockstep
            k = seen.get(obs.series, 0)
            seen[obs.series] = k + 1
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(obs)
        for whole in rounds:
            for start in range(0, len(whole), ROUND_SERIES):
                if self._halt.is_set():   # each series stops at a record boundary: its state stays exact
                    return
                records = whole[start:start + ROUND_SERIES]
                slots = np.fromiter((self._slot(r.series) for r in records), dtype=np.int64, count=len(records))
                ts = np.fromiter((r.ts for r in records), dtype=np.float64, count=len(records))
                y = np.fromiter((r.value for r in records), dtype=np.float64, count=len(records))
                self._step(slots, ts, y)

    def _step(self, slots: np.ndarray, ts: np.ndarray, y: np.ndarray) -> None:
        self._apply_finished_adaptations()
        fresh = ts > self.last_ts[slots]
        if not fresh.all():
            # Late or re-sent records are stored (and the naive fallback sees them), but the
            # models learn in time order only.
            self.counters["late_skipped"] += int((~fresh).sum())
            slots, ts, y = slots[fresh], ts[fresh], y[fresh]
        if slots.size == 0:
            return
        # Values may be anything finite (up to ±1.8e308): intermediate overflow is expected
        # and handled (clipping, non-finite guards), not a reason to warn.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            # Each change to the slots' state is inside `changing`; the slow computations
            # between (the GRU's gradient, the forecasts) only read it, so provisional forecasts
            # (`_provisional`) can be made meanwhile.
            with self._changing(slots):
                before = self.count[slots].copy()
                self._align(slots, ts, y)
                self._append(slots, ts, y)
                residuals = self._score(slots)
                # The detector watches forecasts from full windows only (cold-start ones are noisier).
                residuals[self.count[slots] <= self.config.window] = np.nan
                due = self._learn(slots, before)
            if due.size:
                self._gru_step(due)
            self._watch_for_drift(slots, ts, residuals)
            self._forecast(slots)

    @contextlib.contextmanager
    def _changing(self, slots: np.ndarray | list[int]) -> Iterator[None]:
        """A change to these slots' state: their `stamp` is odd meanwhile and has moved after it."""
        self.stamp[slots] += 1
        try:
            yield
        finally:
            self.stamp[slots] += 1

    def _align(self, slots: np.ndarray, ts: np.ndarray, y: np.ndarray) -> None:
        """Keep one position per regular step before `y` is appended at `ts`.

        The models count positions, not seconds. A gap of up to `max_gap_fill` missing steps is
        filled with values interpolated from the records either side: inputs only, never scored
        and never forecast from. After a longer gap the forecasts issued before it are no longer
        scored nor learnt from, and the windows read the gap as consecutive steps.
        """
        c = self.config
        gap = ts - self.last_ts[slots]                 # inf for a series' first record
        missing, step = missing_steps(self.gaps[slots], gap)
        # What was forecast for this time: lead `missing + 1` from the newest origin.
        issued = (self.fc_origin[slots] == self.last_ts[slots]) & (missing < c.horizon)
        lead = np.minimum(missing, c.horizon - 1)
        fc = np.stack([self.fc_value[slots, lead], self.fc_lo[slots, lead], self.fc_hi[slots, lead]], axis=1)
        self.now_fc[slots] = np.where(issued[:, None], fc, np.nan)
        self.gaps[slots, :-1] = self.gaps[slots, 1:]
        self.gaps[slots, -1] = np.where(np.isfinite(gap), gap, np.nan)
        unfilled = missing > c.max_gap_fill
        if unfilled.any():
            s = slots[unfilled]
            self.first_origin[s] = np.where(self.first_origin[s] >= 0, self.count[s] + 1, -1)
            self.counters["gaps_unfilled"] += int(unfilled.sum())
        fill = (missing > 0) & ~unfilled
        if fill.any():
            s, n, start, step = slots[fill], missing[fill], self.last_ts[slots[fill]], step[fill]
            before, after = self.hist[s, -1], y[fill]
            for k in range(1, int(n.max()) + 1):
                now = n >= k
                part = k / (n[now] + 1)
                self._append(s[now], start[now] + k * step[now], before[now] + part * (after[now] - before[now]))
            self.counters["gap_steps_filled"] += int(n.sum())
        if unfilled.any() or fill.any():
            self.telemetry.gaps(int(fill.sum()), int(missing[fill].sum()), int(unfilled.sum()))

    def _append(self, slots: np.ndarray, ts: np.ndarray, y: np.ndarray) -> None:
        c = self.config
        first = self.count[slots] == 0
        prev = np.where(first, y, self.hist[slots, -1])
        raw_scale, mean = update_stats(self.raw_scale[slots], np.where(first, y, self.mean_h[slots, -1]),
                                       prev, y, c.scale_rate, c.mean_rate)
        typical = update_typical(self.typical[slots], raw_scale, np.abs(y - prev))
        for name in ("hist", "scale_h", "mean_h", "typical_h", "preds", "issued_width", "issued_q"):
            array = getattr(self, name)
            array[slots, :-1] = array[slots, 1:]
        self.preds[slots, -1] = np.nan
        self.issued_width[slots, -1] = np.nan
        self.issued_q[slots, -1] = np.nan
        self.hist[slots, -1] = y
        self.raw_scale[slots] = raw_scale
        self.typical[slots] = typical
        self.scale_h[slots, -1] = safe_scale(raw_scale, typical)
        self.typical_h[slots, -1] = np.maximum(typical, MIN_SCALE)
        self.mean_h[slots, -1] = mean
        self.count[slots] += 1
        self.last_ts[slots] = ts

    # -- scoring matured forecasts -------------------------------------------------------------
    def _score(self, slots: np.ndarray) -> np.ndarray:
        """Fold matured forecasts into mixture and intervals; returns lead-1 residuals (NaN: none)."""
        residual = np.full(slots.size, np.nan)
        pick_slots, pick_leads, errors, scaled, widths, tracked, units = [], [], [], [], [], [], []
        y = self.hist[slots, -1]
        for j, h in enumerate(self.leads):
            made = (self.first_origin[slots] >= 0) & (self.count[slots] - h >= self.first_origin[slots])
            made[made] = np.isfinite(self.preds[slots[made], -1 - h, COMBINED, j])   # not from a filled step
            if not made.any():
                continue
            s = slots[made]
            origin_y = self.hist[s, -1 - h]
            origin_scale = self.scale_h[s, -1 - h]
            origin_ratio = origin_scale / self.typical_h[s, -1 - h]
            target = np.clip((y[made] - origin_y) / origin_scale, -VALUE_CLIP, VALUE_CLIP)
            err = self.preds[s, -1 - h, :, j] - target[:, None]
            pick_slots.append(s)
            pick_leads.append(np.full(s.size, j))
            errors.append(err)
            widths.append(self.issued_width[s, -1 - h, j])
            tracked.append(self.issued_q[s, -1 - h, j])
            units.append(lead_units(origin_ratio, self.leads[j:j + 1])[:, 0])
            scaled.append(np.abs(err[:, COMBINED]) * origin_scale / np.maximum(self.typical_h[s, -1 - h], MIN_SCALE))
            if h == 1:
                # In units of the series' long-run scale, not the fast one the models use:
                # the fast scale absorbs a change in volatility the detector should notice.
                residual[made] = np.abs(err[:, COMBINED]) * origin_scale / np.maximum(self.typical[s], MIN_SCALE)
                recent = self.recent_error[s]
                self.recent_error[s] = np.where(np.isfinite(recent), recent + ERROR_RATE * (scaled[-1] - recent),
                                                scaled[-1])
        if pick_slots:
            s_all, j_all, e_all = np.concatenate(pick_slots), np.concatenate(pick_leads), np.concatenate(errors)
            self.mixture.update(s_all, j_all, e_all[:, :COMBINED] ** 2)
            self.conformal.update(s_all, j_all, np.abs(e_all[:, COMBINED]) / np.concatenate(units),
                                  np.concatenate(tracked))
            miss, width, scaled_all = np.abs(e_all[:, COMBINED]), np.concatenate(widths), np.concatenate(scaled)
            issued = np.isfinite(width) & np.isfinite(scaled_all)   # intervals are not checkpointed
            self.telemetry.scored(self.leads[j_all[issued]], scaled_all[issued], miss[issued] <= width[issued])
        return residual

    # -- learning ------------------------------------------------------------------------------
    def _origins(self, slots: np.ndarray, back: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised windows (n, D, W), levels (n, D) and validity (n, D) of origins `back` steps ago."""
        W = self.config.window
        views = sliding_window_view(self.hist[slots], W, axis=1)      # (n, span-W+1, W)
        raw = views[:, self.span - W - back]                            # (n, D, W)
        scale = self.scale_h[slots][:, self.origins - back]             # (n, D)
        mean = self.mean_h[slots][:, self.origins - back]
        last = raw[:, :, -1]
        window = np.clip((raw - last[:, :, None]) / scale[:, :, None], -VALUE_CLIP, VALUE_CLIP)
        level = np.clip((last - mean) / scale, -10.0, 10.0)
        origin = self.count[slots][:, None] - back
        # An origin before a long gap has its targets misaligned (first_origin moved past it).
        valid = (origin >= W) & (origin >= self.first_origin[slots][:, None]) & np.isfinite(scale)
        return window, level, valid

    def _targets(self, slots: np.ndarray, back: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, D, H) normalised targets of origins `back` ago and the mask of leads h <= usable."""
        H = self.config.horizon
        h = np.arange(1, H + 1)
        cols = self.span - 1 - back[:, None] + h[None, :]              # (D, H)
        mask = (h[None, :] <= usable[:, None]).astype(np.float64)
        cols = np.minimum(cols, self.span - 1)
        values = self.hist[slots][:, cols]                              # (n, D, H)
        origin_y = self.hist[slots][:, self.span - 1 - back]           # (n, D)
        scale = self.scale_h[slots][:, self.origins - back]
        target = np.clip((values - origin_y[:, :, None]) / scale[:, :, None], -VALUE_CLIP, VALUE_CLIP)
        return target, np.broadcast_to(mask, target.shape).copy()

    def _learn(self, slots: np.ndarray, before: np.ndarray) -> np.ndarray:
        """RLS learns the newly observed targets; returns the slots due a GRU step (`before`:
        their observation counts before this step, which may have filled missing ones too)."""
        c = self.config
        H = c.horizon
        back = np.arange(1, H + 1)
        window, level, valid = self._origins(slots, back)
        y_o = self.hist[slots][:, self.span - 1 - back]
        scale = self.scale_h[slots][:, self.origins - back]
        with np.errstate(invalid="ignore"):
            target = np.clip((self.hist[slots, -1][:, None] - y_o) / scale, -VALUE_CLIP, VALUE_CLIP)
        ratio = self._rls_ratio(slots, back)
        ok = valid & np.isfinite(target) & np.isfinite(ratio)
        x = rls_features((window * ratio[:, :, None]).reshape(-1, c.window), (level * ratio).reshape(-1),
                         c.rls_lags).reshape(slots.size, H, -1)
        first = ok[:, 0]
        if ok.any():
            # B[:, :, d-1] += x(origin d) * target(origin d, lead d), all leads at once.
            cross = np.einsum("ndp,nd->npd", np.nan_to_num(x), np.where(ok, target * ratio, 0.0))
            if first.any():
                self.rls.learn_inputs(slots[first], x[first, 0])
            self.rls.B[slots] += cross
        # Due when the count passed a multiple of train_every (offset by the series' phase); "is
        # one" would skip a series whose filled gaps keep stepping over its multiples.
        phase = self.train_phase[slots]
        passed = (self.count[slots] + phase) // c.train_every != (before + phase) // c.train_every
        due = ok[:, 0] & passed & (c.learning_rate > 0)
        if self._shed:
            self.counters["gru_steps_shed"] += int(due.sum())
            return slots[:0]
        return slots[due]

    def _rls_ratio(self, slots: np.ndarray, back: np.ndarray) -> np.ndarray:
        """(n, D) fast scale / long-run scale at origins `back` ago.

        RLS works in units of the long-run scale: the fast scale would weight its squared errors
        by the inverse local volatility, favouring calm stretches over the volatile ones that
        dominate the mean squared error. Multiplying normalised values by this ratio converts.
        """
        idx = self.origins - back
        return self.scale_h[slots][:, idx] / self.typical_h[slots][:, idx]

    def _gru_step(self, slots: np.ndarray) -> None:
        c = self.config
        back = np.unique(np.concatenate([2 ** np.arange(int(np.log2(c.horizon)) + 1), [c.horizon]]))
        back = back[back <= c.horizon]
        window, level, valid = self._origins(slots, back)
        target, mask = self._targets(slots, back, back)
        mask *= valid[:, :, None]
        mask *= np.isfinite(target)
        ex = Examples.from_numpy(window, level, target, mask)
        updated = self.gru.stepped(slots, ex, {k: c.learning_rate for k in self.gru.params}, c.clip)
        with self._changing(slots):
            self.gru.load(slots, updated)

    # -- drift and adaptation ------------------------------------------------------------------
    def _watch_for_drift(self, slots: np.ndarray, ts: np.ndarray, residuals: np.ndarray) -> None:
        for i in np.flatnonzero(np.isfinite(residuals)):
            slot = int(slots[i])
            if not self.drift.update(slot, float(residuals[i]), int(self.count[slot])):
                continue
            self.counters["drifts"] += 1
            self.last_drift[slot] = ts[i]
            self.drift_events.append(DriftEvent(self.names[slot], float(ts[i]), self.config.detector,
                                                float(residuals[i])))
            self.telemetry.drifted(self.config.detector)   # now, not when the whole chunk is learnt
            if self.config.adapt and slot not in self._running:   # adapt off: detect and record only
                self._start_adaptation(slot)

    def _start_adaptation(self, slot: int) -> None:
        """Adapt the slot's models to its newest window: at once without a pool (replay: the
        same result every run), else in the pool while forecasts go on from the current ones."""
        job = self._adaptation_job(slot)
        if job is None:
            return
        if self._pool is None:
            done = job()
            with self._changing([slot]):
                self._apply(done)
        else:
            self._running[slot] = self._pool.submit(job)

    def _support(self, slot: int) -> tuple[Examples, Examples]:
        """Train/validation examples from the newest window: validation = the newest points."""
        c = self.config
        v = c.adapt_validation
        back = np.arange(1, c.adapt_window + 1)
        slots = np.array([slot])
        window, level, valid = self._origins(slots, back)
        # Training may use targets up to v steps ago; validation scores the newest v targets.
        train_target, train_mask = self._targets(slots, back, back - v)
        valid_target, valid_mask = self._targets(slots, back, back)
        valid_mask -= train_mask
        for mask, target in ((train_mask, train_target), (valid_mask, valid_target)):
            mask *= valid[:, :, None]
            mask *= np.isfinite(target)
        return (Examples.from_numpy(window, level, train_target, train_mask),
                Examples.from_numpy(window, level, valid_target, valid_mask))

    def _adaptation_job(self, slot: int) -> Any:
        train, valid = self._support(slot)
        if float(valid.mask.sum()) == 0 or float(train.mask.sum()) == 0:
            return None
        current = {k: v.clone() for k, v in self.gru.rows(np.array([slot])).items()}
        init, steps, clip = self.init, self.config.adapt_steps, self.config.clip
        found, departing, recent = None, None, None
        if self.regimes.enabled:
            found, departing = self.regimes.lookup(slot, self._regime_key(slot, 0)), self._regime_key(slot, 1)
            recent = _newest(train, max(1, self.config.adapt_window // 4))
        lookup, keep = self.config.regime_lookup, self.config.adapt_keep

        def job() -> Adaptation:
            started = time.perf_counter()
            try:
                memory = found.params if found is not None else None   # stacked here, not while queued
                result = adapt(init, current, train, valid, steps, clip, memory, lookup, recent, keep=keep)
            except Exception:
                log.exception("adaptation of slot %d failed; keeping its model", slot)
                return Adaptation(slot, None, time.perf_counter() - started)
            return Adaptation(slot, result, time.perf_counter() - started, found, departing)
        return job

    def _regime_key(self, slot: int, which: int) -> np.ndarray | None:
        """The window keying a regime: 0, the newest `window` values (the regime a drift moved
        to); 1, the `window` values ending half a support window earlier (the regime the current
        weights served: detectors fire tens of steps after a change, so mostly before it)."""
        c = self.config
        gap = which * (c.adapt_window // 2)
        if self.count[slot] < c.window + gap:
            return None
        end = self.span - gap
        return regime_key(self.hist[slot, end - c.window:end])

    def _apply_finished_adaptations(self) -> None:
        for slot, future in list(self._running.items()):
            # A job cancelled at shutdown (`close`) never ran: it stays owed (see `checkpoint`).
            if future.done() and not future.cancelled():
                del self._running[slot]
                with self._changing([slot]):
                    self._apply(future.result())

    def _apply(self, done: Adaptation) -> None:
        slot, result = done.slot, done.result
        self.counters["adapt_seconds"] += done.seconds
        outcome = "failed" if result is None else "adapted" if result.replaced else "kept"
        self.counters[outcome] += 1
        if result is not None and result.replaced:
            self.counters[f"adapted_{result.winner}"] += 1
        self.telemetry.adaptation(outcome, done.seconds, result.winner if result is not None else None)
        if result is None:
            return
        self.restarts[slot] += 1
        if not result.replaced:   # the current weights still forecast the newest points best
            return
        # Only a replaced GRU changes the forecaster: its new weights, and a record a little ahead
        # of the other experts' (its old record was earned by the weights it just beat). The RLS
        # learner is left as it is: refitting a recent one on the adaptation window, and
        # leaning to the GRU when it kept its weights, raised the error after detected changes
        # on ETTh2 and WTH and did not lower it after a level shift (BENCHMARKS.md, "restart policy").
        slots = np.array([slot])
        self._remember_departing(done)
        self.gru.load(slots, result.params)
        self.adaptations[slot] += 1
        # The mixture's anchor (`mixture_anchor`) stays in force: letting it go until the new record
        # filled was no better on the validation rows (BENCHMARKS.md, "Anchored mixture").
        self.mixture.favour(slots, GRU)

    def _remember_departing(self, done: Adaptation) -> None:
        """The series leaves its weights: remember them (and which remembered regime it now uses)."""
        if not self.regimes.enabled:
            return
        slot, result, found = done.slot, done.result, done.found
        refit = self.regimes.source.pop(slot, -1)
        source = -1
        if result is not None and result.winner == MEMORY and found is not None:
            i = result.remembered
            source = self.regimes.chosen(slot, found.idents[i], found.shared[i])
        if source >= 0 and source == refit:   # back to the entry it came from: keep that, store anew
            refit = -1
        self.regimes.remember(slot, done.departing, self.gru.rows(np.array([slot])), refit)
        if source >= 0:
            self.regimes.source[slot] = source

    # -- checkpoints ---------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {"kind": self.kind, "window": c.window, "patch": c.patch, "hidden": c.hidden,
                "horizon": c.horizon, "rls_lags": c.rls_lags, "span": self.span, "origins": self.origins}

    def checkpoint(self) -> list[Checkpoint]:
        """Every series' complete model state, so a restart forecasts exactly as before."""
        with self._state_lock:
            self._apply_finished_adaptations()
            header = self.fingerprint() | {"interval_units": INTERVAL_UNITS}
            out = []
            owned = self.regimes.owned()   # not a scan of the shared library per series
            for name, slot in self.slots.items():
                arrays = {key: getattr(self, key)[slot] for key in PER_SLOT}
                arrays.update(self.rls.state(slot))
                arrays.update({f"gru_{k}": v[slot].numpy() for k, v in self.gru.params.items()})
                arrays["mixture_loss"] = self.mixture.loss[slot]
                arrays["conformal_q"] = self.conformal.q[slot]
                # A detection whose adaptation is still owed (queued, running, or cancelled at
                # shutdown) is saved as owed: a restart runs it (`restore`), on the newest window.
                arrays["adaptation_owed"] = np.array(slot in self._running)
                arrays.update(self.drift.state(slot))
                if self.regimes.enabled:
                    arrays.update(self.regimes.state(slot, owned))
                out.append(Checkpoint(name, self.kind, FORMAT_VERSION, encode(arrays, header)))
            return out

    def restore(self, history: dict[str, list[tuple[float, float]]],
                checkpoints: Sequence[Checkpoint] = ()) -> list[Observation]:
        """Load checkpoints and record the stored history; returns what the models have still to
        learn (records newer than a series' checkpoint, or all of a series without a usable one),
        for the learning thread, so start-up does not wait for it."""
        for name, rows in history.items():
            self.naive.record([Observation(name, ts, value) for ts, value in rows])
        restored: set[str] = set()
        owed: list[int] = []
        fresh_detectors = 0
        expect = self.fingerprint()
        with self._state_lock:
            for cp in checkpoints:
                try:
                    if cp.kind != self.kind:
                        raise SnapshotError(f"checkpoint is of a {cp.kind!r} model")
                    arrays, header = decode(cp.payload, expect)
                    if header.get("interval_units", 1) == 1:
                        _intervals_by_lead(arrays, self.leads)
                    owes = arrays.get("adaptation_owed", np.array(False))
                    if owes.shape != () or owes.dtype != bool:
                        raise SnapshotError(f"adaptation_owed is not one flag: {owes!r}")
                    slot = self._slot(cp.series)
                    fresh_detectors += not self._load_slot(slot, arrays)
                except (SnapshotError, KeyError, ValueError) as exc:
                    log.warning("series %r: ignoring its checkpoint (%s); relearning from stored history",
                                cp.series, exc)
                    self._forget(cp.series)
                    continue
                restored.add(cp.series)
                if owes:
                    owed.append(slot)
            if owed and self.config.adapt:
                log.info("%d series had an adaptation owed at the checkpoint: adapting them now", len(owed))
                for slot in owed:
                    self._start_adaptation(slot)
        pending = []
        for name, rows in history.items():
            slot = self.slots.get(name)
            seen = self.last_ts[slot] if slot is not None else -np.inf
            pending.extend(Observation(name, ts, value) for ts, value in rows if ts > seen)
        pending.sort(key=lambda o: o.ts)   # series advance together, as they arrived
        if checkpoints:
            log.info("restored %d series from checkpoints; %d stored records to learn", len(restored), len(pending))
        if fresh_detectors:
            log.info("%d series' drift detectors start empty (checkpoints from before detector state was "
                     "kept, or another [drift] detector, its parameters or the river version changed)",
                     fresh_detectors)
        return pending

    def _load_slot(self, slot: int, arrays: dict[str, np.ndarray]) -> bool:
        """Load one series' checkpoint (SnapshotError: unusable); False if its drift detector
        could not be restored and starts empty."""
        arrays = _without_retired_expert(arrays)
        for key in ADDED_LATER - arrays.keys():
            arrays[key] = np.full(getattr(self, key)[slot].shape, FRESH[key])
        for key in PER_SLOT:
            target = getattr(self, key)
            if arrays[key].shape != target[slot].shape or not np.isfinite(arrays["hist"][-1]):
                raise SnapshotError(f"{key} has shape {arrays[key].shape}, expected {target[slot].shape}")
        if arrays["mixture_loss"].shape != self.mixture.loss[slot].shape:
            raise SnapshotError(f"mixture_loss has shape {arrays['mixture_loss'].shape}, "
                                f"expected {self.mixture.loss[slot].shape}")
        q, issued = arrays["conformal_q"], arrays["issued_q"]
        if q.shape != self.conformal.q[slot].shape or not ((q >= 0) & (q <= CEILING)).all():
            raise SnapshotError(f"conformal_q is not {self.conformal.q[slot].shape} widths in [0, {CEILING:g}]")
        if not (np.isnan(issued) | ((issued >= 0) & (issued <= CEILING))).all():   # NaN: none issued
            raise SnapshotError(f"issued_q holds widths outside [0, {CEILING:g}]")
        params = {k: torch.from_numpy(arrays[f"gru_{k}"]) for k in self.gru.params}
        if not all(bool(torch.isfinite(v).all()) for v in params.values()):
            raise SnapshotError("recurrent weights are not finite")
        for key in PER_SLOT:
            getattr(self, key)[slot] = arrays[key]
        self.fc_count[slot] = arrays["count"]   # a checkpoint holds the forecast of its newest step
        self.rls.load_state(slot, arrays)
        self.gru.load(np.array([slot]), {k: v[None] for k, v in params.items()})
        self.mixture.loss[slot] = arrays["mixture_loss"]
        self.conformal.q[slot] = arrays["conformal_q"]
        if self.regimes.enabled:   # a checkpoint from before regime memory has none: that is fine
            try:
                self.regimes.load(slot, arrays, list(self.gru.params))
            except (ValueError, KeyError) as exc:
                log.warning("series %r: ignoring its remembered regimes (%s)", self.names[slot], exc)
                self.regimes.forget(slot)
        return self.drift.load(slot, arrays, self.names[slot])

    def _forget(self, name: str) -> None:
        """Return a series' slot to a fresh state (after a refused checkpoint)."""
        slot = self.slots.get(name)
        if slot is None:
            return
        for key, fresh in (FRESH | TRANSIENT).items():
            getattr(self, key)[slot] = fresh
        self.rls.reset(np.array([slot]))
        self.gru.load(np.array([slot]), self.init.params)
        self.regimes.forget(slot)
        self.drift.reset(slot)
        self.mixture.loss[slot] = 1.0
        if self.config.cold:
            self.mixture.lean(np.array([slot]), GRU, COLD_START_GRU_SHARE)
        self.conformal.q[slot] = self.conformal.initial

    def take_drift_events(self) -> list[DriftEvent]:
        with self._state_lock:
            events, self.drift_events = self.drift_events, []
            return events

    # -- forecasting ---------------------------------------------------------------------------
    def _forecast(self, slots: np.ndarray) -> None:
        c = self.config
        slots = slots[self.count[slots] >= c.serving]
        if slots.size == 0:
            return
        experts, combined, width, value, lo, hi = self._predict(
            slots, self.hist[slots, -c.window:], self.scale_h[slots, -1], self.mean_h[slots, -1],
            self._rls_ratio(slots, np.array([0]))[:, 0])
        with self._changing(slots), self._cache_lock:
            self.preds[slots, -1, :COMBINED] = experts[:, :, self.leads - 1]
            self.preds[slots, -1, COMBINED] = combined[:, self.leads - 1]
            self.first_origin[slots] = np.where(self.first_origin[slots] < 0, self.count[slots],
                                                self.first_origin[slots])
            self.issued_width[slots, -1] = width[:, self.leads - 1]
            self.issued_q[slots, -1] = self.conformal.q[slots]   # before a young series' widening
            self.fc_value[slots] = value
            self.fc_lo[slots] = lo
            self.fc_hi[slots] = hi
            self.fc_origin[slots] = self.last_ts[slots]
            self.fc_count[slots] = self.count[slots]

    def _predict(self, slots: np.ndarray, observed: np.ndarray, scale: np.ndarray, mean: np.ndarray,
                 ratio: np.ndarray, provisional: bool = False) -> tuple[np.ndarray, ...]:
        """The models' forecasts from raw windows `observed` (n, W; NaN: never observed) with the
        normalisation at their origins (scale, slow mean, RLS ratio; each (n,)): the experts'
        (n, K, H) and their combination (n, H), interval half-widths (n, H), all normalised, and
        (value, lo, hi) on the series' own scale. `provisional`: one series, off the learning thread."""
        c = self.config
        # A young series' window starts with never-observed (NaN) places: the last value fills
        # them, i.e. zeros relative to it, so the models see no change there rather than a step.
        window, level = windows(np.where(np.isnan(observed), observed[:, -1:], observed), scale, mean)
        x = rls_features(window * ratio[:, None], level * ratio, c.rls_lags)
        gru = (self.gru.predict_one(int(slots[0]), window[0], float(level[0]))[None] if provisional
               else self.gru.predict(slots, window, level))
        experts = np.stack([self.rls.predict(slots, x) / ratio[:, None], gru, np.zeros((slots.size, c.horizon))],
                           axis=1)                                        # (n, K, H)
        bad = ~np.isfinite(experts)
        if bad.any():
            if not provisional:   # counted once, when the learning thread issues the same forecast
                self.counters["nonfinite"] += int(bad.any(axis=(1, 2)).sum())
                self.telemetry.nonfinite(int(bad.any(axis=(1, 2)).sum()))
            experts[bad] = 0.0
        combined = (self.mixture.weights(slots, self.spread) * experts).sum(axis=1)
        width = (self.conformal.q[slots] @ self.spread) * lead_units(ratio, self.all_leads)   # fast-scale units
        young = self.count[slots] < c.window
        if young.any():
            # The conformal tracker starts narrow and learns slowly: until the window is full, an
            # interval is at least as wide as the last-value fallback's would be.
            fallback = last_value_halfwidths(observed[young], c.horizon, c.coverage) / scale[young, None]
            width[young] = np.maximum(width[young], fallback)
        last = observed[:, -1:]
        value = np.clip(last + scale[:, None] * combined, -FLOAT_MAX, FLOAT_MAX)
        half = scale[:, None] * width
        lo, hi = np.clip(value - half, -FLOAT_MAX, FLOAT_MAX), np.clip(value + half, -FLOAT_MAX, FLOAT_MAX)
        # Changes near the float limit overflow the scale (|1.7e308 - -1.7e308| = inf) and the
        # forecast with it: answer the last value and an interval as wide as floats go.
        value = np.where(np.isfinite(value), value, last)
        lo = np.minimum(np.where(np.isfinite(lo), lo, -FLOAT_MAX), value)
        hi = np.maximum(np.where(np.isfinite(hi), hi, FLOAT_MAX), value)
        return experts, combined, width, value, lo, hi

    def forecast(self, series: str, horizon: int) -> Forecast:
        found = self.forecast_current(series, horizon)
        return found if found is not None else self.naive.forecast(series, horizon)

    def forecast_current(self, series: str, horizon: int) -> Forecast | None:
        slot = self.slots.get(series)
        if slot is not None and self.caught_up(series):
            cached = self._cached(series, slot, horizon)
            return cached if cached is not None else self.naive.forecast(series, horizon)   # young
        if self.naive.last_ts(series) is None:
            raise UnknownSeries(series)
        return self._provisional(series, slot, horizon) if slot is not None else None

    def _cached(self, series: str, slot: int, horizon: int) -> Forecast | None:
        """The forecast the learning thread issued at the series' newest record (None: none)."""
        with self._cache_lock:
            origin = float(self.fc_origin[slot])
            if not np.isfinite(origin):
                return None
            value = self.fc_value[slot, :horizon].copy()   # copies: learning rewrites them
            lo = self.fc_lo[slot, :horizon].copy()
            hi = self.fc_hi[slot, :horizon].copy()
            count = int(self.fc_count[slot])
        return self._answer(series, origin, (value, lo, hi), self._about(slot, count))

    def _provisional(self, series: str, slot: int, horizon: int) -> Forecast | None:
        """The forecast from records recorded but not learnt yet, so that an answer need not wait
        for the learning thread: the window and normalisation advanced through those records as
        learning will advance them, read by the models as they are now (learning will first fold
        in the targets those records complete: the learning thread's own forecast differs by that).

        Also made while a learning step computes from the newest record (its GRU gradient, its
        forecast): the slot's state is then complete up to that record. Made only when it can be
        made exactly: the slot is not being written meanwhile (`stamp`, checked before and after),
        it has a full window, and the records follow its regular step, in order, once each.
        None otherwise: the caller waits for learning, as before.
        """
        c = self.config
        stamp = int(self.stamp[slot])
        if stamp % 2 or self.count[slot] < c.window:
            return None
        newer = self.naive.since(series, float(self.last_ts[slot]), c.window)
        # Learning may have appended the newest record and be learning from it (its GRU step):
        # the slot's state is then complete up to it, only its forecast is not issued yet.
        stepping = not self.fc_origin[slot] >= self.last_ts[slot]
        if newer is None or not (newer or stepping):
            return None
        ts = np.array([t for t, _ in newer]) if newer else self.last_ts[slot:slot + 1]
        y = np.array([v for _, v in newer])
        if newer and self._fills_a_gap(slot, np.diff(ts, prepend=self.last_ts[slot])):
            return None
        raw, typical = self.raw_scale[slot:slot + 1], self.typical[slot:slot + 1]
        mean, prev = self.mean_h[slot, -1:], self.hist[slot, -1:]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for value in y:   # as _append does, one record at a time
                now = np.array([value])
                raw, mean = update_stats(raw, mean, prev, now, c.scale_rate, c.mean_rate)
                typical = update_typical(typical, raw, np.abs(now - prev))
                prev = now
            scale = safe_scale(raw, typical)
            observed = np.concatenate([self.hist[slot], y])[None, -c.window:]
            _, _, _, value, lo, hi = self._predict(np.array([slot]), observed, scale, mean,
                                                   scale / np.maximum(typical, MIN_SCALE), provisional=True)
        about = self._about(slot, int(self.count[slot]) + len(y), unlearnt=len(y) + stepping)
        if int(self.stamp[slot]) != stamp:
            return None
        return self._answer(series, float(ts[-1]), (value[0, :horizon], lo[0, :horizon], hi[0, :horizon]), about)

    def _fills_a_gap(self, slot: int, gaps: np.ndarray) -> bool:
        """Whether learning will fill missing steps before records `gaps` seconds apart."""
        memory = self.gaps[slot].copy()
        if (memory == gaps[0]).all() and (gaps == gaps[0]).all():
            return False   # the regular case: the step stays what it was, nothing is missing
        for gap in gaps:   # the memory rolled as _align rolls it: the step may change on the way
            missing, _ = missing_steps(memory[None], np.array([gap]))
            if missing[0]:
                return True
            memory[:-1], memory[-1] = memory[1:].copy(), gap
        return False

    def _about(self, slot: int, count: int, unlearnt: int = 0) -> dict[str, Any]:
        """The answer's `model` object for a forecast from `count` observations."""
        drift = float(self.last_drift[slot])
        model = {"kind": "online" if count >= self.config.window else "cold_start", "version": FORMAT_VERSION,
                 "init": self.init.kind, "last_drift": drift if np.isfinite(drift) else None,
                 "adaptations": int(self.adaptations[slot])}
        if count < self.config.window:   # young: how much of the window is real
            model["observations"] = count
        if unlearnt:   # newest records the models forecast from but have not learnt from yet
            model["unlearnt"] = unlearnt
        return model

    def _answer(self, series: str, origin: float, band: tuple[np.ndarray, np.ndarray, np.ndarray],
                model: dict[str, Any]) -> Forecast:
        step = self.naive.step(series) or 1.0
        points = tuple(ForecastPoint(origin + step * (i + 1), v, l, u)
                       for i, (v, l, u) in enumerate(zip(*(part.tolist() for part in band))))
        return Forecast(series, origin, step, points, model)

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "series": len(self.names), "init": self.init.kind,
                "init_version": self.init.label,
                "adapting": len(self._running), "regimes": len(self.regimes), **self.counters}

    def warm_series(self) -> int:
        return int((self.count[: len(self.names)] >= self.config.serving).sum())

    def now(self, series: str) -> SeriesNow | None:
        slot = self.slots.get(series)
        if slot is None or self.count[slot] == 0:
            return None
        forecast, lo, hi = (float(v) for v in self.now_fc[slot])
        return SeriesNow(float(self.last_ts[slot]), float(self.hist[slot, -1]), forecast, lo, hi,
                         float(self.recent_error[slot]))

    def set_initializer(self, init: Initializer) -> None:
        """Adaptations and new series start from `init` from now on (series keep their weights)."""
        if any(init.params[k].shape[1:] != v.shape[1:] for k, v in self.init.params.items()):
            raise ValueError("the initializer does not fit this model's shape")
        with self._state_lock:
            self.init = init

    def halt_learning(self) -> None:
        self._halt.set()

    def close(self) -> None:
        self._halt.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
