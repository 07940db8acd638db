"""Drift and adaptation, part of OnlineEngine: a detector per series watches its one-step
residuals; when one fires, the series' recurrent model restarts from the initializer (or a
remembered regime), is fine-tuned on the newest window, and keeps whichever candidate forecasts
the newest points best. Runs inline (replay: deterministic) or in a bounded thread pool.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .layout import GRU
from .learner import AdaptResult, Examples, MEMORY, adapt
from .regimes import Found, regime_key

log = logging.getLogger(__name__)


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


class Adapting:
    """OnlineEngine's drift and adaptation methods (they use its per-slot arrays and models)."""

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

    def _start_owed_adaptations(self) -> None:
        if not self._owed:   # every learning step asks; only the first after a restore finds any
            return
        owed, self._owed = self._owed, []
        for slot in owed:
            if slot not in self._running:
                self._start_adaptation(slot)

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
        lookup, keep, name = self.config.regime_lookup, self.config.adapt_keep, self.names[slot]

        def job() -> Adaptation:
            started = time.perf_counter()
            try:
                memory = found.params if found is not None else None   # stacked here, not while queued
                result = adapt(init, current, train, valid, steps, clip, memory, lookup, recent, keep=keep)
            except Exception:
                log.exception("adaptation of series %r failed; keeping its model", name)
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

    def take_drift_events(self) -> list[DriftEvent]:
        """The detections since the last call, except those of series being forgotten (nor does
        the store keep a removed series', `Store.add_drift_events`)."""
        with self._state_lock:
            events, self.drift_events = self.drift_events, []
            return [e for e in events if e.series not in self.forgetting]
