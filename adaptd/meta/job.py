"""One meta-training run: split the series, warm-start, meta-train, validate, store, promote.

Validation tasks come from held-out series and from the final fifth of every training series
(training tasks never have a query target there), with a fixed seed, so the new initializer
and the current one are scored on identical tasks. Of the tasks cut from a series with
recorded drift detections, half sit at one of them (what that adaptation saw), the rest at
ordinary times. A new version is promoted only if it beats the current promoted one of its
kind there (the score of validation.py: post-adaptation MSE plus cold starts); every run is
stored with what it was trained on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..config import Settings
from ..engine.factory import (encode_initializer, online_config, packaged_initializer, pooled_examples,
                              promoted_by_kind)
from ..engine.learner import Initializer, pretrain
from ..engine.online import OnlineConfig
from ..engine.snapshot import FORMAT_VERSION
from ..store import Store
from .tasks import SeriesPool
from .train import MetaSettings, Progress, meta_train
from .validation import Validation, beats

log = logging.getLogger(__name__)

TRAIN_SHARE = 0.8            # of each training series' length: the rest validates
PRETRAIN_EPOCHS, PRETRAIN_BATCH, PRETRAIN_EXAMPLES = 3, 256, 20_000


class NotEnoughData(RuntimeError):
    """Too few or too short series to cut tasks from; the message says what is needed."""


@dataclass
class RunReport:
    version: int | None
    promoted: bool
    algorithm: str
    val_score: float                 # post_adaptation + cold_start_weight x cold_start, of `parts`
    baselines: dict[str, float]      # validation score of the current initializers and the warm start
    series: int
    seconds: float
    history: list[float] = field(default_factory=list)
    payload: bytes = b""             # the new initializer, encoded as stored
    parts: dict[str, float] = field(default_factory=dict)   # the new one's score, by part

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "promoted": self.promoted, "algorithm": self.algorithm,
                "val_score": self.val_score, "val_parts": self.parts, "baselines": self.baselines,
                "series": self.series,
                "seconds": round(self.seconds, 1),
                "loss_first": self.history[0] if self.history else None,
                "loss_last": float(np.mean(self.history[-10:])) if self.history else None}


def held_out_names(names: list[str], held_out: float, seed: int) -> set[str]:
    """The series a run with this seed holds out whole: it never trains on any of their values."""
    names = sorted(names)
    if len(names) <= 1:
        return set()
    rng = np.random.default_rng(seed)
    return set(rng.choice(names, size=max(1, int(round(held_out * len(names)))), replace=False))


def split(series: dict[str, np.ndarray], config: OnlineConfig, held_out: float, query: int,
          seed: int, detections: dict[str, list[int]] | None = None) -> tuple[SeriesPool, SeriesPool]:
    """(training pool, validation pool): held-out series whole, the others' final fifth.
    `detections`: per series, where the daemon's detectors fired (indices into its values)."""
    names = sorted(series)
    valid_names = sorted(held_out_names(names, held_out, seed))
    train_names = [n for n in names if n not in valid_names]
    fired = detections or {}
    cut = {n: int(len(series[n]) * TRAIN_SHARE) for n in train_names}
    train = SeriesPool([series[n] for n in train_names], config, span=[(0, cut[n]) for n in train_names],
                       detections=[fired.get(n, []) for n in train_names])
    valid = SeriesPool([series[n] for n in train_names] + [series[n] for n in valid_names], config,
                       span=[(cut[n], len(series[n])) for n in train_names]
                       + [(0, len(series[n])) for n in valid_names],
                       detections=[fired.get(n, []) for n in train_names + valid_names])
    for pool, what in ((train, "training"), (valid, "validation")):
        if not pool.usable(query).any():
            need = config.window + config.adapt_window + query
            raise NotEnoughData(f"no series is long enough for {what} tasks: meta-training needs series of "
                                f"more than {need / TRAIN_SHARE:.0f} observations (window + adapt window + "
                                f"query = {need}, in the first {TRAIN_SHARE:.0%} of a series)")
    return train, valid


