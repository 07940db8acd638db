"""`adaptd bench adapt`: how long one drift adaptation (k steps) of one series takes.

Runs the configured engine on a synthetic random walk on one thread (as one adaptation
worker does), then times the adaptation job it would run on drift: the candidates (θ* after k
steps, θ* as is, the current weights and, with regime memory on, the best-ranked remembered
regimes after k steps) scored on the newest points. With regime memory on it is timed twice:
with nothing remembered yet, and with the libraries full (`regime_shared` regimes shared and
`regime_memory` of the series' own), the worst case of a daemon that has run for a while.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ..config import Settings
from ..engine.factory import online_config
from ..engine.learner import Initializer
from ..engine.online import OnlineEngine
from ..engine.regimes import regime_key
from ..records import Observation

TARGET_MS = 50.0


def fill_regime_memory(engine: OnlineEngine, slot: int, seed: int = 0) -> int:
    """Fill the regime libraries with distinct regimes (perturbed copies of the series' weights,
    keyed by random windows) as a long-running daemon's would be; returns how many are stored."""
    rng = np.random.default_rng(seed)
    memory, c = engine.regimes, engine.config
    current = engine.gru.rows(np.array([slot]))
    for _ in range(max(memory.shared.capacity, memory.per_series)):
        key = regime_key(np.cumsum(rng.normal(size=c.window)))
        params = {k: v + 0.05 * torch.randn_like(v) for k, v in current.items()}
        memory.remember(slot, key, params)
    return len(memory)


def time_jobs(engine: OnlineEngine, slot: int, repeats: int) -> tuple[list[float], set[str]]:
    """Milliseconds of `repeats` adaptation jobs, and the candidate kinds they scored."""
    times, kinds = [], set()
    for _ in range(repeats):
        job = engine._adaptation_job(slot)
        started = time.perf_counter()
        done = job()
        times.append((time.perf_counter() - started) * 1e3)
        if done.result is not None:
            kinds.update(done.result.losses)
    return times, kinds


def summary(times: list[float]) -> str:
    q = statistics.quantiles(times, n=10)
    return (f"median {statistics.median(times):.1f} ms, p90 {q[8]:.1f} ms, min {min(times):.1f} ms "
            f"over {len(times)} runs (target <= {TARGET_MS:.0f} ms)")


def main(settings: Settings, args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    config = online_config(settings)
    engine = OnlineEngine(config, Initializer.random(config.shape, 0, settings.adapt.step_size))
    y = np.cumsum(np.random.default_rng(0).normal(size=config.window + config.adapt_window + 50))
    for t, v in enumerate(y):
        engine.observe([Observation("s", t * 3600.0, float(v))])
    slot = engine.slots["s"]
    engine.regimes.clear()   # a drift in the warm-up may have remembered a regime already
    print(f"adaptd bench adapt: window {config.window}, hidden {config.hidden}, horizon {config.horizon}, "
          f"{config.adapt_steps} steps on {config.adapt_window} observations, 1 torch thread")
    times, kinds = time_jobs(engine, slot, args.repeats)
    print(f"one adaptation, nothing remembered ({', '.join(sorted(kinds))}): {summary(times)}")
    if engine.regimes.enabled:
        stored = fill_regime_memory(engine, slot)
        times, kinds = time_jobs(engine, slot, args.repeats)
        print(f"one adaptation, {stored} regimes remembered, the best {config.regime_lookup} fine-tuned "
              f"({', '.join(sorted(kinds))}): {summary(times)}")
    print(f"reproduce: adaptd bench adapt --repeats {args.repeats}")
    return 0
