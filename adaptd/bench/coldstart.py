"""`adaptd bench coldstart`: forecasts of a series that has seen only n observations (issue #4).

A cold start is a stretch of a real series fed to a fresh engine from its first value. After n
observations (n = 4, 8, 12, 24, 36, 47 by default: all younger than the window) each arm
forecasts 48 steps; the MSE over leads 1..24 and 1..48 of the same forecast is in units of the
series' spread (M4: its own standard deviation; ETT/WTH: z-scored with the train rows' statistics).
Arms:
- naive: what the fallback (NaiveEngine) answers — the last value, for a series younger than
  two seasons;
- θ* alone, the window left-padded with the first value, or with the last value;
- engine: the configured engine with `[model] cold_start`, i.e. θ* padded with the last value in
  the mixture with the last value, re-weighted online, with its intervals (coverage reported).
Data: M4 Hourly series the packaged initializer held out (`make initializer` = meta-train seed 0
on all of M4 Hourly), cold starts every `--stride` steps; ETTh2, ETTm1 and WTH channels, cold
starts across their test range. Ratios are to the naive arm, with a paired bootstrap 95% interval
over cold starts, and the share of cold starts on which the arm beats naive.

`--rows validation` measures elsewhere, for choosing settings without touching those rows: the
final fifth of the M4 series θ* trained on (meta-training never reads it) and the ETT/WTH
validation range.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..config import Settings
from ..engine.factory import online_config, packaged_initializer
from ..engine.features import LEVEL_CLIP, VALUE_CLIP, normalisation_path
from ..engine.gru import forward
from ..engine.learner import Initializer
from ..engine.naive import NaiveEngine
from ..engine.online import OnlineConfig, OnlineEngine
from ..meta.job import TRAIN_SHARE, held_out_names
from ..meta.sources import series_from_m4
from ..records import Observation
from .accuracy.datasets import DataMissing, load_split, resolve_data_dir

HORIZONS = (24, 48)
ARMS = ("naive", "θ* alone, first-value pad", "θ* alone, last-value pad", "engine (cold start)")


def segments(dataset: str, need: int, stride: int, data_dir: str | None, settings: Settings,
             rows_from: str = "test") -> tuple[np.ndarray, float]:
    """(starts, need) values in units of their series' spread, and the step in seconds."""
    if dataset == "m4":
        path = resolve_data_dir(data_dir) / "m4" / "Hourly-train.csv"
        if not path.is_file():
            raise DataMissing(f"M4 Hourly data not found: {path} does not exist")
        series = series_from_m4(path)
        held_out = held_out_names(sorted(series), settings.meta.validation_series, 0)
        rows = []
        for name in sorted(held_out if rows_from == "test" else set(series) - held_out):
            y = series[name]
            first = 0 if rows_from == "test" else int(len(y) * TRAIN_SHARE)
            rows += [y[o: o + need] / (y.std() or 1.0) for o in range(first, len(y) - need + 1, stride or 96)]
        return np.array(rows), 3600.0
    split = load_split(dataset, "fsnet", data_dir)
    stride = stride or (240 if dataset == "etth2" else 480)
    start, end = (split.val_end, split.test_end) if rows_from == "test" else (split.train_end, split.val_end)
    rows = [split.values[o: o + need, c] for c in range(split.values.shape[1])
            for o in range(start, end - need + 1, stride)]
    return np.array(rows), split.step_seconds


def theta_alone(init: Initializer, config: OnlineConfig, y: np.ndarray, pad: str) -> np.ndarray:
    """θ* on the window left-padded with the first or the last value, normalised as the engine does."""
    scale, mean = normalisation_path(y, config.scale_rate, config.mean_rate)
    filler = y[0] if pad == "first" else y[-1]
    raw = np.concatenate([np.full(max(0, config.window - len(y)), filler), y[-config.window:]])
    window = np.clip((raw - y[-1]) / scale[-1], -VALUE_CLIP, VALUE_CLIP)
    level = np.clip((y[-1] - mean[-1]) / scale[-1], -LEVEL_CLIP, LEVEL_CLIP)
    with torch.no_grad():
        out = forward(init.params, torch.tensor(window[None], dtype=torch.float32),
                      torch.tensor([level], dtype=torch.float32))[0].double().numpy()
    return y[-1] + scale[-1] * out


