"""Regime memory: bounded libraries of adapted weights, keyed by the window they were fitted on.

Series return to regimes they have been in (winter load, weekend traffic), and related series
go through similar ones. When a drift adaptation replaces a series' weights, the weights it had
been using are remembered, keyed by the normalised window they served; at a later drift the
remembered regimes (the series' own library, and one shared by all series) are candidates of
the adaptation (`learner.adapt`): the `lookup` of them that forecast the newest points best are
fine-tuned like the initializer and compete with it.

Choosing by how well a remembered model forecasts the newest points (not by how similar its key
window looks) was measured to work better (BENCHMARKS.md, bench meta); keys order a large pool
so that a drift looks at most at the `POOL` nearest. Keys are windows normalised to zero mean
and unit spread, compared by their spectra (`embed`): level, scale and phase do not matter.
Both libraries are bounded: a full one forgets the entry used longest ago.

>>> import numpy as np, torch
>>> memory = RegimeMemory(per_series=2, shared=0, lookup=1)
>>> t = np.arange(48.0)
>>> for j, period in enumerate((24, 6, 12)):
...     _ = memory.remember(0, regime_key(np.sin(2 * np.pi * t / period)), {"w": torch.full((1, 2), float(j))})
>>> len(memory.library(0))                              # bounded: the oldest was forgotten
2
>>> found = memory.lookup(0, regime_key(5 + 3 * np.sin(2 * np.pi * (t + 7) / 6)))
>>> found.params["w"][:, 0].tolist()                    # nearest first, whatever level, scale and phase
[1.0, 2.0]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from .gru import Params

MIN_SPREAD = 1e-9
# Remembered regimes a drift looks at, at most: the nearest by key; the adaptation then keeps
# the `lookup` of them that forecast the newest points best (learner.preselect). 16 of a full
# 64-regime library did as well as all 64 on M4 Hourly and ranks in a quarter of the time.
POOL = 16


def _rounded(distance: float) -> float:
    """Distances equal up to floating-point noise compare equal (then other rules decide)."""
    return round(distance, 9)


def regime_key(values: np.ndarray) -> np.ndarray | None:
    """A raw window as a key: zero mean, unit standard deviation; None when flat or not finite."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 4 or not np.isfinite(values).all():
        return None
    top = float(np.abs(values).max())
    if top == 0.0:
        return None
    centred = values / top                      # any finite value: no overflow below
    centred = centred - centred.mean()
    spread = float(np.sqrt(np.mean(centred * centred)))
    if not spread > MIN_SPREAD:                 # flat (to rounding): no shape to key on
        return None
    return centred / spread


def embed(keys: np.ndarray) -> np.ndarray:
    """(n, L) keys -> (n, L//2 + 1) unit-norm magnitude spectra (level-, scale- and phase-free).

    The linear trend of each window is removed first: a window cut from a random walk or a
    ramp would otherwise look like one long cycle.
    """
    keys = np.atleast_2d(keys)
    t = np.arange(keys.shape[1], dtype=np.float64)
    t -= t.mean()
    slope = keys @ t / max(float(t @ t), 1.0)
    detrended = keys - slope[:, None] * t[None, :]
    spectrum = np.abs(np.fft.rfft(detrended, axis=1))
    return spectrum / np.maximum(np.linalg.norm(spectrum, axis=1, keepdims=True), MIN_SPREAD)


@dataclass
class Entry:
    key: np.ndarray      # (L,) normalised window the weights were fitted on
    params: Params       # one row (1, ...)
    ident: int           # unique for the engine's life (never reused, survives restarts)
    stamp: int           # when stored or last chosen: the least recent is forgotten first
    owner: int = -1      # the slot that stored it (shared library)
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        if self.embedding.size == 0:
            self.embedding = embed(self.key)[0]


