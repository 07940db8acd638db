"""θ* for a data set seen only through its warm-up rows: replay and the accuracy benchmark.

The daemon reads its initializer from the store (`engine.factory.stored_initializer`); replay
and the benchmark have no store, so they fit the `[adapt] init` they are asked for on the
warm-up rows, the only rows they may learn from. For "meta" that is the daemon's own job in
miniature: meta-train on the first 80% of the warm-up of most series (warm-started from the
packaged initializer where it fits this model shape, else from the pretrained one), then keep
whichever of {meta-trained, warm start} scores better on validation tasks and cold starts cut
from the rest of the warm-up (the daemon's promotion score, validation.py): as in promotion,
a tie keeps the warm start and a score that is not a number never wins. No scored row is ever
read.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from ..config import MetaSettings as MetaConfig
from ..engine import factory
from ..engine.learner import Initializer
from ..engine.online import OnlineConfig
from .job import NotEnoughData, split
from .train import MetaSettings, Progress, meta_train
from .validation import Validation, beats

log = logging.getLogger(__name__)


def initializer_for(kind: str, config: OnlineConfig, warmup: list[np.ndarray], meta: MetaConfig,
                    seed: int = 0, step_size: float = 0.01, prefer_packaged: bool = False,
                    progress: Callable[[Progress], None] | None = None) -> Initializer:
    """The initializer `kind` (meta | pretrained | random) fitted on `warmup` series only.

    `prefer_packaged`: for "meta", take the packaged initializer as is where it fits (what a new
    daemon starts from) and meta-train only where it does not."""
    if kind != "meta":
        return factory.initializer_for(kind, config, warmup, seed, step_size)
    packaged = factory.packaged_initializer(config)
    if packaged is not None and prefer_packaged:
        return packaged
    start = packaged or factory.initializer_for("pretrained", config, warmup, seed, step_size)
    try:
        train, valid = split({str(i): y for i, y in enumerate(warmup)}, config, meta.validation_series,
                             meta.query, seed)
    except NotEnoughData as exc:
        log.warning("[adapt] init = \"meta\": the warm-up is too short to meta-train on (%s); using the %s "
                    "initializer", exc, "packaged" if packaged else "pretrained")
        return start
    settings = MetaSettings.of(meta, seed)
    trained = meta_train(start, train, settings, config, progress).init
    validation = Validation(valid, config, meta, seed)
    parts = {name: validation.parts(init) for name, init in (("meta-trained", trained), ("warm start", start))}
    scores = {name: validation.total(p) for name, p in parts.items()}
    chosen = trained if beats(scores["meta-trained"], scores["warm start"]) else start
    log.info("meta initializer on the warm-up: validation %s; using the %s",
             ", ".join(f"{k} {v:.4f}" for k, v in scores.items()),
             "meta-trained one" if chosen is trained else "warm start")
    chosen.meta.update({"validation": scores, "validation_parts": parts,
                        "warm_start": "packaged" if packaged else "pretrained"})
    return chosen
