"""`adaptd bench meta`: what each initializer gives right after a change, on identical tasks.

Arms: random / pretrained / meta-learned (first-order Meta-SGD, Reptile) initializers, each
restarted at the detection time and fine-tuned with the daemon's own inner loop (or not), and
an online RLS autoregression that simply keeps learning through the change. Every arm is
scored on the same tasks: the forecasts issued from the detection time over the first 1, 2 and
4 seasons after it, in the normalised units the models learn in (per-origin scale), on targets
before the series' next change (synthetic: a detection a season or less before it is no task).

Data, split by series (training never sees a test series):
- synthetic: regime switches at known times (level, seasonal shape, AR dynamics and noise
  change; half the changes revisit an earlier regime);
- M4 Hourly: a test task splices two held-out series, so the change point is known.
Detection times are a change plus a delay drawn from the delays the daemon's own detector
produced on synthetic changes (measured at the start of the run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..config import CHECKS, Settings
from ..engine.factory import online_config, pooled_examples
from ..engine.features import normalisation_path
from ..engine.learner import Examples, Initializer, pretrain
from ..engine.online import OnlineConfig, OnlineEngine
from ..meta.sources import series_from_m4
from ..meta.synthetic import regime_series
from ..meta.tasks import DEFAULT_DELAYS, SeriesPool, Tasks, cut_tasks, next_change
from ..meta.train import MetaSettings, meta_train, post_adaptation_loss
from ..records import Observation
from .accuracy.baselines import RLSAutoregression
from .accuracy.datasets import resolve_data_dir
from .meta_memory import Remembered, chosen_losses, remembered, shared_library
from .stats import bootstrap_ratio

SEASONS = (1, 2, 4)
REFERENCE = "pretrained + fine-tune"
CHOSEN = "meta (Meta-SGD), best of fine-tuned / as is"
MEMORY_OWN = "meta (Meta-SGD) + regime memory, own"
MEMORY_SHARED = "meta (Meta-SGD) + regime memory, shared"
MEMORY_ARM = "meta (Meta-SGD) + regime memory, own + shared"
SHARED_FROM, SHARED_STEPS = 64, 1000   # training series (and steps of each) that fill the shared library



@dataclass
class Data:
    name: str
    train: list[np.ndarray]
    train_changes: list[list[int]]
    test: list[np.ndarray]          # one series per test task
    test_change: np.ndarray         # (n,) change time of each test series
    source: np.ndarray | None = None    # (n,) which underlying series each task cuts (None: its own)
    revisit: np.ndarray | None = None   # (n,) the change returns to a regime the series had before
    test_changes: list[list[int]] | None = None   # every known change of each test series (None: one each)


def synthetic(n_tasks: int, period: int, seed: int) -> Data:
    rng = np.random.default_rng(seed)
    train = regime_series(120, 1500, rng, period=period)
    test = regime_series(max(40, n_tasks // 4), 1500, np.random.default_rng(seed + 1), period=period)
    series, change, source, revisit = [], [], [], []
    for k, (y, cuts, ids) in enumerate(zip(test.values, test.changes, test.regime)):
        for c in cuts:
            series.append(y)
            change.append(c)
            source.append(k)
            revisit.append(bool(ids[c] in ids[:c]))
    order = np.random.default_rng(seed + 2).permutation(len(series))[:n_tasks]
    return Data("synthetic", train.values, train.changes, [series[i] for i in order], np.array(change)[order],
                np.array(source)[order], np.array(revisit)[order], [test.changes[source[i]] for i in order])


def m4(n_tasks: int, seed: int, data_dir: str | None) -> Data:
    path = resolve_data_dir(data_dir) / "m4" / "Hourly-train.csv"
    values = list(series_from_m4(path).values())
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(values))
    cut = int(0.8 * len(values))
    train = [values[i] for i in order[:cut]]
    held = [values[i] for i in order[cut:]]
    series, change = [], []
    for _ in range(n_tasks):   # the end of one held-out series, then the start of another
        a, b = rng.choice(len(held), 2, replace=False)
        before = held[a][-min(len(held[a]), 400):]
        series.append(np.concatenate([before, held[b][:300]]))
        change.append(len(before))
    return Data("m4", train, [[] for _ in train], series, np.array(change))


def measured_delays(config: OnlineConfig, period: int, seed: int) -> tuple[list[int], str]:
    """Steps from a change to the daemon's first detection after it, on synthetic changes.
    Adaptations run inline: in a worker thread they land a machine-dependent number of steps
    later, and the delays (so the test tasks) differed between runs of the same code."""
    data = regime_series(8, 1200, np.random.default_rng(seed + 7), period=period)
    engine = OnlineEngine(replace(config, adapt_workers=0), Initializer.random(config.shape, seed, 0.05))
    for t in range(1200):
        engine.observe([Observation(f"s{k}", t * 3600.0, float(y[t])) for k, y in enumerate(data.values)])
    detected: dict[int, list[int]] = {}
    for event in engine.take_drift_events():
        detected.setdefault(int(event.series[1:]), []).append(int(event.ts / 3600.0))
    delays = []
    for k, cuts in enumerate(data.changes):
        for c in cuts:
            after = [t - c for t in detected.get(k, []) if 0 < t - c <= 4 * period]
            if after:
                delays.append(min(after))
    engine.close()
    if len(delays) < 5:
        return list(DEFAULT_DELAYS), f"default (the detector found only {len(delays)} changes)"
    return delays, f"measured: {len(delays)} detections, median {int(np.median(delays))} steps"


def held_out_tasks(data: Data, config: OnlineConfig, delays: list[int], query: int, seed: int,
                   period: int) -> Tasks:
    """A task per test series, detected a drawn delay after its change; its query stops at the
    series' next change (`cut_tasks`), and a detection a season or less before that is no task."""
    rng = np.random.default_rng(seed)
    changes = data.test_changes if data.test_changes is not None else [[int(c)] for c in data.test_change]
    pool = SeriesPool(data.test, config, changes=changes)
    times, keep = [], []
    for i, (y, c) in enumerate(zip(data.test, data.test_change)):
        t = int(c + rng.choice(delays))
        lo, hi = pool.detection_range(i, query)
        if lo <= t < hi and pool.next_change(i, t) > t + period:
            times.append(t)
            keep.append(i)
    return cut_tasks(pool, np.array(keep), np.array(times), query)


