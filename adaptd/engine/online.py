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

This module holds the slots' storage, learning and issuing forecasts; the class's other parts
are adapting.py (drift and adaptation), checkpointing.py and serving.py (answering forecasts),
with the slots' layout in layout.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..records import Observation
from .adapting import Adaptation, Adapting, DriftEvent
from .base import Engine
from .checkpointing import Checkpointing
from .conformal import QuantileTracker, lead_units
from .drift import DriftMonitor
from .features import (LEVEL_CLIP, MIN_SCALE, VALUE_CLIP, rls_feature_count, rls_features, rls_level, safe_scale,
                       update_stats, update_typical, windows)
from .history import missing_steps
from .layout import COLD_START_GRU_SHARE, COMBINED, EXPERTS, FRESH, GAP_MEMORY, GRU, MIXTURE_PRIOR, TRANSIENT
from .leads import interpolation, scored_leads
from .learner import Examples, Initializer, StackedGRU, use_torch_threads
from .mixture import Mixture
from .naive import NaiveEngine, last_value_halfwidths
from .online_config import OnlineConfig
from .regimes import RegimeMemory
from .rls import BatchedRLS
from .serving import Serving
from .telemetry import SeriesNow

__all__ = ["DriftEvent", "OnlineConfig", "OnlineEngine"]   # what other modules import from here

ERROR_RATE = 0.05   # the rolling per-series error forgets with this weight per observation
FLOAT_MAX = float(np.finfo(np.float64).max)
# Series stepped together in one batched learning step. Smaller steps issue their series' learnt
# forecasts sooner and are faster: at 3,000 series, steps of 128 learnt 3,000 records/s (10,000
# when shedding) against 1,600 (7,000) in one step of all 3,000 (smaller temporaries stay in cache).
ROUND_SERIES = 128
# A forgotten series' slot goes to a new series only this many seconds later: a forecast that
# looked the old series up just before may still be reading the slot.
SLOT_REUSE_DELAY = 60.0


