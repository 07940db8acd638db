"""Meta-training θ* and its per-tensor step sizes: first-order Meta-SGD, or Reptile.

The inner loop is `sgd_steps`/`sgd_step`, the very function the daemon runs at drift time,
with the same k, clip and step sizes, so what is meta-trained is what is deployed. Tasks are
rows of one batched computation (each task its own copy of the weights), which gives every
task its own gradient in one backward pass.

First-order Meta-SGD (Li et al. 2017, first-order as in Nichol et al. 2018): after each inner
step j the query gradient g_Q(φ_j) is taken as the gradient for θ (dφ_j/dθ ≈ I), and for the
log step size of tensor t, dL_Q(φ_j)/d log α_t = -α_t <g_Q,t(φ_j), Σ_{i<j} g_S,t(φ_i)>, exactly
for the given support gradients. The meta-loss is the query loss averaged over the tasks of a
batch and over the inner steps 1..k. Reptile moves θ toward the adapted weights instead; its
direction θ - φ_k = Σ_j α_t g_S,t(φ_j) is taken per unit of step size and step (the mean clipped
support gradient along the inner path): a gradient's order of magnitude, like Meta-SGD's
(which is the unclipped query gradient, so the two are alike in size, not in meaning).

The daemon also forecasts a new series from θ* as it is, from a few observations on (the
engine's cold start, its window padded with the last value). With `cold_start_weight` > 0 each
iteration adds the gradient of that share of θ's loss on a batch of such young windows, in units
of each series' spread (tasks.sample_cold_starts), to θ's update direction (either
algorithm's; one weight pulls both about alike): θ* is then not only a good place to
fine-tune from but also a safe forecaster for a series it has barely seen.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..config import MetaSettings as MetaConfig
from ..engine.learner import Examples, Initializer, example_loss, sgd_step, sgd_steps
from ..engine.online import OnlineConfig
from .tasks import SeriesPool, Tasks, sample_cold_starts, sample_tasks, with_splices

ALGORITHMS = ("meta_sgd", "reptile")
MIN_STEP, MAX_STEP = 1e-4, 1.0   # learned step sizes stay in a range that cannot blow up


@dataclass(frozen=True)
class MetaSettings:
    """What one meta-training run needs of `[meta]`; the defaults are the config's."""

    algorithm: str = MetaConfig.algorithm
    iterations: int = MetaConfig.iterations
    meta_batch: int = MetaConfig.meta_batch
    outer_rate: float = MetaConfig.outer_rate
    query: int = MetaConfig.query
    seed: int = 0
    # Adam step of the log step sizes. They need their own: at the weights' 1e-3 they could move
    # by at most a factor e^0.3 in 300 iterations, i.e. stayed where they started.
    step_rate: float = MetaConfig.step_rate
    cold_start_weight: float = MetaConfig.cold_start_weight
    splices: float = MetaConfig.splices

    @classmethod
    def of(cls, meta: MetaConfig, seed: int = 0, algorithm: str | None = None,
           iterations: int | None = None) -> MetaSettings:
        """The settings of `[meta]` in config, with the command line's overrides."""
        return cls(algorithm=algorithm or meta.algorithm, iterations=iterations or meta.iterations,
                   meta_batch=meta.meta_batch, outer_rate=meta.outer_rate, query=meta.query, seed=seed,
                   step_rate=meta.step_rate, cold_start_weight=meta.cold_start_weight, splices=meta.splices)


@dataclass
class Progress:
    iteration: int
    iterations: int
    loss: float            # mean meta-loss of the batch
    tasks_per_second: float
    seconds: float

    @property
    def eta(self) -> float:
        done = max(self.iteration, 1)
        return self.seconds / done * (self.iterations - self.iteration)


@dataclass
class MetaResult:
    init: Initializer
    history: list[float] = field(default_factory=list)   # meta-loss per iteration
    seconds: float = 0.0


