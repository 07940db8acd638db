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
    """x (n, a) times each series' own w (n, a, b), or one shared w (1, a, b): (n, b)."""
    if w.shape[0] == 1:
        return x @ w[0]
    return torch.bmm(x.unsqueeze(1), w).squeeze(1)


def forward(params: Params, window: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Normalised forecasts (n, H) from normalised windows (n, W) and levels (n,)."""
    n, W = window.shape
    w_x, w_h, b_x, b_h = params["w_x"], params["w_h"], params["b_x"], params["b_h"]
    hidden = w_h.shape[1]
    patches = window.reshape(n, -1, w_x.shape[1])
    # Input projections of every patch at once; only the recurrence is sequential.
    gx = (patches @ w_x[0] if w_x.shape[0] == 1 else torch.bmm(patches, w_x)) + b_x[:, None, :]
    state = window.new_zeros(n, hidden)
    h2 = 2 * hidden
    for step in range(patches.shape[1]):
        gh = _matmul(state, w_h) + b_h
        gxs = gx[:, step]
        rz = torch.sigmoid(gxs[:, :h2] + gh[:, :h2])
        candidate = torch.tanh(gxs[:, h2:] + rz[:, :hidden] * gh[:, h2:])
        state = candidate + rz[:, hidden:] * (state - candidate)
    lvl = level[:, None]
    return (_matmul(torch.cat([state, lvl], dim=1), params["head"])
            + _matmul(torch.cat([window, lvl], dim=1), params["skip"]) + params["bias"])
