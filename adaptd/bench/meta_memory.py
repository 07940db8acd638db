"""The regime-memory arms of `adaptd bench meta`: choosing among candidates as the daemon does.

At a drift the daemon (`learner.adapt`) tries several starting points and keeps the one with
the lowest loss on the newest `validation` points. Here the same choice is made for every task
at once: candidates are θ* fine-tuned k steps, θ* as it is and, with regime memory, the nearest
remembered regimes fine-tuned k steps. (The daemon also has the series' previous weights as a
candidate, and moves every other candidate `[adapt] keep` of the way back to them; tasks have
none, so neither happens here, nor in the plain arms.)

What a series remembers at a task's change is what the daemon's own engine stored while it
learnt the series' history before the change: the engine, configured as the daemon
(`[adapt] regime_*`), reads each test series from its first value up to the change, and its
regime memory is looked up with the window the daemon would use at the detection time. Nothing
after the change reaches the memory. The shared library comes from the same engine learning
other series (training series): test series never fill it, since on M4 one task's history is
the end of a series whose start is another task's future.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from ..engine.learner import Examples, Initializer, candidate_kinds, example_loss, sgd_steps, usable_losses
from ..engine.online import OnlineConfig, OnlineEngine
from ..engine.regimes import RegimeLibrary, RegimeMemory, regime_key
from ..meta.tasks import Tasks
from ..records import Observation


@dataclass
class Remembered:
    """Per task: the pool of remembered regimes, (n, P, ...), with `valid` (n, P) marking real ones."""

    params: dict[str, torch.Tensor]
    valid: torch.Tensor
    entries: np.ndarray      # (n,) how many regimes the series' own library held at its change


def shared_library(others: Sequence[np.ndarray], config: OnlineConfig, init: Initializer) -> RegimeLibrary:
    """The shared library the daemon's engine builds while it learns `others` (other series,
    never a test task's), relabelled so no test series takes its entries for its own."""
    cfg = replace(config, adapt_workers=0)
    engine = OnlineEngine(cfg, init)
    for step in range(max((len(y) for y in others), default=0)):
        engine.observe([Observation(f"o{k}", step * 3600.0, float(y[step]))
                        for k, y in enumerate(others) if step < len(y)])
    engine.close()
    library = engine.regimes.shared
    for j, entry in enumerate(library.entries):
        entry.owner = -2 - j
    return library


def remembered(test: Sequence[np.ndarray], source: np.ndarray, change: np.ndarray, tasks: Tasks,
               config: OnlineConfig, init: Initializer,
               shared: RegimeLibrary | None = None) -> dict[str, Remembered]:
    """Run the daemon's engine over every test series up to each task's change; look up what it
    remembers there: "own" its own regimes only, "shared" the `shared` library only (built from
    other series), "all" both.

    Test task j cuts `test[j]`, the series `source[j]` (tasks of one series share its engine
    slot), at change `change[j]`; `tasks.series` holds each task row's j. The lookup key is the
    newest `window` values at the task's detection time, as the engine would take it. The test
    series do not add to the shared library: one of them may be another task's future.
    """
    cfg = replace(config, adapt_workers=0, regime_shared=0)
    engine = OnlineEngine(cfg, init)
    memory = RegimeMemory(config.regime_memory, config.regime_shared, config.regime_lookup, config.regime_pool)
    alone = RegimeMemory(config.regime_memory, 0, config.regime_lookup, config.regime_pool)
    others = RegimeMemory(0, config.regime_shared, config.regime_lookup, config.regime_pool)
    if shared is not None:
        memory.shared = others.shared = shared
    rows = tasks.series                      # task row -> test task index
    sources = source[rows]
    cuts = change[rows]
    horizon = int(cuts.max()) if cuts.size else 0
    names = {int(s): f"s{int(s)}" for s in np.unique(sources)}
    series = {int(sources[i]): test[int(rows[i])] for i in range(len(rows))}
    pools: dict[str, list[dict[str, torch.Tensor] | None]] = {name: [None] * len(rows)
                                                              for name in ("own", "shared", "all")}
    entries = np.zeros(len(rows), dtype=np.int64)
    stop = {s: int(cuts[sources == s].max()) for s in names}   # the latest change each series needs
    due: dict[int, list[int]] = {}
    for i, c in enumerate(cuts):
        due.setdefault(int(c), []).append(i)
    for step in range(horizon + 1):
        for i in due.get(step, []):           # the engine has learnt values before the change only
            src, t = int(sources[i]), int(tasks.time[i])
            slot = engine.slots.get(names[src])
            if slot is None:
                continue
            if engine.regimes.enabled:
                memory.own[slot] = alone.own[slot] = engine.regimes.library(slot)
            entries[i] = len(memory.library(slot))
            key = regime_key(series[src][t - cfg.window + 1:t + 1])
            for name, lookup in (("own", alone), ("shared", others), ("all", memory)):
                found = lookup.lookup(slot, key)
                pools[name][i] = found.params if found is not None else None
        if step == horizon:
            break
        batch = [Observation(names[s], step * 3600.0, float(series[s][step])) for s in names if step < stop[s]]
        if batch:
            engine.observe(batch)
    engine.close()
    return {name: _stack(found, init, entries) for name, found in pools.items()}