def _rows(params: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {k: v.expand(n, *v.shape[1:]).clone() for k, v in params.items()}


def _query_grads(params: dict[str, torch.Tensor], query: Examples) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss = example_loss(leaves, query)
    grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
    return loss.detach(), {k: torch.nan_to_num(g) for k, g in zip(leaves, grads)}


def post_adaptation_loss(init: Initializer, tasks: Tasks, steps: int, clip: float = 1.0) -> np.ndarray:
    """Per-task query MSE after the daemon's adaptation from `init` (k steps on the support)."""
    start = _rows(init.params, len(tasks))
    adapted, _ = sgd_steps(start, tasks.support, steps, init.step_sizes, clip) if steps else (start, None)
    with torch.no_grad():
        return example_loss(adapted, tasks.query).double().numpy()


def validation_score(init: Initializer, tasks: Tasks, steps: int, clip: float = 1.0) -> float:
    """Mean post-adaptation query MSE over the tasks that score anything: a task whose query the
    series' next change cuts to nothing has loss 0, which says nothing about `init`."""
    scored = (tasks.query.mask.reshape(len(tasks), -1).sum(dim=1) > 0).numpy()
    if not scored.any():
        return float("nan")
    return float(np.mean(post_adaptation_loss(init, tasks, steps, clip)[scored]))


def cold_start_share(weight: float, config: OnlineConfig) -> float:
    """The cold-start weight in effect: none when the engine forecasts full windows only
    (`cold_start` 0), where there are no young windows to learn from."""
    return weight if config.serving < config.window else 0.0


def cold_start_loss(init: Initializer, young: Examples, weights: np.ndarray) -> float:
    """θ's mean loss on young windows as is (a cold start is not fine-tuned), each weighted into
    units of its series' spread (tasks.sample_cold_starts)."""
    with torch.no_grad():
        return float(_young_loss(init.params, young, torch.from_numpy(weights)))


def _young_loss(theta: dict[str, torch.Tensor], young: Examples, weights: torch.Tensor) -> torch.Tensor:
    rows = {k: v.expand(young.window.shape[0], *v.shape[1:]) for k, v in theta.items()}
    return (weights.to(torch.float32) * example_loss(rows, young)).mean()


def meta_train(start: Initializer, pool: SeriesPool, settings: MetaSettings, config: OnlineConfig,
               progress: Callable[[Progress], None] | None = None) -> MetaResult:
    if settings.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown meta-learning algorithm {settings.algorithm!r} (one of {ALGORITHMS})")
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    k, clip, B = config.adapt_steps, config.clip, settings.meta_batch
    theta = {name: v.detach().clone().requires_grad_(True) for name, v in start.params.items()}
    log_alpha = {name: torch.tensor(math.log(min(max(a, MIN_STEP), MAX_STEP)), dtype=torch.float64,
                                    requires_grad=True) for name, a in start.step_sizes.items()}
    learn_alpha = settings.algorithm == "meta_sgd" and k > 0
    cold_weight = cold_start_share(settings.cold_start_weight, config)
    groups = [{"params": list(theta.values()), "lr": settings.outer_rate}]
    if learn_alpha:
        groups.append({"params": list(log_alpha.values()), "lr": settings.step_rate})
    optimizer = torch.optim.Adam(groups)
    history: list[float] = []
    started = time.perf_counter()
    drifts = with_splices(pool, settings.splices, settings.query, rng)   # cold starts: from the series as they are
    for iteration in range(1, settings.iterations + 1):
        tasks = sample_tasks(drifts, B, settings.query, rng)
        alpha = {name: float(v.detach().exp()) for name, v in log_alpha.items()}
        if settings.algorithm == "reptile":
            loss = _reptile_gradients(theta, alpha, tasks, max(k, 1), clip)
        else:
            loss = _meta_sgd_gradients(theta, log_alpha, alpha, tasks, k, clip, learn_alpha)
        if cold_weight > 0:
            young, spread_units = sample_cold_starts(pool, B, config.serving, rng)
            _add_cold_start_gradients(theta, young, torch.from_numpy(cold_weight * spread_units))
        grads = [v.grad for v in (*theta.values(), *log_alpha.values()) if v.grad is not None]
        if not math.isfinite(loss) or not all(bool(torch.isfinite(g).all()) for g in grads):
            optimizer.zero_grad()   # a batch that blew up teaches nothing; skip it (still progress)
        else:
            torch.nn.utils.clip_grad_norm_(theta.values(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad():
                for v in log_alpha.values():
                    v.clamp_(math.log(MIN_STEP), math.log(MAX_STEP))
            history.append(loss)
        if progress is not None:
            seconds = time.perf_counter() - started
            progress(Progress(iteration, settings.iterations, loss, iteration * B / seconds, seconds))
    params = {name: v.detach().clone() for name, v in theta.items()}
    step_sizes = ({name: float(v.detach().exp()) for name, v in log_alpha.items()} if learn_alpha
                  else dict(start.step_sizes))
    meta = {"algorithm": settings.algorithm, "iterations": settings.iterations, "meta_batch": B,
            "query": settings.query, "steps": k, "outer_rate": settings.outer_rate, "seed": settings.seed}
    if learn_alpha:
        meta["step_rate"] = settings.step_rate
    if cold_weight > 0:
        meta["cold_start_weight"] = cold_weight
    if drifts is not pool:
        meta["splices"] = settings.splices
    return MetaResult(Initializer(params, step_sizes, "meta", meta=meta), history, time.perf_counter() - started)


def _add_cold_start_gradients(theta: dict[str, torch.Tensor], young: Examples, weights: torch.Tensor) -> None:
    """Add the gradient of θ's weighted mean loss on the young windows (no adaptation) to .grad."""
    grads = torch.autograd.grad(_young_loss(theta, young, weights), list(theta.values()))
    for value, g in zip(theta.values(), grads):
        g = torch.nan_to_num(g)
        value.grad = g if value.grad is None else value.grad + g


def _reptile_gradients(theta: dict[str, torch.Tensor], alpha: dict[str, float], tasks: Tasks, steps: int,
                       clip: float) -> float:
    """Set .grad of θ to Reptile's direction per unit of step size and step, (θ - φ_k) / (k α_t)
    averaged over tasks: the mean clipped support gradient along the inner path. Returns the
    query loss after adaptation (reported, not trained on)."""
    B = len(tasks)
    phi = _rows(theta, B)
    walked = {name: torch.zeros_like(v) for name, v in theta.items()}
    for _ in range(steps):
        phi, _, applied = sgd_step(phi, tasks.support, alpha, clip)
        for name in walked:
            walked[name] += applied[name].sum(dim=0, keepdim=True) / (B * steps)
    for name, value in theta.items():
        value.grad = walked[name]
    with torch.no_grad():
        return float(example_loss(phi, tasks.query).mean())


def _meta_sgd_gradients(theta: dict[str, torch.Tensor], log_alpha: dict[str, torch.Tensor],
                        alpha: dict[str, float], tasks: Tasks, k: int, clip: float, learn_alpha: bool) -> float:
    """Set .grad of θ and log α to the first-order meta-gradient; returns the meta-loss."""
    B = len(tasks)
    phi = _rows(theta, B)
    travelled = {name: torch.zeros_like(v) for name, v in phi.items()}   # Σ_{i<j} g_S(φ_i), per task
    grad_theta = {name: torch.zeros_like(v) for name, v in theta.items()}
    grad_alpha = dict.fromkeys(log_alpha, 0.0)
    losses = []
    for _ in range(max(k, 1)):
        if k > 0:
            phi, _, applied = sgd_step(phi, tasks.support, alpha, clip)
            for name in travelled:
                travelled[name] += applied[name]
        loss, g_query = _query_grads(phi, tasks.query)
        losses.append(loss.mean())
        for name, g in g_query.items():
            grad_theta[name] += g.sum(dim=0, keepdim=True) / (B * max(k, 1))
            if learn_alpha:
                grad_alpha[name] += -alpha[name] * float((g * travelled[name]).sum()) / (B * k)
    for name, value in theta.items():
        value.grad = grad_theta[name]
    for name, value in log_alpha.items():
        value.grad = torch.tensor(grad_alpha[name], dtype=torch.float64) if learn_alpha else None
    return float(torch.stack(losses).mean())
