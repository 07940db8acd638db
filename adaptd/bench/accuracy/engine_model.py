"""adaptd's own rows in the accuracy benchmark: the daemon's OnlineEngine behind the
benchmark's OnlineModel protocol (same code as `adaptd serve` and `adaptd replay`).

The model shape follows the data's seasonal period (a rule, not a fit to scored rows): the
window covers 64 hours of hourly data, one day of 15-minute data; RLS reads the whole window.
The initializer is fitted on the warm-up rows only: pretrained, meta-trained (see
`adaptd.meta.fit`) or random, one row each, so `[adapt] init` is compared on identical data.
The `adaptd-init-*` rows start every series from their initializer as well, so they differ
everywhere; the `adaptd-adapt-from-*` rows start every series from the configured initializer
and change only what adaptations use, as that `[adapt] init` would in the daemon: the weights
they start from and the step sizes every fine-tuned candidate (θ*, remembered regimes) takes.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np
import torch

from ...config import Settings, load_config
from ...engine.factory import online_config
from ...engine.learner import Initializer
from ...engine.online import OnlineEngine
from ...meta.fit import initializer_for
from ...meta.train import Progress
from ...records import Observation
from .runner import BenchContext, ModelSpec

T0 = 1_600_000_000.0


def shape_for(period: int) -> dict[str, int]:
    """At least a day and a bit (64 hourly steps), at most 96 steps; RLS reads the whole window."""
    window = min(96, max(64, period))
    return {"window": window, "patch": 8, "rls_lags": window - 1}


class EngineModel:
    def __init__(self, name: str, context: BenchContext, settings: Settings, adapt: bool, init: str, seed: int = 0,
                 adapt_from: str | None = None):
        self.name = name
        self.context = context
        self.seed = seed
        self.init_kind = init
        self.adapt_from = adapt_from   # None: adaptations start from `init` too
        self.adapt_init: Initializer | None = None
        self.settings = settings
        config = online_config(settings, context.horizon, seed)
        self.config = dataclasses.replace(config, adapt=adapt, adapt_workers=0, **shape_for(context.period))
        self.engine: OnlineEngine | None = None
        self.t = 0

    def fit_warmup(self, Y: np.ndarray) -> None:
        torch.manual_seed(self.seed)
        torch.set_num_threads(1)
        series = [Y[:, s][np.isfinite(Y[:, s])] for s in range(Y.shape[1])]
        init = initializer_for(self.init_kind, self.config, series, self.settings.meta, self.seed,
                               self.settings.adapt.step_size, progress=self._progress)
        self.engine = OnlineEngine(self.config, init)
        self.extra = {"init": init.kind, **({"init_validation": init.meta["validation"]}
                                            if "validation" in init.meta else {})}
        if self.adapt_from is not None:
            self.adapt_init = initializer_for(self.adapt_from, self.config, series, self.settings.meta, self.seed,
                                              self.settings.adapt.step_size, progress=self._progress)
            self.extra["adapt_from"] = self.adapt_init.kind

    def _progress(self, p: Progress) -> None:
        if p.iteration % max(1, p.iterations // 10) == 0 or p.iteration == p.iterations:
            print(f"  {self.name}: meta-training on the warm-up rows, iteration {p.iteration}/{p.iterations}, "
                  f"loss {p.loss:.4f}, {p.tasks_per_second:.0f} tasks/s, ETA {p.eta:.0f} s",
                  file=sys.stderr, flush=True)

    def observe(self, y: np.ndarray) -> None:
        assert self.engine is not None, "fit_warmup first"
        ts = T0 + self.t * self.context.step_seconds
        self.engine.observe([Observation(name, ts, float(v))
                             for name, v in zip(self.context.channels, y) if np.isfinite(v)])
        self.t += 1
        if self.adapt_init is not None and len(self.engine.names) == len(self.context.channels):
            self.engine.set_initializer(self.adapt_init)   # every series started from `init`; now only adaptations
            self.adapt_init = None

    def forecast(self, horizon: int) -> np.ndarray:
        assert self.engine is not None
        return np.array([[p.value for p in self.engine.forecast(name, horizon).points]
                         for name in self.context.channels])

    def stats(self) -> dict[str, Any]:
        return self.engine.stats() if self.engine else {}

    def drift_rows(self) -> list[tuple[int, int]]:
        """(channel, row) of every change the engine detected: the row it fired on."""
        assert self.engine is not None
        channel = {name: i for i, name in enumerate(self.context.channels)}
        return [(channel[e.series], round((e.ts - T0) / self.context.step_seconds))
                for e in self.engine.drift_events]


def engine_specs(settings: Settings | None = None) -> list[ModelSpec]:
    s = settings or load_config(None)
    return [
        ModelSpec("adaptd", lambda c: EngineModel("adaptd", c, s, adapt=True, init=s.adapt.init),
                  "adaptd's online engine as configured (drift adaptation on)"),
        ModelSpec("adaptd-no-adapt", lambda c: EngineModel("adaptd-no-adapt", c, s, adapt=False, init=s.adapt.init),
                  "the same engine with drift-triggered adaptation off"),
        *(ModelSpec(f"adaptd-init-{kind}", lambda c, kind=kind: EngineModel(f"adaptd-init-{kind}", c, s, True, kind),
                    f"adaptd with [adapt] init = \"{kind}\" (fitted on the warm-up rows)")
          for kind in ("meta", "pretrained", "random") if kind != s.adapt.init),
        *(ModelSpec(f"adaptd-adapt-from-{kind}",
                    lambda c, kind=kind: EngineModel(f"adaptd-adapt-from-{kind}", c, s, True, s.adapt.init,
                                                     adapt_from=kind),
                    f"adaptd whose series start from [adapt] init = \"{s.adapt.init}\" and adapt from \"{kind}\"")
          for kind in ("meta", "pretrained", "random") if kind != s.adapt.init),
    ]
