"""Answering forecasts, part of OnlineEngine: the forecast the learning thread issued at a
series' newest record, or, for records not learnt yet, a provisional one computed at once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .base import Forecast, ForecastPoint, UnknownSeries
from .features import MIN_SCALE, safe_scale, update_stats, update_typical
from .history import missing_steps
from .snapshot import FORMAT_VERSION


class Serving:
    """OnlineEngine's answering methods (they read its cached forecasts and per-slot arrays)."""

    def forecast(self, series: str, horizon: int) -> Forecast:
        found = self.forecast_current(series, horizon)
        return found if found is not None else self._fallback(series, horizon)

    def forecast_current(self, series: str, horizon: int) -> Forecast | None:
        slot = self._live_slot(series)
        if slot is not None and self.caught_up(series):
            if self.naive.revised(series) >= self.fc_origin[slot]:
                # The value the models forecast from was re-sent with another value since: they
                # learn in time order and never see it, the fallback knows every acknowledged
                # record. Until the models learn a newer record, the fallback answers.
                return self._fallback(series, horizon)
            cached = self._cached(series, slot, horizon)
            return cached if cached is not None else self._fallback(series, horizon)   # young
        if self.naive.last_ts(series) is None:
            raise UnknownSeries(series)
        return self._provisional(series, slot, horizon) if slot is not None else None

    def _fallback(self, series: str, horizon: int) -> Forecast:
        """The naive fallback's forecast, with what the series' models have been through: a
        fallback answer does not undo its drifts and adaptations in the client's eyes."""
        fc = self.naive.forecast(series, horizon)
        slot = self._live_slot(series)
        if slot is None:
            return fc
        # A new model dict: the fallback's own may be shared with its cache (Forecast.head).
        return dataclasses.replace(fc, model={**fc.model, **self._history_of(slot)})

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
        model = {"kind": "online" if count >= self.config.window else "cold_start", "version": FORMAT_VERSION,
                 "init": self.init.kind, **self._history_of(slot)}
        if count < self.config.window:   # young: how much of the window is real
            model["observations"] = count
        if unlearnt:   # newest records the models forecast from but have not learnt from yet
            model["unlearnt"] = unlearnt
        return model

    def _history_of(self, slot: int) -> dict[str, Any]:
        drift = float(self.last_drift[slot])
        return {"last_drift": drift if np.isfinite(drift) else None, "adaptations": int(self.adaptations[slot])}

    def _answer(self, series: str, origin: float, band: tuple[np.ndarray, np.ndarray, np.ndarray],
                model: dict[str, Any]) -> Forecast:
        step = self.naive.step(series) or 1.0
        points = tuple(ForecastPoint(origin + step * (i + 1), v, l, u)
                       for i, (v, l, u) in enumerate(zip(*(part.tolist() for part in band))))
        return Forecast(series, origin, step, points, model)
