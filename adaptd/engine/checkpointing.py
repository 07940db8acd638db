"""Checkpoints, part of OnlineEngine: every series' complete model state as a versioned,
pickle-free payload (snapshot.py), restored at start so that a restarted daemon forecasts,
detects and adapts as before. Older layouts are converted here; broken ones are refused.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from ..records import Observation
from ..store import Checkpoint
from .conformal import CEILING, lead_units
from .layout import ADDED_LATER, COLD_START_GRU_SHARE, EXPERTS, FRESH, GRU, PER_SLOT, TRANSIENT
from .snapshot import SnapshotError, decode, encode

log = logging.getLogger(__name__)

# The checkpoint format. 1: interval widths in units of the fast scale at every lead (converted
# on restore). 2: widths in `lead_units`, and `adaptation_owed`. An older adaptd refuses a newer
# format and relearns from stored history rather than misread it.
CHECKPOINT_FORMAT = 2
# Checkpoints written before a second linear learner, "rls_recent", was removed hold it as expert
# 1 of four. Once the restart policy stopped resetting it, it duplicated "rls" exactly, so such a
# checkpoint loads with it dropped (see `_without_retired_expert`).
RETIRED_EXPERT, RETIRED_INDEX = "rls_recent", 1


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
    """Convert a format-1 checkpoint's (checked) interval widths from the fast scale to
    `lead_units`: the restored engine issues the intervals the saved one would (exactly at the
    scored leads; between them the interpolation differs by well under 1%)."""
    with np.errstate(all="ignore"):   # NaN where no origin is kept yet: judged as unknown
        ratio = arrays["scale_h"] / arrays["typical_h"]   # at each kept origin, newest last
        issued = arrays["issued_q"]
        q = arrays["conformal_q"] / lead_units(ratio[-1:], leads)[0]
        arrays["issued_q"] = np.minimum(issued / lead_units(ratio[-issued.shape[0]:], leads), CEILING)
    if not np.isfinite(q).all():
        raise SnapshotError("its interval widths cannot be converted: the series' scales are not finite")
    arrays["conformal_q"] = np.minimum(q, CEILING)


class Checkpointing:
    """OnlineEngine's checkpoint and restore methods (they use its per-slot arrays and models)."""

    def fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {"kind": self.kind, "window": c.window, "patch": c.patch, "hidden": c.hidden,
                "horizon": c.horizon, "rls_lags": c.rls_lags, "span": self.span, "origins": self.origins}

    def checkpoint(self) -> list[Checkpoint]:
        """Every series' complete model state, so a restart forecasts exactly as before."""
        with self._state_lock:
            self._drop_forgotten()
            self._apply_finished_adaptations()
            header = self.fingerprint()
            out = []
            owned = self.regimes.owned()   # not a scan of the shared library per series
            for name, slot in self.slots.items():
                arrays = {key: getattr(self, key)[slot] for key in PER_SLOT}
                arrays.update(self.rls.state(slot))
                arrays.update({f"gru_{k}": v[slot].numpy() for k, v in self.gru.params.items()})
                arrays["mixture_loss"] = self.mixture.loss[slot]
                arrays["mixture_moments"] = self.mixture.moments[slot]
                arrays["conformal_q"] = self.conformal.q[slot]
                # A detection whose adaptation is still owed (queued, running, or cancelled at
                # shutdown) is saved as owed: after a restart the first learning step runs it
                # (`restore`), on the newest window.
                arrays["adaptation_owed"] = np.array(slot in self._running)
                arrays.update(self.drift.state(slot))
                if self.regimes.enabled:
                    arrays.update(self.regimes.state(slot, owned))
                out.append(Checkpoint(name, self.kind, CHECKPOINT_FORMAT, encode(arrays, header, CHECKPOINT_FORMAT)))
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
                if cp.series not in history:   # no observations: a series forgotten as it was saved
                    continue
                try:
                    if cp.kind != self.kind:
                        raise SnapshotError(f"checkpoint is of a {cp.kind!r} model")
                    arrays, header = decode(cp.payload, expect, CHECKPOINT_FORMAT)
                    owes = arrays.get("adaptation_owed", np.array(False))
                    if owes.shape != () or owes.dtype != bool:
                        raise SnapshotError(f"adaptation_owed is not one flag: {owes!r}")
                    slot = self._slot(cp.series)
                    fresh_detectors += not self._load_slot(slot, arrays, header["format"])
                except (SnapshotError, KeyError, ValueError) as exc:
                    log.warning("series %r: ignoring its checkpoint (%s); relearning from stored history",
                                cp.series, exc)
                    self._forget(cp.series)
                    continue
                restored.add(cp.series)
                if owes:
                    owed.append(slot)
            if owed and self.config.adapt:
                # Started by the learning thread (its torch threads, metrics attached; start-up
                # does not wait for them), on the newest window the checkpoint holds.
                log.info("%d series had an adaptation owed at the checkpoint: adapting them at the next "
                         "learning step", len(owed))
                self._owed.extend(owed)
        pending = []
        for name, rows in history.items():
            slot = self.slots.get(name)
            seen = self.last_ts[slot] if slot is not None else -np.inf
            pending.extend(Observation(name, ts, value) for ts, value in rows if ts > seen)
            stored = next((v for ts, v in reversed(rows) if ts == seen), None) if name in restored else None
            if stored is not None and stored != self.hist[slot, -1]:   # re-sent after the checkpoint
                self.naive.mark_revised(name, float(seen))
        pending.sort(key=lambda o: o.ts)   # series advance together, as they arrived
        if checkpoints:
            log.info("restored %d series from checkpoints; %d stored records to learn", len(restored), len(pending))
        if fresh_detectors:
            log.info("%d series' drift detectors start empty (checkpoints from before detector state was "
                     "kept, or another [drift] detector, its parameters or the river version changed)",
                     fresh_detectors)
        return pending

    def unlearnt_before(self, history: dict[str, list[tuple[float, float]]]) -> dict[str, tuple[float, float]]:
        spans = {}
        with self._state_lock:
            for name, rows in history.items():
                slot = self.slots.get(name)
                # (A refused checkpoint leaves a fresh slot, -inf: it learns `history` only, as
                # a series without one does.)
                if slot is not None and rows and np.isfinite(self.last_ts[slot]) and self.last_ts[slot] < rows[0][0]:
                    spans[name] = (float(self.last_ts[slot]), rows[0][0])
        return spans

    def _load_slot(self, slot: int, arrays: dict[str, np.ndarray], version: int) -> bool:
        """Load one series' checkpoint of format `version` (SnapshotError: unusable); False if its
        drift detector could not be restored and starts empty."""
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
        # A checkpoint from before the learnt blend starts it afresh (the fixed prior).
        moments = arrays["mixture_moments"] if "mixture_moments" in arrays else self.mixture.fresh_moments(1)[0]
        if (moments.shape != self.mixture.moments[slot].shape or not np.isfinite(moments).all()
                or (np.diagonal(moments) < 0).any()):
            raise SnapshotError(f"mixture_moments is not {self.mixture.moments[slot].shape} finite second moments")
        q, issued = arrays["conformal_q"], arrays["issued_q"]
        if q.shape != self.conformal.q[slot].shape or not ((q >= 0) & (q <= CEILING)).all():
            raise SnapshotError(f"conformal_q is not {self.conformal.q[slot].shape} widths in [0, {CEILING:g}]")
        if not (np.isnan(issued) | ((issued >= 0) & (issued <= CEILING))).all():   # NaN: none issued
            raise SnapshotError(f"issued_q holds widths outside [0, {CEILING:g}]")
        if version == 1:
            _intervals_by_lead(arrays, self.leads)
        params = {k: torch.from_numpy(arrays[f"gru_{k}"]) for k in self.gru.params}
        if not all(bool(torch.isfinite(v).all()) for v in params.values()):
            raise SnapshotError("recurrent weights are not finite")
        for key in PER_SLOT:
            getattr(self, key)[slot] = arrays[key]
        self.fc_count[slot] = arrays["count"]   # a checkpoint holds the forecast of its newest step
        self.rls.load_state(slot, arrays)
        self.gru.load(np.array([slot]), {k: v[None] for k, v in params.items()})
        self.mixture.loss[slot] = arrays["mixture_loss"]
        self.mixture.moments[slot] = moments
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
        if slot is not None:
            self._forget_slot(slot)

    def _forget_slot(self, slot: int) -> None:
        for key, fresh in (FRESH | TRANSIENT).items():
            getattr(self, key)[slot] = fresh
        self.rls.reset(np.array([slot]))
        self.gru.load(np.array([slot]), self.init.params)
        self.regimes.forget(slot)
        self.drift.reset(slot)
        self.mixture.forget(slot)
        if self.config.cold:
            self.mixture.lean(np.array([slot]), GRU, COLD_START_GRU_SHARE)
        self.conformal.q[slot] = self.conformal.initial
