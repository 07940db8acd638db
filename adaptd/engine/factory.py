"""Building engines and initializers from settings: one place, so the daemon, replay and the
benchmarks run exactly the same engine for the same config."""

from __future__ import annotations

import logging
from dataclasses import replace
from importlib import resources

import numpy as np
import torch

from ..config import Settings
from ..store import Store
from .base import Engine
from .features import series_examples
from .learner import INIT_KINDS, Examples, Initializer, pretrain, use_torch_threads
from .naive import NaiveEngine
from .online import OnlineConfig, OnlineEngine
from .snapshot import SnapshotError, decode, encode

log = logging.getLogger(__name__)

PRETRAIN_EPOCHS = 3
PRETRAIN_BATCH = 256
MAX_PRETRAIN_EXAMPLES = 60_000
PACKAGED_INITIALIZER = "m4-hourly.adi"   # made by `make initializer` (README)


def online_config(settings: Settings, horizon: int | None = None, seed: int = 0) -> OnlineConfig:
    m, d, a = settings.model, settings.drift, settings.adapt
    return OnlineConfig(
        window=m.window, patch=m.patch, hidden=m.hidden, horizon=horizon or m.max_horizon,
        rls_lags=m.rls_lags, rls_forgetting=m.rls_forgetting, learning_rate=m.learning_rate,
        train_every=m.train_every, mixture_eta=m.mixture_eta, mixture_memory=m.mixture_memory,
        mixture_anchor=m.mixture_anchor, blend_memory=m.blend_memory, coverage=m.coverage, interval_rate=m.interval_rate,
        detector=d.detector, detector_params=d.detector_params(seed), cooldown=d.cooldown, adapt=a.enabled,
        adapt_steps=a.steps, adapt_window=a.window, adapt_validation=a.validation, adapt_keep=a.keep,
        adapt_workers=a.workers, regime_memory=a.regime_memory, regime_shared=a.regime_shared,
        regime_lookup=a.regime_lookup, regime_pool=a.regime_pool, history=m.history, season=m.season,
        max_gap_fill=m.max_gap_fill, seed=seed, cold_start=m.cold_start, torch_threads=m.torch_threads)


def build_engine(settings: Settings, init: Initializer | None = None, horizon: int | None = None,
                 seed: int = 0, inline_adaptation: bool = False) -> Engine:
    m = settings.model
    if m.engine == "naive":   # (replay's horizon may pass the daemon's max_horizon, as the online engine's may)
        return NaiveEngine.for_model(m if horizon is None else replace(m, max_horizon=max(horizon, m.max_horizon)))
    use_torch_threads(m.torch_threads)
    config = online_config(settings, horizon, seed)
    if inline_adaptation:
        config = replace(config, adapt_workers=0)
    if init is None:
        init = Initializer.random(config.shape, seed, settings.adapt.step_size)
    return OnlineEngine(config, init)


def pooled_examples(series: list[np.ndarray], config: OnlineConfig, limit: int = MAX_PRETRAIN_EXAMPLES,
                    seed: int = 0) -> Examples:
    """Training examples from several series' histories, shaped (N, 1, ...) for `pretrain`."""
    parts = [series_examples(y, config.window, config.horizon, config.scale_rate, config.mean_rate)
             for y in series]
    window, level, target, mask = (np.concatenate([p[i] for p in parts]) for i in range(4))
    if len(window) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(window), limit, replace=False))
        window, level, target, mask = window[keep], level[keep], target[keep], mask[keep]
    return Examples.from_numpy(window[:, None], level[:, None], target[:, None], mask[:, None])


def initializer_for(kind: str, config: OnlineConfig, warmup: list[np.ndarray], seed: int = 0,
                    step_size: float = 0.01) -> Initializer:
    """A "pretrained" (on the warm-up series) or "random" initializer; "meta", which needs
    meta-training, is `adaptd.meta.fit.initializer_for`."""
    if kind not in ("pretrained", "random"):
        raise ValueError(f"initializer_for builds 'pretrained' or 'random', not {kind!r}")
    random_init = Initializer.random(config.shape, seed, step_size)
    if kind == "random":
        return random_init
    examples = pooled_examples(warmup, config, seed=seed)
    if examples.window.shape[0] == 0:
        log.warning("no warm-up window is long enough to pretrain on; using a random initializer")
        return random_init
    return pretrain(random_init, examples, PRETRAIN_EPOCHS, PRETRAIN_BATCH, seed)


def encode_initializer(init: Initializer, config: OnlineConfig) -> bytes:
    arrays = {f"param_{k}": v.numpy() for k, v in init.params.items()}
    header = {"kind": init.kind, "step_sizes": init.step_sizes, **_shape_header(config)}
    return encode(arrays, header)


def decode_initializer(payload: bytes, config: OnlineConfig, version: int | None = None) -> Initializer:
    arrays, header = decode(payload, _shape_header(config))
    params = {k[len("param_"):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("param_")}
    if not all(bool(torch.isfinite(v).all()) for v in params.values()):
        raise SnapshotError("initializer weights are not finite")
    return Initializer(params, dict(header["step_sizes"]), str(header["kind"]), version)


def _shape_header(config: OnlineConfig) -> dict[str, int]:
    return {"window": config.window, "patch": config.patch, "hidden": config.hidden, "horizon": config.horizon}


def packaged_initializer(config: OnlineConfig) -> Initializer | None:
    """The initializer shipped with adaptd (meta-trained on M4 Hourly, see README), if it fits
    this model shape: a new installation starts from it until its own store has one."""
    try:
        payload = (resources.files("adaptd") / "initializers" / PACKAGED_INITIALIZER).read_bytes()
    except OSError:
        return None
    try:
        init = decode_initializer(payload, config)
    except SnapshotError as exc:
        log.info("the packaged initializer does not fit this model shape (%s)", exc)
        return None
    init.meta["source"] = "packaged"
    return init


def promoted_by_kind(store: Store, config: OnlineConfig, warn: bool = False) -> dict[str, Initializer]:
    """The newest promoted initializer of each kind that fits this model shape. Versions are read
    newest first and only until every kind is found: months of daily runs are not all decoded."""
    found: dict[str, Initializer] = {}
    for version, _algorithm, _format, payload in store.promoted_initializers():
        if set(INIT_KINDS) - {"random"} <= found.keys():
            break
        try:
            init = decode_initializer(payload, config, version)
        except SnapshotError as exc:
            if warn:
                log.warning("initializer version %d is not usable here (%s); skipping it", version, exc)
            continue
        found.setdefault(init.kind, init)
    return found


def stored_initializer(settings: Settings, store: Store, config: OnlineConfig) -> Initializer:
    """The daemon's θ*: the newest promoted initializer of the kind `[adapt] init` asks for that
    fits this model shape; for "meta", then the packaged one, then a pretrained one; otherwise
    random weights, saying why in the log."""
    wanted = settings.adapt.init
    if wanted != "random":
        usable = promoted_by_kind(store, config, warn=True)
        if wanted in usable:
            return usable[wanted]
        packaged = packaged_initializer(config)
        if packaged is not None and packaged.kind == wanted:
            return packaged
        if "pretrained" in usable:
            log.warning("[adapt] init = %r: no such initializer for this model shape yet; using pretrained "
                        "initializer version %d", wanted, usable["pretrained"].version)
            return usable["pretrained"]
        log.warning("[adapt] init = %r: no initializer fits this model shape yet (`adaptd meta-train` "
                    "makes one); series start from random weights", wanted)
    return Initializer.random(config.shape, config.seed, settings.adapt.step_size)
