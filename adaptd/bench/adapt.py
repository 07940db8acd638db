"""`adaptd bench adapt`: how long one drift adaptation (k steps) of one series takes.

Runs the configured engine on a synthetic random walk on one thread (as one adaptation
worker does), then times the adaptation job it would run on drift: restart from the
initializer, k gradient steps on the support window, compare with the current weights.
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
from ..records import Observation

TARGET_MS = 50.0


def main(settings: Settings, args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    config = online_config(settings)
    engine = OnlineEngine(config, Initializer.random(config.shape, 0, settings.adapt.step_size))
    y = np.cumsum(np.random.default_rng(0).normal(size=config.window + config.adapt_window + 50))
    for t, v in enumerate(y):
        engine.observe([Observation("s", t * 3600.0, float(v))])
    times = []
    for _ in range(args.repeats):
        job = engine._adaptation_job(engine.slots["s"])
        started = time.perf_counter()
        job()
        times.append((time.perf_counter() - started) * 1e3)
    q = statistics.quantiles(times, n=10)
    print(f"adaptd bench adapt: window {config.window}, hidden {config.hidden}, horizon {config.horizon}, "
          f"{config.adapt_steps} steps on {config.adapt_window} observations, 1 torch thread")
    print(f"one adaptation: median {statistics.median(times):.1f} ms, p90 {q[8]:.1f} ms, "
          f"min {min(times):.1f} ms over {args.repeats} runs (target <= {TARGET_MS:.0f} ms)")
    print(f"reproduce: adaptd bench adapt --repeats {args.repeats}")
    return 0
