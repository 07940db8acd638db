"""Training the recurrent forecaster: per-series online SGD, adaptation, global pretraining.

Per-series weights live stacked in one tensor per parameter (`StackedGRU`), so the online
update of every series that saw a new observation is one batched step. Adaptation and
pretraining are pure functions of tensors, which the meta-learner reuses.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from .gru import GRUShape, Params, forward, forward_many, forward_one, init_params
from .telemetry import CANDIDATES

FINETUNED, INIT, MEMORY, PREVIOUS = CANDIDATES

log = logging.getLogger(__name__)

INIT_KINDS = ("meta", "pretrained", "random")
_thread_settings = threading.local()


def use_torch_threads(n: int) -> None:
    """Run this OS thread's torch ops on `n` threads. The setting is per thread: a new thread
    starts with torch's default (every core) whatever the main thread chose, and on two busy
    cores that made the learning thread ~19x slower than the same work in the main thread."""
    if getattr(_thread_settings, "torch_threads", None) != n:
        torch.set_num_threads(n)
        _thread_settings.torch_threads = n


@dataclass
class Initializer:
    """Where a series (re)starts: θ* (leading dimension 1) and per-tensor inner-loop step sizes."""

    params: Params
    step_sizes: dict[str, float]
    kind: str                      # meta | pretrained | random
    version: int | None = None
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Its version in the store, "packaged" for the one shipped with adaptd, "0" for random."""
        return str(self.version) if self.version is not None else str(self.meta.get("source", "0"))

    @classmethod
    def random(cls, shape: GRUShape, seed: int, step_size: float) -> "Initializer":
        generator = torch.Generator().manual_seed(seed)
        params = init_params(1, shape, generator)
        return cls(params, {name: step_size for name in params}, "random")


@dataclass(frozen=True)
class Examples:
    """Training examples of n series x D origins: inputs, targets and which leads are known."""

    window: torch.Tensor   # (n, D, W)
    level: torch.Tensor    # (n, D)
    target: torch.Tensor   # (n, D, H)
    mask: torch.Tensor     # (n, D, H), 1 where the target was observed (and may be used)

    @classmethod
    def from_numpy(cls, window: np.ndarray, level: np.ndarray, target: np.ndarray, mask: np.ndarray) -> "Examples":
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        return cls(t(np.nan_to_num(window)), t(np.nan_to_num(level)), t(np.nan_to_num(target)), t(mask))


def example_loss(params: Params, ex: Examples) -> torch.Tensor:
    """(n,) masked MSE per series; weights have one row per series (n, ...) or one shared (1, ...)."""
    n, D, W = ex.window.shape
    if next(iter(params.values())).shape[0] == 1 and n > 1:   # shared weights: one series of n*D rows
        pred = forward_many(params, ex.window.reshape(1, n * D, W), ex.level.reshape(1, n * D)).reshape(n, D, -1)
    else:
        pred = forward_many(params, ex.window, ex.level)
    err = torch.where(ex.mask > 0, pred - ex.target, torch.zeros_like(pred))
    return (err * err).reshape(n, -1).sum(dim=1) / ex.mask.reshape(n, -1).sum(dim=1).clamp(min=1)


def sgd_step(params: Params, ex: Examples, step_sizes: dict[str, float],
             clip: float = 1.0) -> tuple[Params, torch.Tensor, Params]:
    """One plain SGD step of every series on its own examples: (params, losses before the step,
    the clipped gradient that was applied per tensor, without its step size).

    Each series' gradient is clipped to norm `clip`; a series whose loss or gradient is not
    finite keeps its weights (the step is rolled back for it alone).
    """
    n = ex.window.shape[0]
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss = example_loss(leaves, ex)
    grads = torch.autograd.grad(loss.sum(), list(leaves.values()), allow_unused=True)
    with torch.no_grad():
        flat = [g.reshape(n, -1) if g is not None else torch.zeros(n, 1) for g in grads]
        norm = torch.sqrt(sum((g * g).sum(dim=1) for g in flat))
        ok = torch.isfinite(loss) & torch.isfinite(norm)
        scale = torch.where(ok, clip / torch.clamp(norm, min=clip), torch.zeros_like(norm))
        updated, applied = {}, {}
        for (name, value), grad in zip(leaves.items(), grads):
            if grad is None:
                grad = torch.zeros_like(value)
            applied[name] = scale.reshape((n,) + (1,) * (grad.dim() - 1)) * torch.nan_to_num(grad)
            updated[name] = (value - step_sizes[name] * applied[name]).detach()
    return updated, loss.detach(), applied