class OnlineEngine(Adapting, Checkpointing, Serving, Engine):
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
        self.mixture = Mixture(len(EXPERTS), c.mixture_eta, c.mixture_memory, c.mixture_anchor, MIXTURE_PRIOR,
                               c.mixture_gate, c.blend_memory)
        self.conformal = QuantileTracker(c.coverage, c.interval_rate, leads=self.leads)
        self.drift = DriftMonitor(c.detector, c.detector_params, c.cooldown)
        self.names: list[str] = []          # by slot ("": the slot of a forgotten series)
        self.slots: dict[str, int] = {}
        self._vacated: deque[tuple[float, int]] = deque()   # (when, slot) of forgotten series
        # Forgotten series whose slots learning drops at its next step; answers no longer use them.
        self.forgetting: set[str] = set()
        self._cache_lock = threading.Lock()    # held briefly: forecasts never wait for learning
        self._state_lock = threading.RLock()   # learning vs checkpointing
        self._pool = (ThreadPoolExecutor(c.adapt_workers, "adaptd-adapt", initializer=use_torch_threads,
                                         initargs=(c.torch_threads,)) if c.adapt_workers > 0 else None)
        self._running: dict[int, Future[Adaptation]] = {}
        self._owed: list[int] = []   # slots whose checkpoint owed an adaptation: started by `learn`
        self._halt = threading.Event()
        self._shed = False   # this batch skips the GRU's online steps (learn(shed=True))
        self.drift_events: list[DriftEvent] = []   # drained by the daemon into SQL
        # adapted = adapted_finetuned + adapted_init + adapted_memory: which candidate won.
        self.counters = {"drifts": 0, "adapted": 0, "kept": 0, "failed": 0, "adapted_finetuned": 0,
                         "adapted_init": 0, "adapted_memory": 0, "late_skipped": 0,
                         "gap_steps_filled": 0, "gaps_unfilled": 0, "nonfinite": 0, "gru_steps_shed": 0,
                         "adapt_seconds": 0.0}
        self.rounds = 0   # learning steps taken (`progress`)
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
            if self._vacated and self._vacated[0][0] <= time.monotonic() - SLOT_REUSE_DELAY:
                slot = self._vacated.popleft()[1]   # fresh since `forget`
                self.names[slot] = name
            else:
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
                self._drop_forgotten()
                self._start_owed_adaptations()
                self._observe_models(batch)
            finally:
                self._shed = False

    def forgettable(self, series: str) -> bool:
        newest = self.naive.last_ts(series)
        slot = self.slots.get(series)
        if slot is None or newest is None:
            return newest is None   # recorded, not learnt yet: learning would make it a slot again
        return bool(self.last_ts[slot] >= newest) and slot not in self._running and slot not in self._owed

    def forget(self, series: str) -> None:
        """Drop the series. Forecasts of it end at once; its slot is dropped by the next learning
        step or checkpoint (the ingest writer, which calls this, must not wait for a learning step)."""
        self.forgetting.add(series)
        self.naive.forget(series)

    def _drop_forgotten(self) -> None:
        """(Under the state lock.) The forgotten series' slots return to a fresh state and,
        SLOT_REUSE_DELAY later, to new series; an adaptation still owed or running is dropped.
        Regimes a series stored in the shared library stay there for every series (until a
        restart: they travelled in its checkpoints)."""
        for series in list(self.forgetting):   # (a copy: the ingest writer adds to it meanwhile)
            slot = self.slots.pop(series, None)
            self.forgetting.discard(series)   # (after the pop: an answer never reads the old slot)
            if slot is None:
                continue
            self._running.pop(slot, None)   # its result is never applied
            self._owed = [owed for owed in self._owed if owed != slot]
            with self._changing([slot]), self._cache_lock:   # readers of the slot discard what they read
                self._forget_slot(slot)
            self.regimes.disown(slot)
            self.names[slot] = ""
            self._vacated.append((time.monotonic(), slot))

    def _live_slot(self, series: str) -> int | None:
        """The series' slot, unless it was forgotten (a series back since then has none yet)."""
        return self.slots.get(series) if series not in self.forgetting else None

    def caught_up(self, series: str) -> bool:
        slot = self._live_slot(series)
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
        known = self.naive.last_ts
        for obs in batch:   # round k holds each series' k-th record: series move in lockstep
            if known(obs.series) is None:   # forgotten since it was recorded
                continue
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

    def progress(self) -> float:
        done = self.counters
        return self.rounds + done["adapted"] + done["kept"] + done["failed"]

    def _step(self, slots: np.ndarray, ts: np.ndarray, y: np.ndarray) -> None:
        self.rounds += 1
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
        pick_slots, pick_leads, errors, scaled, widths, tracked, units, ratios = [], [], [], [], [], [], [], []
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
            ratios.append(origin_ratio)
            scaled.append(np.abs(err[:, COMBINED]) * origin_ratio)   # in units of the long-run scale
            if h == 1:
                # In units of the series' long-run scale, not the fast one the models use:
                # the fast scale absorbs a change in volatility the detector should notice.
                residual[made] = np.abs(err[:, COMBINED]) * origin_scale / np.maximum(self.typical[s], MIN_SCALE)
                recent = self.recent_error[s]
                self.recent_error[s] = np.where(np.isfinite(recent), recent + ERROR_RATE * (scaled[-1] - recent),
                                                scaled[-1])
        if pick_slots:
            s_all, j_all, e_all = np.concatenate(pick_slots), np.concatenate(pick_leads), np.concatenate(errors)
            # The learnt blend weighs errors in units of the long-run scale, as RLS learns (`_rls_ratio`).
            self.mixture.update(s_all, j_all, e_all[:, :COMBINED], np.concatenate(ratios))
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
        level = np.clip((last - mean) / scale, -LEVEL_CLIP, LEVEL_CLIP)
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
        window, _, valid = self._origins(slots, back)
        y_o = self.hist[slots][:, self.span - 1 - back]
        scale = self.scale_h[slots][:, self.origins - back]
        ratio = self._rls_ratio(slots, back)
        with np.errstate(invalid="ignore"):
            target = np.clip((self.hist[slots, -1][:, None] - y_o) / scale, -VALUE_CLIP, VALUE_CLIP)
            level = rls_level(y_o, self.mean_h[slots][:, self.origins - back], scale, ratio)
        ok = valid & np.isfinite(target) & np.isfinite(ratio)
        x = rls_features((window * ratio[:, :, None]).reshape(-1, c.window), level.reshape(-1),
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
        filled = np.where(np.isnan(observed), observed[:, -1:], observed)
        window, level = windows(filled, scale, mean)
        x = rls_features(window * ratio[:, None], rls_level(filled[:, -1], mean, scale, ratio),
                         c.rls_lags)
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
        # Every target the experts learn lies within ±VALUE_CLIP scale units; a forecast past
        # that is an extrapolation from inputs unlike any seen (an RLS after a level shift).
        np.clip(experts, -VALUE_CLIP, VALUE_CLIP, out=experts)
        young = self.count[slots] < c.window
        # A young series (a cold start) follows its experts' errors alone: the anchor's RLS has
        # learnt from a few dozen values there, and holding a quarter of the weight on it made
        # M4 cold starts 25-40% less accurate at 36-47 observations (BENCHMARKS.md, "Cold
        # start"); the anchor was chosen on full-window series.
        combined = (self.mixture.weights(slots, self.spread, ~young) * experts).sum(axis=1)
        width = (self.conformal.q[slots] @ self.spread) * lead_units(ratio, self.all_leads)   # fast-scale units
        if young.any():
            # The conformal tracker has seen few errors yet (its start is a guess, conformal.py):
            # until the window is full, an interval is at least as wide as the last-value
            # fallback's would be.
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

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "series": len(self.slots), "init": self.init.kind,
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