def _stack(pools: list[dict[str, torch.Tensor] | None], init: Initializer, entries: np.ndarray) -> Remembered:
    width = max([next(iter(p.values())).shape[0] for p in pools if p is not None], default=1)
    params = {k: torch.zeros(len(pools), width, *v.shape[1:]) for k, v in init.params.items()}
    valid = torch.zeros(len(pools), width, dtype=torch.bool)
    for i, pool in enumerate(pools):
        if pool is not None:
            n = next(iter(pool.values())).shape[0]
            for k, v in pool.items():
                params[k][i, :n] = v
            valid[i, :n] = True
    return Remembered(params, valid, entries)


def _rows(ex: Examples, c: int) -> Examples:
    """Task examples (n, ...) repeated for c candidates each: (n * c, ...), candidate-minor."""
    def rep(t: torch.Tensor) -> torch.Tensor:
        return t[:, None].expand(t.shape[0], c, *t.shape[1:]).reshape(t.shape[0] * c, *t.shape[1:])
    return Examples(rep(ex.window), rep(ex.level), rep(ex.target), rep(ex.mask))


def newest_origins(ex: Examples, origins: int) -> Examples:
    """Task examples (origins oldest first) of the newest `origins` origins only."""
    return Examples(ex.window[:, -origins:], ex.level[:, -origins:], ex.target[:, -origins:], ex.mask[:, -origins:])


def _preselect(memory: Remembered, recent: Examples, lookup: int) -> Remembered:
    """Per task, the `lookup` pool entries that forecast `recent` best (learner.preselect)."""
    n, P = memory.valid.shape
    flat = {k: v.reshape(n * P, *v.shape[2:]) for k, v in memory.params.items()}
    with torch.no_grad():
        loss = example_loss(flat, _rows(recent, P)).double().reshape(n, P)
    loss = torch.where(torch.isfinite(loss) & memory.valid, loss, torch.full_like(loss, float("inf")))
    keep = torch.argsort(loss, dim=1, stable=True)[:, :lookup]
    take = torch.arange(n)[:, None]
    return Remembered({k: v[take, keep] for k, v in memory.params.items()}, memory.valid[take, keep], memory.entries)


def chosen_losses(init: Initializer, tasks: Tasks, steps: int, clip: float, memory: Remembered | None = None,
                  lookup: int = 0, recent: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Per task: the query MSE of the candidate with the lowest loss on the newest points, and
    which kind won (finetuned, init or memory), exactly as `learner.adapt` decides; of a pool of
    remembered regimes the `lookup` that forecast the support's `recent` newest origins best compete."""
    assert tasks.valid is not None, "tasks cut without validation points"
    n = len(tasks)
    if memory is not None and 0 < lookup < memory.valid.shape[1]:
        memory = _preselect(memory, newest_origins(tasks.support, recent), lookup)
    m = memory.valid.shape[1] if memory is not None else 0
    starts = {k: torch.cat([v.expand(n, 1, *v.shape[1:])] + ([memory.params[k].to(v.dtype)] if m else []), dim=1)
              for k, v in init.params.items()}                               # (n, 1 + m, ...)
    flat = {k: v.reshape(n * (1 + m), *v.shape[2:]).clone() for k, v in starts.items()}
    tuned = sgd_steps(flat, _rows(tasks.support, 1 + m), steps, init.step_sizes, clip)[0] if steps > 0 else flat
    tuned = {k: v.reshape(n, 1 + m, *v.shape[1:]) for k, v in tuned.items()}
    kinds = candidate_kinds(steps, m, previous=False)   # tasks have no previous weights
    rows = {k: torch.cat(([tuned[k][:, :1]] if steps > 0 else []) + [starts[k][:, :1], tuned[k][:, 1:]], dim=1)
            for k in init.params}
    c = len(kinds)
    ok = torch.ones(n, c, dtype=torch.bool)
    if m:
        ok[:, c - m:] = memory.valid
    flat_rows = {k: v.reshape(n * c, *v.shape[2:]) for k, v in rows.items()}
    with torch.no_grad():
        loss = example_loss(flat_rows, _rows(tasks.valid, c)).double().reshape(n, c)
        loss, _ = usable_losses(torch.where(ok, loss, torch.full_like(loss, float("inf"))), flat_rows)
        best = torch.argmin(loss, dim=1)
        pick = {k: v[torch.arange(n), best] for k, v in rows.items()}
        query = example_loss(pick, tasks.query).double().numpy()
    return query, np.array([kinds[int(b)] for b in best])
