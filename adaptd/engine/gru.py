"""The recurrent forecaster as a pure function of stacked per-series parameters.

A GRU reads the normalised window in patches (a few values per recurrent step keeps the
recurrence short and cheap); a linear head on its last state plus a linear skip path over
the window emit all H steps at once. Every tensor has a leading series dimension, so one call
serves many series, each with its own weights (a dimension of size 1 is shared by all).

>>> p = init_params(1, GRUShape(window=8, patch=2, hidden=4, horizon=3), torch.Generator().manual_seed(0))
>>> forward(p, torch.zeros(5, 8), torch.zeros(5)).shape
torch.Size([5, 3])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class GRUShape:
    window: int
    patch: int
    hidden: int
    horizon: int

    @property
    def steps(self) -> int:
        return self.window // self.patch


def init_params(n: int, shape: GRUShape, generator: torch.Generator) -> Params:
    """Glorot-style random weights for n series; the output paths start at zero (= last value)."""
    h, d, H, W = shape.hidden, shape.patch, shape.horizon, shape.window

    def uniform(*size: int, fan: int) -> torch.Tensor:
        bound = 1.0 / math.sqrt(fan)
        return (torch.rand(n, *size, generator=generator) * 2 - 1) * bound

    return {
        "w_x": uniform(d, 3 * h, fan=h),
        "w_h": uniform(h, 3 * h, fan=h),
        "b_x": uniform(3 * h, fan=h),
        "b_h": uniform(3 * h, fan=h),
        "head": torch.zeros(n, h + 1, H),   # on [last state, level]
        "skip": torch.zeros(n, W + 1, H),   # on [window, level]
        "bias": torch.zeros(n, H),
    }


def _matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (n, m, a) times each series' own w (n, a, b), or one shared w (1, a, b): (n, m, b)."""
    return x @ w[0] if w.shape[0] == 1 else torch.bmm(x, w)


def forward_many(params: Params, window: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Forecasts (n, D, H) for D windows per series: window (n, D, W), level (n, D).

    The D examples of a series share its weights as the rows of one batched matmul, so
    training on several origins per series never copies weights.
    """
    n, D, W = window.shape
    w_x, w_h, b_x, b_h = params["w_x"], params["w_h"], params["b_x"], params["b_h"]
    hidden, patch = w_h.shape[1], w_x.shape[1]
    steps = W // patch
    # Input projections of every patch at once; only the recurrence is sequential.
    gx = (_matmul(window.reshape(n, D * steps, patch), w_x) + b_x[:, None, :]).reshape(n, D, steps, -1)
    h2 = 2 * hidden
    # Split and unbind once: indexing a slice per step would make autograd add each step's
    # gradient into a zero tensor the size of all of gx (quadratic in steps; 60% of a backward).
    gx_rz, gx_c = (part.unbind(dim=2) for part in gx.split([h2, hidden], dim=3))
    state = window.new_zeros(n, D, hidden)
    b_h = b_h[:, None, :]
    for step in range(steps):
        gh_rz, gh_c = (_matmul(state, w_h) + b_h).split([h2, hidden], dim=2)
        reset, update = torch.sigmoid(gx_rz[step] + gh_rz).split([hidden, hidden], dim=2)
        candidate = torch.tanh(gx_c[step] + reset * gh_c)
        state = candidate + update * (state - candidate)
    lvl = level[..., None]
    return (_matmul(torch.cat([state, lvl], dim=2), params["head"])
            + _matmul(torch.cat([window, lvl], dim=2), params["skip"]) + params["bias"][:, None, :])


def forward(params: Params, window: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Normalised forecasts (n, H) from normalised windows (n, W) and levels (n,)."""
    if params["w_x"].shape[0] == 1:   # shared weights: all windows are rows of one matmul
        return forward_many(params, window[None], level[None])[0]
    return forward_many(params, window[:, None], level[:, None])[:, 0]


def forward_one(params: dict[str, np.ndarray], window: np.ndarray, level: float) -> np.ndarray:
    """`forward` for one series in numpy, on one series' weights (no leading dimension): the
    (H,) normalised forecast from its window (W,). For a single forecast outside the learning
    thread: torch's per-op overhead made the same computation ~40x slower (milliseconds).

    >>> p = init_params(1, GRUShape(window=8, patch=2, hidden=4, horizon=3), torch.Generator().manual_seed(0))
    >>> p["head"] += 0.5
    >>> w = torch.linspace(-1, 1, 8)
    >>> one = forward_one({k: v[0].numpy() for k, v in p.items()}, w.numpy(), 0.3)
    >>> bool(np.allclose(one, forward(p, w[None], torch.tensor([0.3]))[0].numpy(), atol=1e-6))
    True
    """
    w_x, w_h, b_x, b_h = params["w_x"], params["w_h"], params["b_x"], params["b_h"]
    hidden, patch = w_h.shape[0], w_x.shape[0]
    window = window.astype(w_x.dtype)
    gx = window.reshape(-1, patch) @ w_x + b_x
    state = np.zeros(hidden, dtype=w_x.dtype)
    for g in gx:
        gh = state @ w_h + b_h
        reset_update = 1.0 / (1.0 + np.exp(-(g[:2 * hidden] + gh[:2 * hidden])))
        candidate = np.tanh(g[2 * hidden:] + reset_update[:hidden] * gh[2 * hidden:])
        state = candidate + reset_update[hidden:] * (state - candidate)
    lvl = np.array([level], dtype=w_x.dtype)
    return (np.concatenate([state, lvl]) @ params["head"] + np.concatenate([window, lvl]) @ params["skip"]
            + params["bias"])