def measure(rows: np.ndarray, step: float, ages: list[int], config: OnlineConfig, init: Initializer) -> dict[str, Any]:
    """Per age: squared errors (starts, H) of every arm, and the engine's and naive's interval hits."""
    H = config.horizon
    engine, naive = OnlineEngine(config, init), NaiveEngine(max_horizon=H, season=config.season)
    names = [f"c{i}" for i in range(len(rows))]
    out: dict[int, dict[str, Any]] = {}
    for t in range(max(ages)):
        batch = [Observation(name, t * step, float(row[t])) for name, row in zip(names, rows)]
        engine.observe(batch)
        naive.record(batch)
        n = t + 1
        if n not in ages:
            continue
        target = rows[:, n: n + H]
        got: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
        hits: dict[str, list[np.ndarray]] = {"engine": [], "naive": []}
        for i, name in enumerate(names):
            answers = {"naive": naive.forecast(name, H), "engine (cold start)": engine.forecast(name, H)}
            for arm, fc in answers.items():
                value, lo, hi = (np.array([getattr(p, k) for p in fc.points]) for k in ("value", "lo", "hi"))
                got[arm].append(value)
                hits["engine" if arm.startswith("engine") else "naive"].append((lo <= target[i]) & (target[i] <= hi))
            got["θ* alone, first-value pad"].append(theta_alone(init, config, rows[i, :n], "first"))
            got["θ* alone, last-value pad"].append(theta_alone(init, config, rows[i, :n], "last"))
        out[n] = {"sq": {arm: (np.array(v) - target) ** 2 for arm, v in got.items()},
                  "hits": {k: np.array(v) for k, v in hits.items()}}
    return out


def summarise(result: dict[int, dict[str, Any]], resamples: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    table: dict[str, Any] = {}
    for n, r in result.items():
        row: dict[str, Any] = {}
        for hz in HORIZONS:
            base = r["sq"]["naive"][:, :hz].mean(axis=1)
            for arm in ARMS:
                mse = r["sq"][arm][:, :hz].mean(axis=1)
                idx = rng.integers(0, len(mse), size=(resamples, len(mse)))
                boot = mse[idx].mean(axis=1) / base[idx].mean(axis=1)
                row[f"{arm} H{hz}"] = {"mse": float(mse.mean()), "ratio": float(mse.mean() / base.mean()),
                                       "ci": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
                                       "wins": float(np.mean(mse < base))}
            for who in ("engine", "naive"):
                row[f"coverage {who} H{hz}"] = float(r["hits"][who][:, :hz].mean())
        table[str(n)] = row
    return table


def render(label: str, starts: int, table: dict[str, Any]) -> str:
    ages = list(table)
    lines = [f"\n### {label} ({starts} cold starts)"]
    for hz in HORIZONS:
        lines += [f"\nMSE over leads 1..{hz}: mean, ratio to naive [95% CI], share of cold starts won",
                  "| arm | " + " | ".join(f"n = {n}" for n in ages) + " |", "|---|" + "---|" * len(ages)]
        for arm in ARMS:
            cells = []
            for n in ages:
                c = table[n][f"{arm} H{hz}"]
                cells.append(f"{c['mse']:.3f}" if arm == "naive" else
                             f"{c['mse']:.3f}, {c['ratio']:.2f} [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}], {c['wins']:.0%}")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("| interval coverage, engine / naive | " + " | ".join(
            f"{table[n][f'coverage engine H{hz}']:.2f} / {table[n][f'coverage naive H{hz}']:.2f}" for n in ages) + " |")
    return "\n".join(lines)


def main(settings: Settings, args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    config = replace(online_config(settings), adapt_workers=0)
    ages = sorted(set(args.ages))
    if not config.cold or not all(2 <= a < config.window for a in ages):
        print(f"adaptd: bench coldstart needs [model] cold_start between 2 and model.window - 1 "
              f"(it is {settings.model.cold_start}) and ages from 2 to {config.window - 1}", file=sys.stderr)
        return 2
    init = packaged_initializer(config)
    if init is None:
        print("adaptd: the packaged initializer does not fit this model shape; bench coldstart measures it",
              file=sys.stderr)
        return 2
    report: dict[str, Any] = {"cold_start": config.cold_start, "window": config.window, "horizon": config.horizon,
                              "ages": ages, "datasets": {}}
    started = time.perf_counter()
    for dataset in args.datasets.split(","):
        try:
            rows, step = segments(dataset, max(ages) + config.horizon, args.stride, args.data_dir, settings,
                                  args.rows)
        except (DataMissing, ValueError) as exc:
            print(f"adaptd: {dataset}: {exc}", file=sys.stderr)
            return 2
        if args.max_starts:
            rows = rows[:: max(1, len(rows) // args.max_starts)][: args.max_starts]
        table = summarise(measure(rows, step, ages, config, init), args.bootstrap)
        report["datasets"][dataset] = {"starts": len(rows), "table": table}
        if not args.json:
            print(render(dataset, len(rows), table), flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"\n{report['seconds']:.0f} s; cold_start {config.cold_start}, window {config.window}; reproduce: "
              f"adaptd bench coldstart --datasets {args.datasets} --ages {','.join(map(str, ages))} --rows {args.rows}")
    return 0