def unscored_share(data: Data, tasks: Tasks, query: int) -> float:
    """The share of the first `query` steps' targets that lie at or after the series' next change
    (`cut_tasks` leaves them out of the scores)."""
    if data.test_changes is None:
        return 0.0
    leads = tasks.query.mask.shape[2]
    offset = np.arange(query)[:, None] + np.arange(1, leads + 1)[None, :]
    inside = offset <= query
    after = sum(int((inside & (t + offset >= next_change(data.test_changes[j], t))).sum())
                for j, t in zip(tasks.series, tasks.time))
    return after / max(int(inside.sum()) * len(tasks), 1)


def first_steps(tasks: Tasks, query: int) -> Tasks:
    """The same tasks scored on their first `query` steps after detection only."""
    q = tasks.query
    lead = torch.arange(1, q.mask.shape[2] + 1)
    offset = torch.arange(query)[:, None]
    inside = (offset + lead[None, :] <= query).to(q.mask.dtype)
    cut = Examples(q.window[:, :query], q.level[:, :query], q.target[:, :query], q.mask[:, :query] * inside)
    return Tasks(tasks.support, cut, tasks.series, tasks.time, tasks.valid)


def rls_losses(data: Data, tasks: Tasks, config: OnlineConfig) -> np.ndarray:
    """An online RLS AR that keeps learning through the change, scored like the other arms."""
    query, H = tasks.query.window.shape[1], config.horizon
    before = int(min(tasks.time.min(), 600))
    length = before + query + H
    rows = np.full((length, len(tasks)), np.nan)
    scale = np.empty((query, len(tasks)))
    for k, (i, t) in enumerate(zip(tasks.series, tasks.time)):
        y = data.test[i]
        part = y[t - before:t + query + H]
        rows[:part.size, k] = part
        # The same causal per-origin scale the tasks' targets are normalised by.
        scale[:, k] = normalisation_path(y[:t + query], config.scale_rate, config.mean_rate)[0][t:t + query]
    model = RLSAutoregression(n_lags=config.rls_lags, horizon=H, mode="relative")
    mask = tasks.query.mask.double().numpy()                      # (n, query, H)
    errors = np.zeros(len(tasks))
    for tau in range(before + query):
        model.observe(np.nan_to_num(rows[tau]))
        j = tau - before
        if j < 0:
            continue
        err = ((model.forecast(H) - rows[tau + 1:tau + 1 + H].T) / scale[j][:, None]) ** 2
        errors += (np.nan_to_num(err) * mask[:, j]).sum(axis=1)
    return errors / mask.reshape(len(tasks), -1).sum(axis=1).clip(min=1)


