"""The score initializers are compared on: promotion in the daemon (`job.run`) and the choice
of θ* for replay and the accuracy benchmark (`fit.initializer_for`) use this one score.

It is what training optimises: the post-adaptation query MSE on validation tasks, plus `[meta]
cold_start_weight` times the MSE of θ* as is on cold starts cut from the same validation rows
(in units of each series' spread). An initializer that adapts better after drifts but forecasts
new series worse does not win on the first alone. Tasks and cold starts are drawn with fixed
seeds, so every initializer is scored on identical ones.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..config import MetaSettings as MetaConfig
from ..engine.learner import Examples, Initializer
from ..engine.online import OnlineConfig
from .tasks import SeriesPool, Tasks, sample_cold_starts, sample_tasks, with_splices
from .train import cold_start_loss, cold_start_share, validation_score

log = logging.getLogger(__name__)


class Validation:
    """Validation tasks and cold starts drawn once from a validation pool, and the score."""

    def __init__(self, valid: SeriesPool, config: OnlineConfig, meta: MetaConfig, seed: int):
        self.config = config
        drifts = with_splices(valid, meta.splices, meta.query, np.random.default_rng(seed + 3))
        self.tasks: Tasks = sample_tasks(drifts, meta.validation_tasks, meta.query, np.random.default_rng(seed + 1))
        self.cold_weight = cold_start_share(meta.cold_start_weight, config)
        if self.cold_weight > 0 and not (valid.room > config.window).any():
            log.info("no validation rows are long enough for a cold start; scoring after drifts only")
            self.cold_weight = 0.0
        self.young: tuple[Examples, np.ndarray] | None = (
            sample_cold_starts(valid, meta.validation_tasks, config.serving, np.random.default_rng(seed + 2))
            if self.cold_weight > 0 else None)

    @property
    def cold_starts(self) -> int:
        return 0 if self.young is None else len(self.young[1])

    def parts(self, init: Initializer) -> dict[str, float]:
        c = self.config
        found = {"post_adaptation": validation_score(init, self.tasks, c.adapt_steps, c.clip)}
        if self.young is not None:
            found["cold_start"] = cold_start_loss(init, *self.young)
        return found

    def total(self, parts: dict[str, float]) -> float:
        return parts["post_adaptation"] + self.cold_weight * parts.get("cold_start", 0.0)

    def score(self, init: Initializer) -> float:
        return self.total(self.parts(init))


def beats(score: float, incumbent: float | None) -> bool:
    """Whether `score` wins over `incumbent` (None: there is none). A score that is not a number
    never wins, and never stands in the way of one that is."""
    return math.isfinite(score) and (incumbent is None or not math.isfinite(incumbent) or score < incumbent)
