"""The online engine's settings (the daemon fills them from `[model]`, `[drift]`, `[adapt]`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .gru import GRUShape
from .mixture import GATE
from .regimes import POOL


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
    mixture_gate: float = GATE   # an expert this many times worse than the best loses the anchor
    blend_memory: float = 0.0    # the anchor's blend: 0 fixed, > 0 learnt ([model] blend_memory in the daemon)
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