def run(settings: Settings, store: Store, series: dict[str, np.ndarray], iterations: int | None = None,
        algorithm: str | None = None, seed: int = 0, promote: bool = True,
        progress: Callable[[Progress], None] | None = None,
        detections: dict[str, list[int]] | None = None, from_pretrained: bool = False) -> RunReport:
    """Meta-train from the current meta initializer (stored, else packaged), or with
    `from_pretrained` from a pretrained one (stored, else fitted here on the training part): on
    an empty store the result then depends on the data and the seed alone, which is how the
    packaged file is rebuilt."""
    m = settings.meta
    torch.set_num_threads(m.torch_threads)
    config = online_config(settings)
    meta = MetaSettings.of(m, seed, algorithm, iterations)
    started = time.perf_counter()
    train, valid = split(series, config, m.validation_series, m.query, seed, detections)
    validation = Validation(valid, config, m, seed)
    if float(validation.tasks.query.mask.sum()) == 0:
        raise NotEnoughData("no validation task has a target to score: the held-out series change (or the "
                            "detectors fired) right after every drawn detection time")
    current = promoted_by_kind(store, config)

    # Every initializer this run compares against (or starts from), by the name it reports.
    candidates = {f"{kind} v{init.version}": init for kind, init in current.items()}
    if "pretrained" in current:
        warm = current["pretrained"]
    else:   # a pretrained initializer on the training part only: the warm start and a stored arm
        random_init = Initializer.random(config.shape, seed, settings.adapt.step_size)
        training_part = [y[:stop] for y, (_, stop) in zip(train.series, train.span)]
        warm = candidates["pretrained (new)"] = pretrain(
            random_init, pooled_examples(training_part, config, PRETRAIN_EXAMPLES, seed),
            PRETRAIN_EPOCHS, PRETRAIN_BATCH, seed)
    packaged = packaged_initializer(config) if "meta" not in current else None
    if packaged is not None:   # what the daemon runs until its store has a meta-learned one
        candidates["meta (packaged)"] = packaged
    baselines = {name: validation.score(init) for name, init in candidates.items()}
    if "pretrained" not in current and promote:
        _save(store, encode_initializer(warm, config), "pretrain", baselines["pretrained (new)"], True,
              {"series": len(series), "seed": seed})
    start = warm if from_pretrained else current["meta"] if "meta" in current else packaged or warm
    result = meta_train(start, train, meta, config, progress)
    val_parts = validation.parts(result.init)
    val_score = validation.total(val_parts)
    incumbent = (baselines[f"meta v{current['meta'].version}"] if "meta" in current
                 else baselines.get("meta (packaged)"))
    promoted = promote and beats(val_score, incumbent)
    training = {**result.init.meta, "series": len(series), "train_series": len(train.lengths),
                "detections": sum(len(d) for d in (detections or {}).values()),
                "warm_start": next(name for name, init in candidates.items() if init is start),
                "validation_tasks": len(validation.tasks), "validation_parts": val_parts,
                "validation_cold_starts": validation.cold_starts,
                "baselines": baselines, "seconds": round(result.seconds, 1),
                "loss_last": float(np.mean(result.history[-10:])) if result.history else None}
    payload = encode_initializer(result.init, config)
    version = _save(store, payload, meta.algorithm, val_score, promoted, training)
    log.info("meta-training %s: validation %.4f (%s) -> version %d %s", meta.algorithm, val_score,
             ", ".join(f"{k} {v:.4f}" for k, v in baselines.items()), version,
             "promoted" if promoted else "not promoted")
    return RunReport(version, promoted, meta.algorithm, val_score, baselines, len(series),
                     time.perf_counter() - started, result.history, payload, val_parts)


def _save(store: Store, payload: bytes, algorithm: str, val_score: float, promoted: bool,
          training: dict[str, Any]) -> int:
    return store.save_initializer(algorithm, FORMAT_VERSION, payload, _jsonable(training), val_score, promoted)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