class RegimeLibrary:
    """At most `capacity` entries; a full library forgets the least recently used one."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: list[Entry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, ident: int) -> int:
        return next((i for i, e in enumerate(self.entries) if e.ident == ident), -1)

    def put(self, entry: Entry, replace: int = -1) -> None:
        """Store `entry`, over the entry with ident `replace` if present (the same regime, refit)."""
        if self.capacity <= 0:
            return
        at = self.find(replace) if replace >= 0 else -1
        if at < 0 and len(self.entries) >= self.capacity:
            at = min(range(len(self.entries)), key=lambda i: self.entries[i].stamp)
            if self.entries[at].stamp > entry.stamp:   # restoring into a smaller library: keep the newest
                return
        if at < 0:
            self.entries.append(entry)
        else:
            self.entries[at] = entry


@dataclass
class Found:
    """Remembered regimes to try: their weights and where each came from."""

    rows: list[Params]   # each regime's weights (1, ...): the entries' own tensors (never modified in place)
    idents: list[int]
    shared: list[bool]
    distances: list[float]

    @cached_property
    def params(self) -> Params:
        """The weights stacked (m, ...). Built on first use (in the adaptation's thread): a queued
        adaptation holds references to the entries, not a copy of up to `POOL` of them."""
        return {k: torch.cat([row[k] for row in self.rows]) for k in self.rows[0]}


class RegimeMemory:
    """A library per series (slot) plus one shared by all series, and the clock that orders them."""

    def __init__(self, per_series: int, shared: int, lookup: int, pool: int = POOL):
        self.per_series, self.lookup_count, self.pool = per_series, lookup, pool
        self.enabled = lookup > 0 and (per_series > 0 or shared > 0)
        self.own: dict[int, RegimeLibrary] = {}
        self.shared = RegimeLibrary(shared)
        self.source: dict[int, int] = {}   # slot -> ident of its own entry its weights came from
        self.clock = 0

    def library(self, slot: int) -> RegimeLibrary:
        lib = self.own.get(slot)
        if lib is None:
            lib = self.own[slot] = RegimeLibrary(self.per_series)
        return lib

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    def remember(self, slot: int, key: np.ndarray | None, params: Params, refit: int = -1) -> int:
        """Store a series' departing weights (rows of 1) under `key`; returns the new ident, or -1
        when nothing was stored (memory off, no key, or weights that are not finite).
        `refit`: the ident of the series' own entry these weights came from (it is replaced)."""
        if not self.enabled or key is None or not np.isfinite(key).all():
            return -1
        if not all(bool(torch.isfinite(v).all()) for v in params.values()):
            return -1
        ident = self._tick()
        rows = {k: v.detach().clone() for k, v in params.items()}
        if self.per_series > 0:
            self.library(slot).put(Entry(key.copy(), rows, ident, ident, slot), replace=refit)
        if self.shared.capacity > 0:
            self.shared.put(Entry(key.copy(), rows, ident, ident, slot))
        return ident

    def lookup(self, slot: int, key: np.ndarray | None) -> Found | None:
        """Up to `pool` remembered regimes for a drift of `slot` whose newest window is `key`:
        the series' own and other series' (shared), nearest to `key` first (newest first
        without a key)."""
        if not self.enabled:
            return None
        embedding = embed(key)[0] if key is not None else None
        own = self.library(slot).entries if self.per_series > 0 else []
        # The shared copies of this series' own entries are already in its library (if it has one).
        pool = [(e, False) for e in own] + [(e, True) for e in self.shared.entries
                                            if self.per_series <= 0 or e.owner != slot]
        if not pool:
            return None

        def distance(e: Entry) -> float:
            return _rounded(float(np.linalg.norm(e.embedding - embedding))) if embedding is not None else 0.0
        # Equal distances (to rounding): the series' own regimes first, then the newest.
        ranked = sorted(((distance(e), shared, -e.stamp, e) for e, shared in pool), key=lambda f: f[:3])
        chosen = ranked[: self.pool]
        return Found([f[3].params for f in chosen], [f[3].ident for f in chosen], [f[1] for f in chosen],
                     [f[0] for f in chosen])

    def chosen(self, slot: int, ident: int, shared: bool) -> int:
        """A remembered regime won an adaptation: mark it recently used. Returns the ident of the
        series' own entry its weights now come from (-1: none, e.g. it came from another series)."""
        stamp = self._tick()
        for lib in (self.shared, self.own.get(slot, RegimeLibrary(0))):   # no library made for a series without one
            at = lib.find(ident)
            if at >= 0:
                lib.entries[at].stamp = stamp
        return -1 if shared else ident

    def forget(self, slot: int) -> None:
        self.own.pop(slot, None)
        self.source.pop(slot, None)

    def disown(self, slot: int) -> None:
        """The slot's series is gone: its remembered regimes with it, its shared ones to no one."""
        self.forget(slot)
        for entry in self.shared.entries:
            if entry.owner == slot:
                entry.owner = -1

    def clear(self) -> None:
        """Forget every remembered regime, of every series and shared."""
        self.own.clear()
        self.source.clear()
        self.shared = RegimeLibrary(self.shared.capacity)

    def __len__(self) -> int:
        """Distinct remembered regimes (an entry in a series' library and its shared copy are one)."""
        idents = {e.ident for e in self.shared.entries}
        for lib in self.own.values():
            idents.update(e.ident for e in lib.entries)
        return len(idents)

    # -- checkpoints: every entry travels in the checkpoint of the series that stored it ---------
    def owned(self) -> dict[int, list[Entry]]:
        """The shared entries by the slot that stored them (one pass, for a whole checkpoint)."""
        out: dict[int, list[Entry]] = {}
        for e in self.shared.entries:
            out.setdefault(e.owner, []).append(e)
        return out

    def state(self, slot: int, owned: dict[int, list[Entry]] | None = None) -> dict[str, np.ndarray]:
        """`owned`: `owned()`, when checkpointing every series (else the shared library is scanned)."""
        shared = owned.get(slot, []) if owned is not None else [e for e in self.shared.entries if e.owner == slot]
        out: dict[str, np.ndarray] = {"regime_clock": np.array(self.clock, dtype=np.int64),
                                      "regime_source": np.array(self.source.get(slot, -1), dtype=np.int64)}
        for prefix, entries in (("regime", self.own.get(slot, RegimeLibrary(0)).entries),
                                ("regime_shared", shared)):
            if not entries:
                continue
            out[f"{prefix}_key"] = np.stack([e.key for e in entries])
            out[f"{prefix}_meta"] = np.array([[e.ident, e.stamp] for e in entries], dtype=np.int64)
            for k in entries[0].params:
                out[f"{prefix}_w_{k}"] = torch.cat([e.params[k] for e in entries]).numpy()
        return out

    def load(self, slot: int, arrays: dict[str, np.ndarray], names: list[str]) -> None:
        """Restore a series' entries (a checkpoint without any is fine: the series remembers nothing).
        Raises ValueError on entries that do not fit (`names`: the weights each entry must hold)."""
        clock = arrays.get("regime_clock")
        parts = {}
        for prefix in ("regime", "regime_shared"):
            if f"{prefix}_key" not in arrays:
                continue
            keys, meta = arrays[f"{prefix}_key"], arrays[f"{prefix}_meta"]
            weights = {k: torch.from_numpy(np.ascontiguousarray(arrays[f"{prefix}_w_{k}"])) for k in names}
            n = keys.shape[0]
            if meta.shape != (n, 2) or any(w.shape[0] != n for w in weights.values()) or \
                    not np.isfinite(keys).all() or not all(bool(torch.isfinite(w).all()) for w in weights.values()):
                raise ValueError(f"{prefix} entries are inconsistent or not finite")
            parts[prefix] = [Entry(keys[i].astype(np.float64), {k: w[i:i + 1].clone() for k, w in weights.items()},
                                   int(meta[i, 0]), int(meta[i, 1]), slot) for i in range(n)]
        if "regime" in parts and self.per_series > 0:
            lib = self.library(slot)
            for entry in sorted(parts["regime"], key=lambda e: e.stamp):
                lib.put(entry)
        if "regime_shared" in parts and self.shared.capacity > 0:
            for entry in sorted(parts["regime_shared"], key=lambda e: e.stamp):
                self.shared.put(entry)
        if clock is not None:
            self.clock = max(self.clock, int(clock))
        source = arrays.get("regime_source")
        if source is not None and int(source) >= 0:
            self.source[slot] = int(source)