def run_dataset(data: Data, settings: Settings, config: OnlineConfig, args: argparse.Namespace,
                delays: list[int]) -> dict[str, Any]:
    seed, k = args.seed, config.adapt_steps
    started = time.perf_counter()
    random_init = Initializer.random(config.shape, seed, settings.adapt.step_size)
    pretrained = pretrain(random_init, pooled_examples(data.train, config, 20_000, seed), 3, 256, seed)
    pool = SeriesPool(data.train, config, changes=data.train_changes)
    progress = _progress(f"{data.name}: meta-train")
    # [meta] of the config, except what the bench sets: iterations, and queries of two seasons.
    training = {name: replace(MetaSettings.of(settings.meta, seed, name, args.iterations), query=2 * args.period)
                for name in ("meta_sgd", "reptile")}
    meta = meta_train(pretrained, pool, training["meta_sgd"], config, progress).init
    reptile = meta_train(pretrained, pool, training["reptile"], config, _progress(f"{data.name}: reptile")).init
    print(file=sys.stderr)
    train_seconds = time.perf_counter() - started
    arms = {"random + fine-tune": (random_init, k), REFERENCE: (pretrained, k), "pretrained, no fine-tune": (pretrained, 0),
            "meta (Meta-SGD), no fine-tune": (meta, 0), "meta (Meta-SGD) + fine-tune": (meta, k),
            "meta (Reptile) + fine-tune": (reptile, k)}
    results: dict[str, dict[str, Any]] = {}
    longest = held_out_tasks(data, config, delays, max(SEASONS) * args.period, seed + 11, args.period)
    memories: dict[str, Remembered] = {}
    memory_note = "off (--regime-lookup 0)"
    mem_config = replace(config, regime_memory=args.regime_memory, regime_shared=args.regime_shared,
                         regime_lookup=args.regime_lookup, regime_pool=args.regime_pool)
    if args.regime_lookup > 0 and (args.regime_memory > 0 or args.regime_shared > 0):
        started = time.perf_counter()
        source = data.source if data.source is not None else np.arange(len(data.test))
        shared = None
        if args.regime_shared > 0:
            pick = np.random.default_rng(seed + 13).permutation(len(data.train))[:SHARED_FROM]
            shared = shared_library([data.train[i][:SHARED_STEPS] for i in pick], mem_config, meta)
        found = remembered(data.test, source, data.test_change, longest, mem_config, meta, shared)
        if args.regime_memory > 0:
            memories[MEMORY_OWN] = found["own"]
        if shared is not None:
            memories[MEMORY_SHARED] = found["shared"]
        if shared is not None and args.regime_memory > 0:
            memories[MEMORY_ARM] = found["all"]
        memory_note = (f"per series {args.regime_memory}, shared {args.regime_shared}, lookup "
                       f"{args.regime_lookup} of the {args.regime_pool} nearest by key; per series filled by the engine from each test series' history "
                       f"before its change" + (f", shared from {len(pick)} training series" if shared else "")
                       + f" ({time.perf_counter() - started:.0f} s); tasks whose series remembered something of "
                       f"its own: {100 * float((found['own'].entries > 0).mean()):.0f}%")
    winners: dict[str, dict[str, float]] = {}
    revisit = data.revisit[longest.series] if data.revisit is not None else None
    for seasons in SEASONS:
        tasks = first_steps(longest, seasons * args.period)
        losses = {name: post_adaptation_loss(init, tasks, steps, config.clip) for name, (init, steps) in arms.items()}
        losses[CHOSEN], won = chosen_losses(meta, tasks, k, config.clip)
        winners[CHOSEN] = {kind: float((won == kind).mean()) for kind in np.unique(won)}
        for name, memory in memories.items():
            losses[name], won = chosen_losses(meta, tasks, k, config.clip, memory, args.regime_lookup,
                                              max(1, config.adapt_window // 4))
            winners[name] = {kind: float((won == kind).mean()) for kind in np.unique(won)}
        losses["online RLS AR (keeps learning)"] = rls_losses(data, tasks, config)
        ref = losses[REFERENCE]
        for name, loss in losses.items():
            ratio, lo, hi = bootstrap_ratio(loss, ref, args.bootstrap, seed)
            row = {"mean": float(loss.mean()), "median": float(np.median(loss)), "ratio": ratio, "ratio_lo": lo,
                   "ratio_hi": hi, "win_rate": float((loss < ref).mean()), "tasks": int(loss.size)}
            if name in memories:   # what the memory adds to the same choice without it
                r, lo_c, hi_c = bootstrap_ratio(loss, losses[CHOSEN], args.bootstrap, seed)
                row["vs_chosen"] = {"ratio": r, "ratio_lo": lo_c, "ratio_hi": hi_c,
                                    "win_rate": float((loss < losses[CHOSEN]).mean()),
                                    "loss_rate": float((loss > losses[CHOSEN]).mean())}
            if revisit is not None and revisit.any() and (~revisit).any():
                row["ratio_revisit"] = float(loss[revisit].mean() / ref[revisit].mean())
                row["ratio_new"] = float(loss[~revisit].mean() / ref[~revisit].mean())
            results.setdefault(name, {})[str(seasons)] = row
    return {"dataset": data.name, "train_series": len(data.train), "train_seconds": round(train_seconds, 1),
            "step_sizes": meta.step_sizes, "arms": results, "winners": winners, "memory": memory_note,
            "unscored_after_next_change": unscored_share(data, longest, 2 * args.period),
            "revisit_share": float(revisit.mean()) if revisit is not None else None}


def _progress(label: str) -> Any:
    def show(p: Any) -> None:
        if p.iteration % 10 == 0 or p.iteration == p.iterations:
            print(f"\r{label} {p.iteration}/{p.iterations} loss {p.loss:.3f} {p.tasks_per_second:.0f} tasks/s "
                  f"ETA {p.eta:.0f}s   ", end="", file=sys.stderr, flush=True)
    return show


def render(report: dict[str, Any]) -> str:
    lines = [f"## {report['dataset']} ({report['train_series']} training series, meta-training "
             f"{report['train_seconds']:.0f} s)", "",
             "| arm | " + " | ".join(f"{s} season{'s' if s > 1 else ''}: mean / median MSE, ratio [95% CI], wins"
                                    for s in SEASONS) + " |",
             "|---|" + "---|" * len(SEASONS)]
    for name, by_season in report["arms"].items():
        cells = []
        for s in SEASONS:
            r = by_season[str(s)]
            cells.append(f"{r['mean']:.3f} / {r['median']:.3f}, {r['ratio']:.3f} [{r['ratio_lo']:.3f}, "
                         f"{r['ratio_hi']:.3f}], {100 * r['win_rate']:.0f}%")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"regime memory: {report['memory']}"]
    if report.get("unscored_after_next_change"):
        lines.append(f"not scored: targets at or after the series' next change "
                     f"({100 * report['unscored_after_next_change']:.1f}% of two seasons' targets)")
    for name, won in report.get("winners", {}).items():
        lines.append(f"{name}: winning candidate (over {max(SEASONS)} seasons' tasks) "
                     + ", ".join(f"{kind} {100 * share:.0f}%" for kind, share in won.items()))
    for name, by_season in report["arms"].items():
        if "vs_chosen" in by_season["2"]:
            v = by_season["2"]["vs_chosen"]
            lines.append(f"{name} / \"{CHOSEN}\", 2 seasons: {v['ratio']:.3f} [{v['ratio_lo']:.3f}, "
                         f"{v['ratio_hi']:.3f}], better on {100 * v['win_rate']:.0f}% of tasks, worse on "
                         f"{100 * v['loss_rate']:.0f}%")
    if report.get("revisit_share") is not None:
        lines.append(f"tasks whose change returns to an earlier regime of the series: "
                     f"{100 * report['revisit_share']:.0f}%; ratio on those / on the others, 2 seasons:")
        for name, by_season in report["arms"].items():
            r = by_season["2"]
            if "ratio_revisit" in r:
                lines.append(f"  {name}: {r['ratio_revisit']:.3f} / {r['ratio_new']:.3f}")
    return "\n".join(lines)


def main(settings: Settings, args: argparse.Namespace) -> int:
    for key in ("regime_memory", "regime_shared", "regime_lookup", "regime_pool"):   # as [adapt] checks them
        valid, meaning = CHECKS["adapt"][key]
        if not valid(getattr(args, key)):
            print(f"adaptd: --{key.replace('_', '-')} {getattr(args, key)}: expected {meaning}", file=sys.stderr)
            return 2
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    config = online_config(settings, seed=args.seed)
    delays, delay_note = measured_delays(config, args.period, args.seed)
    reports = []
    for name in [n.strip() for n in args.datasets.split(",") if n.strip()]:
        if name == "synthetic":
            data = synthetic(args.tasks, args.period, args.seed)
        elif name == "m4":
            try:
                data = m4(args.tasks, args.seed, args.data_dir)
            except FileNotFoundError as exc:
                print(f"skipping m4: {exc}", file=sys.stderr)
                continue
        else:
            print(f"adaptd: unknown dataset {name!r} (synthetic, m4)", file=sys.stderr)
            return 2
        reports.append(run_dataset(data, settings, config, args, delays))
    command = "adaptd bench meta " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "adaptd bench meta"
    if args.json:
        print(json.dumps({"command": command, "delays": delay_note, "reports": reports}))
        return 0
    print(f"# adaptd bench meta — post-change MSE (normalised) per arm; ratio to \"{REFERENCE}\"")
    print(f"detection delays: {delay_note}; k = {config.adapt_steps} steps, support = {config.adapt_window} origins")
    for report in reports:
        print()
        print(render(report))
    print(f"\nreproduce: {command}")
    return 0