def sgd_steps(params: Params, ex: Examples, steps: int, step_sizes: dict[str, float],
              clip: float = 1.0) -> tuple[Params, torch.Tensor]:
    """`steps` SGD steps (`sgd_step`) of every series on its own examples; returns (params, last losses).

    This is the inner loop: of online learning, of adaptation at drift time and of meta-training.
    """
    current = {k: v.detach().clone() for k, v in params.items()}
    loss = torch.full((ex.window.shape[0],), float("nan"))
    for _ in range(steps):
        current, loss, _ = sgd_step(current, ex, step_sizes, clip)
    return current, loss


class StackedGRU:
    """The recurrent weights of every series, one row per slot."""

    def __init__(self, shape: GRUShape):
        self.shape = shape
        self.params: Params = {}

    @property
    def capacity(self) -> int:
        return next(iter(self.params.values())).shape[0] if self.params else 0

    def resize(self, capacity: int, init: Initializer) -> None:
        old = self.capacity
        if capacity <= old:
            return
        grown = {k: v.expand(capacity, *v.shape[1:]).clone() for k, v in init.params.items()}
        for k, v in self.params.items():
            grown[k][:old] = v
        self.params = grown

    def load(self, slots: np.ndarray, source: Params) -> None:
        """Set these slots' weights from `source` (rows per slot, or one shared row)."""
        index = torch.from_numpy(np.asarray(slots, dtype=np.int64))
        for k, v in source.items():
            self.params[k][index] = v.to(self.params[k].dtype)

    def rows(self, slots: np.ndarray) -> Params:
        index = torch.from_numpy(np.asarray(slots, dtype=np.int64))
        return {k: v[index] for k, v in self.params.items()}

    @torch.no_grad()
    def predict(self, slots: np.ndarray, window: np.ndarray, level: np.ndarray) -> np.ndarray:
        out = forward(self.rows(slots), torch.from_numpy(window.astype(np.float32)),
                      torch.from_numpy(level.astype(np.float32)))
        return out.double().numpy()

    def predict_one(self, slot: int, window: np.ndarray, level: float) -> np.ndarray:
        """`predict` of one series, computed in numpy (see gru.forward_one)."""
        with np.errstate(over="ignore", invalid="ignore"):   # overflow is caught as non-finite by the caller
            return forward_one({k: v[slot].numpy() for k, v in self.params.items()}, window, level).astype(np.float64)

    def stepped(self, slots: np.ndarray, ex: Examples, step_sizes: dict[str, float], clip: float) -> Params:
        """These slots' weights after one SGD step on `ex` (not stored: `load` them)."""
        return sgd_steps(self.rows(slots), ex, 1, step_sizes, clip)[0]


@dataclass
class AdaptResult:
    """The outcome of one adaptation: the weights to use and which candidate they are."""

    params: Params                 # one row: the winner's weights
    winner: str                    # one of CANDIDATES
    losses: dict[str, float]       # validation loss of the best candidate of each kind (absent: none)
    remembered: int = -1           # which of the `memory` rows won (-1: none did)

    @property
    def replaced(self) -> bool:
        """Whether the series now uses new weights (False: it keeps the previous ones)."""
        return self.winner != PREVIOUS


def _repeat(ex: Examples, n: int) -> Examples:
    """The examples of one series as the examples of n candidates (views, no copies)."""
    return Examples(*(t.expand(n, *t.shape[1:]) for t in (ex.window, ex.level, ex.target, ex.mask)))


def candidate_kinds(steps: int, remembered: int, previous: bool = True) -> list[str]:
    """The candidates of an adaptation, in the order that wins ties (CANDIDATES): θ* fine-tuned
    (when there are steps), θ* as is, `remembered` regimes, and the weights the series has."""
    return ([FINETUNED] if steps > 0 else []) + [INIT] + [MEMORY] * remembered + ([PREVIOUS] if previous else [])


def usable_losses(loss: torch.Tensor, rows: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses with +inf for candidates that cannot win, which can): a candidate whose loss or
    weights are not finite never wins. `rows` hold one candidate per element of `loss`, in order."""
    finite = torch.isfinite(loss)
    for v in rows.values():
        finite &= torch.isfinite(v.reshape(*loss.shape, -1)).all(dim=-1)
    return torch.where(finite, loss, torch.full_like(loss, float("inf"))), finite


def preselect(memory: Params, recent: Examples, count: int) -> torch.Tensor:
    """Indices of the `count` remembered regimes (rows of `memory`) that forecast `recent` best,
    best first (equal losses: row order); one whose loss is not finite comes last."""
    rows = next(iter(memory.values())).shape[0]
    if recent.window.shape[1] == 0:   # no origin with a known target: nothing to rank on, keep row order
        return torch.arange(min(count, rows))
    with torch.no_grad():
        loss = example_loss(memory, _repeat(recent, rows)).double()
    loss = torch.where(torch.isfinite(loss), loss, torch.full_like(loss, float("inf")))
    return torch.argsort(loss, stable=True)[:count]


def adapt(init: Initializer, current: Params, train: Examples, valid: Examples, steps: int,
          clip: float = 1.0, memory: Params | None = None, lookup: int = 0,
          recent: Examples | None = None, keep: float = 0.0) -> AdaptResult:
    """Restart one series: the candidates are θ* fine-tuned `steps` steps on `train`, θ* as it
    is, remembered regimes fine-tuned the same way, and the current weights; the lowest loss on
    `valid` (the newest points) wins, ties in CANDIDATES order.

    `memory` holds remembered regimes as rows; when there are more than `lookup` (> 0), only the
    `lookup` that forecast `recent` best (the newest training examples; not `valid`) compete.
    `keep` (in [0, 1)): every new candidate is moved back toward the current weights by that share
    before it is scored (0: the candidates as they are).
    All fine-tuning runs as one batch of rows and all candidates are scored in one forward.
    A candidate with non-finite weights or loss never wins. `remembered` in the result indexes
    the rows of `memory`.
    """
    pool = torch.arange(next(iter(memory.values())).shape[0]) if memory else torch.zeros(0, dtype=torch.long)
    if memory and 0 < lookup < pool.numel():
        pool = preselect(memory, recent if recent is not None else train, lookup)
        memory = {k: v[pool] for k, v in memory.items()}
    m = pool.numel()
    starts = {k: torch.cat([v, memory[k].to(v.dtype)]) if m else v.clone() for k, v in init.params.items()}
    tuned = sgd_steps(starts, _repeat(train, 1 + m), steps, init.step_sizes, clip)[0] if steps > 0 else starts
    kinds = candidate_kinds(steps, m)
    rows = {k: torch.cat(([tuned[k][:1]] if steps > 0 else []) + [init.params[k], tuned[k][1:], current[k]])
            for k in init.params}
    if keep > 0:
        rows = {k: torch.cat([(1 - keep) * v[:-1] + keep * v[-1:], v[-1:]]) for k, v in rows.items()}
    with torch.no_grad():
        loss, finite = usable_losses(example_loss(rows, _repeat(valid, len(kinds))).double(), rows)
    best = int(torch.argmin(loss))          # the first of equal minima: CANDIDATES order
    if not bool(finite[best]):              # nothing finite: keep what the series has
        best = len(kinds) - 1
    losses: dict[str, float] = {}
    for i, kind in enumerate(kinds):
        value = float(loss[i]) if bool(finite[i]) else float("nan")
        if kind not in losses or value < losses[kind] or np.isnan(losses[kind]):
            losses[kind] = value
    winner = kinds[best]
    remembered = int(pool[best - kinds.index(MEMORY)]) if winner == MEMORY else -1
    return AdaptResult({k: v[best:best + 1].clone() for k, v in rows.items()}, winner, losses, remembered)


def pretrain(init: Initializer, ex: Examples, epochs: int, batch: int, seed: int,
             lr: float = 3e-3) -> Initializer:
    """One set of weights for all series, fitted with Adam on pooled examples, shaped (N, 1, ...)."""
    params = {k: v.clone().requires_grad_(True) for k, v in init.params.items()}
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    n = ex.window.shape[0]
    for _epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            # The pooled examples of a minibatch act as one "series" with shared weights.
            sub = Examples(ex.window[idx].transpose(0, 1), ex.level[idx].transpose(0, 1),
                           ex.target[idx].transpose(0, 1), ex.mask[idx].transpose(0, 1))
            loss = example_loss(params, sub).mean()
            if not torch.isfinite(loss):
                continue
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
            optimizer.step()
    trained = {k: v.detach().clone() for k, v in params.items()}
    return Initializer(trained, dict(init.step_sizes), "pretrained", meta={"epochs": epochs, "examples": n})
