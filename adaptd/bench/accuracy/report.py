"""`adaptd bench accuracy`: online-forecasting accuracy of models vs baselines and published numbers.

Datasets x horizons x models, each model run through the leak-free runner on the split that
BENCHMARK_ANCHORS.md uses for that (dataset, horizon); prints a Markdown table (rows = methods,
columns = dataset/horizon MSE) with the published numbers beside, timings, the date, the machine
and the command that reproduces it.

Extra models (the engine's row) plug in as `ModelSpec`s::

    from adaptd.bench.accuracy import ModelSpec, run, render_markdown
    report = run([ModelSpec("adaptd", lambda ctx: MyAdapter(ctx))], datasets=["etth2"], horizons=[1])
    print(render_markdown(report))

or ``main(args, extra_models=[...])`` from the command line handler.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import arguments
from ..arguments import DEFAULT_DATASETS, DEFAULT_HORIZONS, DEFAULT_MODELS, DEFAULT_RIVER_BUDGET
from ..stats import bootstrap_ratio
from .baselines import baseline_specs
from .datasets import DISPLAY, FILES, REPO_ROOT, DataMissing, has_protocol, load_split, resolve_data_dir
from .published import anchors_for
from .runner import (BenchContext, EvalResult, ModelSpec, OnlineModel, SkipModel, after_changes, evaluate,
                     scored_origins)

PROG = "adaptd bench accuracy"
AFTER_CHANGE_SEASONS = 2   # "post-drift" = this many seasonal periods after a detected change
# Rows compared after detected changes and over all scored cells, (row, reference): the engine
# as configured against itself without adaptation (does adaptation pay, issue #3), with the
# other `[adapt] init`s (with the default init, "meta": does the meta-learned initializer beat
# the others, issue #4), and with adaptations alone starting from the others (the
# initializer's effect on adapting).
PAIRED = tuple(("adaptd", ref) for ref in ("adaptd-no-adapt", "adaptd-init-pretrained", "adaptd-init-random",
                                            "adaptd-init-meta", "adaptd-adapt-from-pretrained",
                                            "adaptd-adapt-from-random", "adaptd-adapt-from-meta"))
OVERALL_BLOCK_SEASONS = 7   # the paired ratio over all scored cells resamples blocks of 7 seasonal periods
BOOTSTRAP = 2000
MIN_EPISODES = 5   # fewer: the ratio without an interval (a bootstrap of 1-4 units means little)


@dataclass(frozen=True)
class Column:
    dataset: str
    protocol: str
    horizon: int

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.protocol}/H{self.horizon}"

    @property
    def title(self) -> str:
        full = " full" if self.dataset == "ettm1" and self.protocol == "dsof" else ""
        return f"{DISPLAY[self.dataset]}{full} H={self.horizon}"


@dataclass
class BenchReport:
    date: str
    command: str
    machine: dict[str, Any]
    columns: list[Column]
    splits: dict[str, str]                       # column key -> split description
    results: dict[str, dict[str, EvalResult]]    # model row name -> column key -> result
    row_names: dict[str, str]                    # spec name -> the models' own names, ' / '-joined
    descriptions: dict[str, str]
    skipped: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "date": self.date, "command": self.command, "machine": self.machine,
            "metric": "MSE and MAE on z-scored data, equal weight over channels, origins and steps",
            "columns": [dict(key=c.key, title=c.title, dataset=c.dataset, protocol=c.protocol,
                             horizon=c.horizon, split=self.splits.get(c.key)) for c in self.columns],
            "results": [dict(row=row, column=key, **res.as_dict())
                        for row, cells in self.results.items() for key, res in cells.items()],
            "models": {row: dict(name=self.row_names.get(row, row), description=self.descriptions.get(row, ""))
                       for row in self.results},
            "published": [dict(column=c.key, **a.as_dict()) for c in self.columns
                          for a in anchors_for(c.dataset, c.protocol, c.horizon)],
            "skipped": self.skipped, "wall_seconds": self.wall_seconds,
        }


# ---------------------------------------------------------------- planning and running

def auto_protocol(horizon: int) -> str:
    """The split a horizon is scored on by default: FSNet/OneNet for H = 1, leak-free DSOF past it."""
    return "fsnet" if horizon == 1 else "dsof"


def plan_columns(datasets: Sequence[str], horizons: Sequence[int], protocol: str = "auto"
                 ) -> tuple[list[Column], list[str]]:
    """Which split each (dataset, horizon) runs on, and what is skipped (with the reason).

    ``auto``: H = 1 on the FSNet/OneNet split; H > 1 on the leak-free DSOF split (ETTh2, ETTm1
    over 20 months). WTH has no DSOF split, so WTH at H > 1 needs ``--protocol fsnet``.

    >>> cols, skipped = plan_columns(["etth2", "wth"], [1, 24])
    >>> [c.key for c in cols]
    ['etth2/fsnet/H1', 'wth/fsnet/H1', 'etth2/dsof/H24']
    >>> len(skipped)
    1
    """
    columns, skipped = [], []
    for h in horizons:
        for ds in datasets:
            proto = protocol if protocol != "auto" else auto_protocol(h)
            if not has_protocol(ds, proto):
                skipped.append(f"{DISPLAY[ds]} H={h}: no {proto.upper()} split for {DISPLAY[ds]} (the leak-free DSOF "
                               f"paper does not report it; FSNet/OneNet H>1 numbers leak labels). "
                               f"Pass --protocol fsnet to run it on the 20/5/75 split without a published anchor.")
                continue
            columns.append(Column(ds, proto, h))
    return columns, skipped


def _as_spec(model: ModelSpec | Callable[[BenchContext], OnlineModel]) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    if callable(model) and not hasattr(model, "forecast"):
        return ModelSpec(getattr(model, "__name__", "model"), model)
    raise TypeError("pass models as ModelSpec(name, build) or build(context) -> OnlineModel factories: "
                    "a model instance carries state and cannot be reused across tasks")


def run(models: Sequence[ModelSpec | Callable[[BenchContext], OnlineModel]] | None = None,
        datasets: Sequence[str] = DEFAULT_DATASETS, horizons: Sequence[int] = DEFAULT_HORIZONS,
        protocol: str = "auto", data_dir: str | Path | None = None, *,
        baselines: Sequence[str] | None = DEFAULT_MODELS, river_budget: float | None = DEFAULT_RIVER_BUDGET,
        command: str | None = None, log: Callable[[str], None] | None = None) -> BenchReport:
    """Run `baselines` (names, see `baseline_specs`) plus the extra `models` on every column."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    for ds in datasets:
        if ds not in FILES:
            raise ValueError(f"unknown dataset {ds!r}; choose from {', '.join(FILES)}")
    available = baseline_specs(river_budget)
    specs: list[ModelSpec] = []
    for name in baselines or ():
        if name not in available:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(available)}")
        specs.append(available[name])
    specs += [_as_spec(m) for m in models or ()]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")

    columns, skipped = plan_columns(datasets, horizons, protocol)
    started = time.perf_counter()
    report = BenchReport(date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                         command=command or "", machine=machine_info(data_dir), columns=columns,
                         splits={}, results={s.name: {} for s in specs}, row_names={},
                         descriptions={s.name: s.description for s in specs}, skipped=skipped)
    for note in skipped:
        log(f"skipped: {note}")
    total = len(columns) * len(specs)
    done = 0
    for col in columns:
        split = load_split(col.dataset, col.protocol, data_dir)
        report.splits[col.key] = split.describe()
        n_origins = len(scored_origins(split.first_target, split.test_end, col.horizon))
        context = BenchContext(col.dataset, col.protocol, col.horizon, split.channels, split.period,
                               split.step_seconds, split.warmup_rows, n_origins, split.test_end)
        for spec in specs:
            done += 1
            where = f"[{done}/{total}] {col.title} ({col.protocol} split) {spec.name}"
            try:
                model = spec.build(context)
            except SkipModel as exc:
                msg = f"{spec.name} on {col.title}: {exc}"
                report.skipped.append(msg)
                log(f"{where}: SKIPPED: {exc}")
                continue
            res = evaluate(model, split.values, split.first_target, split.test_end, col.horizon)
            report.results[spec.name][col.key] = res
            names = report.row_names.get(spec.name, "")
            if res.model not in names.split(" / "):
                report.row_names[spec.name] = f"{names} / {res.model}" if names else res.model
            log(f"{where}: MSE {res.mse:.4f} MAE {res.mae:.4f} ({res.wall_seconds:.1f} s)")
        column_rows = {name: cells[col.key] for name, cells in report.results.items() if col.key in cells}
        _score_after_changes(column_rows, split.first_target - 1, AFTER_CHANGE_SEASONS * split.period)
        _score_paired_overall(column_rows, max(OVERALL_BLOCK_SEASONS * split.period, col.horizon))
    report.wall_seconds = time.perf_counter() - started
    return report


def _score_after_changes(rows: dict[str, EvalResult], first_origin: int, span: int) -> None:
    """Every row's MSE on the same cells: the origins up to `span` rows after any change that
    any adaptd row detected (how fast each recovers; baselines and no-adapt scored alike); and,
    for the PAIRED rows present, their ratio there with a bootstrap interval over change episodes."""
    results = list(rows.values())
    if not results or not any(r.drift_rows for r in results):
        return
    mask = after_changes(results, first_origin, span)
    for res in results:
        res.extra["after_changes_mse"] = float(res.origin_mse[mask].mean())   # type: ignore[index]
        res.extra["after_changes_share"] = float(mask.mean())
        res.extra["changes_detected"] = len(res.drift_rows)
    episodes = change_episodes(mask)
    for name, reference in PAIRED:
        if name in rows and reference in rows and episodes:
            rows[name].extra.setdefault("after_changes_vs", {})[reference] = paired_ratio(
                rows[name], rows[reference], mask, episodes)


def _score_paired_overall(rows: dict[str, EvalResult], block: int) -> None:
    """For the PAIRED rows present, their ratio over all scored cells with a bootstrap interval
    over blocks of `block` consecutive origins (errors are correlated over hours, not weeks; a
    block at least the horizon long keeps one target out of two blocks). A replaced recurrent
    model keeps forecasting long after the seasons scored "after a change"."""
    for name, reference in PAIRED:
        if name not in rows or reference not in rows:
            continue
        arm, ref = rows[name], rows[reference]
        if arm.origin_mse is None or ref.origin_mse is None:
            continue
        n = arm.origin_mse.shape[0]
        starts = list(range(0, max(n - block, 0) + 1, block))   # a short remainder joins the last block
        blocks = list(zip(starts, starts[1:] + [n]))
        arm.extra.setdefault("all_vs", {})[reference] = paired_ratio(
            arm, ref, np.ones_like(arm.origin_mse, dtype=bool), blocks)


def paired_ratio(arm: EvalResult, reference: EvalResult, mask: np.ndarray,
                 episodes: list[tuple[int, int]]) -> dict[str, Any]:
    """arm's MSE over reference's on the `mask`ed cells, with a 95% bootstrap interval that
    resamples `episodes` (origin ranges: change episodes, or blocks of time; none under
    MIN_EPISODES), and the shares of episodes better/worse."""
    a, r = (np.array([res.origin_mse[i:j][mask[i:j]].sum() for i, j in episodes])  # type: ignore[index]
            for res in (arm, reference))
    ratio, lo, hi = (bootstrap_ratio(a, r, BOOTSTRAP, 0) if len(episodes) >= MIN_EPISODES
                     else (float(a.sum() / r.sum()), None, None))
    return {"ratio": ratio, "lo": lo, "hi": hi, "episodes": len(episodes),
            "better": float(np.mean(a < r)), "worse": float(np.mean(a > r))}


def interval_text(paired: dict[str, Any]) -> str:
    """The text " [lo, hi]" of a `paired_ratio`, or "" where it has none (too few episodes)."""
    return "" if paired["lo"] is None else f" [{paired['lo']:.3f}, {paired['hi']:.3f}]"


def change_episodes(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, stop) origins of every run of time in which some channel is marked: the after-
    change cells of one change, or of changes close together in any channels (channels of one
    data set often change together), which move together and are resampled as one.

    >>> change_episodes(np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]], dtype=bool))
    [(0, 3), (4, 5)]
    """
    edges = np.diff(np.concatenate([[0], mask.any(axis=1).astype(np.int8), [0]]))
    return [(int(a), int(b)) for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


# ---------------------------------------------------------------- rendering

def _fmt(x: float | None, bold: bool = False) -> str:
    if x is None:
        return ""
    s = f"{x:.3f}" if x < 100 else f"{x:.1f}"
    return f"**{s}**" if bold else s


def _after_changes_cell(res: EvalResult | None) -> str:
    if res is None or "after_changes_mse" not in res.extra:
        return ""
    detected = f", {len(res.drift_rows)}" if res.drift_rows else ""
    return f"{_fmt(res.extra['after_changes_mse'])} ({res.extra['after_changes_share']:.0%}{detected})"


def _paired_section(report: BenchReport, key: str, intro: str) -> list[str]:
    """The PAIRED rows' ratios stored under `key` ("after_changes_vs" or "all_vs"), one table."""
    pairs = [(name, ref) for name, ref in PAIRED
             if any(ref in res.extra.get(key, {}) for res in report.results.get(name, {}).values())]
    if not pairs:
        return []
    cols = report.columns
    out = [intro, "", "| row / reference | " + " | ".join(c.title for c in cols) + " |",
           "|---|" + "---:|" * len(cols)]
    for name, ref in pairs:
        cells = []
        for c in cols:
            v = report.results[name].get(c.key)
            v = v.extra.get(key, {}).get(ref) if v is not None else None
            cells.append("" if v is None else
                         f"{v['ratio']:.3f}{interval_text(v)}, better in {v['better']:.0%}, "
                         f"worse in {v['worse']:.0%} of {v['episodes']}")
        out.append(f"| {name} / {ref} | " + " | ".join(cells) + " |")
    return out + [""]


def render_markdown(report: BenchReport) -> str:
    cols = report.columns
    out = [f"# adaptd bench accuracy — {report.date}", ""]
    out.append(f"Reproduce: `{report.command}`" if report.command else "")
    m = report.machine
    out.append("")
    out.append(f"Machine: {m.get('cpu', '?')}, {m.get('cpus_usable', '?')} usable of {m.get('cpus', '?')} CPUs, "
               f"{m.get('memory', '?')}; {m.get('platform', '')}; Python {m.get('python', '')}; "
               + ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())
               + f"; adaptd {m.get('adaptd', '?')} (git {m.get('git', '?')}).")
    out.append("")
    out += [
        "Metric: MSE on z-scored data (per channel: mean and population std of the train rows), equal weight",
        "over channels, forecast origins and horizon steps; every channel forecast independently.",
        "Runner: leak-free by construction — at origin t a model has been given rows <= t only, and learns a",
        "target only after observing it. Warm-up (train + validation rows) may be used for fitting; only",
        "targets in the test range are scored.",
        "Splits: H=1 uses the FSNet/OneNet split (ETTm1 = its first 14400 rows); H=24/48 use the leak-free DSOF",
        "split (ETTh2 the same rows; ETTm1 full = all 20 months, borders x4). FSNet/OneNet H>1 numbers leak",
        "labels and are not shown.",
        "",
    ]
    for c in cols:
        out.append(f"- {c.title}: {report.splits.get(c.key, '')}")
    out.append("")
    header = "| method | " + " | ".join(c.title for c in cols) + " |"
    rule = "|---|" + "---:|" * len(cols)

    def best_of(key: str) -> float | None:
        vals = [cells[key].mse for cells in report.results.values() if key in cells]
        return min(vals) if vals else None

    bests = {c.key: best_of(c.key) for c in cols}
    out += ["## MSE (same run; best same-run number in bold)", "", header, rule]
    for row, cells in report.results.items():
        out.append(f"| {row} | " + " | ".join(
            _fmt(cells[c.key].mse, cells[c.key].mse == bests[c.key]) if c.key in cells else "skipped"
            for c in cols) + " |")
    # Published / anchor rows, one per method, in the columns they cover.
    pub: dict[tuple[str, str], dict[str, float]] = {}
    for c in cols:
        for a in anchors_for(c.dataset, c.protocol, c.horizon):
            pub.setdefault((a.kind, a.method), {})[c.key] = a.mse
    for (kind, method), cells in sorted(pub.items(), key=lambda kv: kv[0][0] != "published"):
        label = "published" if kind == "published" else "anchor, computed (not published)"
        out.append(f"| *{label}:* {method} | " + " | ".join(_fmt(cells.get(c.key)) for c in cols) + " |")
    out.append("")
    if any("after_changes_mse" in res.extra for cells in report.results.values() for res in cells.values()):
        out += [f"## MSE in the {AFTER_CHANGE_SEASONS} seasons after a detected change (same run)", "",
                "Scored on the same cells for every row: each channel's origins within "
                f"{AFTER_CHANGE_SEASONS} seasonal periods after any change that any adaptd row detected. "
                "In brackets: that share of all scored cells, and the changes this row detected.", "",
                header, rule]
        for row, cells in report.results.items():
            out.append(f"| {row} | " + " | ".join(_after_changes_cell(cells.get(c.key)) for c in cols) + " |")
        out.append("")
        out += _paired_section(report, "after_changes_vs", (
            "Paired, on those cells: the row's MSE over the reference's, with a 95% bootstrap interval "
            f"over change episodes (runs of time with after-change cells in any channel; none under "
            f"{MIN_EPISODES} episodes), and the shares of episodes where the row's error is lower and higher "
            "(the rest: equal)."))
    overall = _paired_section(report, "all_vs", (
        "A model replaced at a change forecasts until the next one, beyond the seasons scored after it: "
        "the row's MSE over the reference's on every scored cell, with a 95% bootstrap interval over "
        f"blocks of {OVERALL_BLOCK_SEASONS} seasonal periods of origins (none under {MIN_EPISODES} blocks), "
        "and the shares of blocks where the row's error is lower and higher."))
    if overall:
        out += ["## Paired over all scored cells (same run)", ""] + overall
    out += ["## MAE (same run)", "", header, rule]
    for row, cells in report.results.items():
        out.append(f"| {row} | " + " | ".join(_fmt(cells[c.key].mae) if c.key in cells else "skipped"
                                             for c in cols) + " |")
    out.append("")
    out += ["## Wall time: seconds for the whole column (µs of model time per scored origin)", "", header, rule]
    for row, cells in report.results.items():
        out.append(f"| {row} | " + " | ".join(
            f"{cells[c.key].wall_seconds:.1f} ({cells[c.key].us_per_origin:.0f})" if c.key in cells else "skipped"
            for c in cols) + " |")
    out.append("")
    out.append("## Models")
    out.append("")
    for row in report.results:
        name = report.row_names.get(row, row)
        desc = report.descriptions.get(row, "")
        diverged = {c.title: cells[c.key].extra.get("diverged_fallbacks", 0) for c in report.columns
                    if c.key in cells and cells[c.key].extra.get("diverged_fallbacks")}
        note = (" Diverged forecast paths replaced by the last value (channel-origins): "
                + ", ".join(f"{k}: {v}" for k, v in diverged.items()) + ".") if diverged else ""
        out.append(f"- **{row}**: {name}" + (f" — {desc}." if desc else "") + note)
    if report.skipped:
        out += ["", "## Skipped", ""] + [f"- {s}" for s in report.skipped]
    out += ["", f"Total wall time {report.wall_seconds:.0f} s.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- machine, command line

def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read-only: never touch the index
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                              env=env).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(data_dir: str | Path | None = None) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    mem = next((line.split()[1] for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), None)
    packages = {}
    for pkg in ("numpy", "river", "torch"):
        try:
            packages[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            packages[pkg] = "absent"
    try:
        from ... import __version__ as adaptd_version
    except ImportError:
        adaptd_version = "?"
    commit = _git("rev-parse", "--short", "HEAD") or "?"
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += "+uncommitted changes"
    return {
        "cpu": cpu, "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory": f"{int(mem) / 2**20:.1f} GiB RAM" if mem else "?",
        "platform": platform.platform(), "python": platform.python_version(), "packages": packages,
        "adaptd": adaptd_version, "git": commit, "data_dir": str(resolve_data_dir(data_dir)),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def speed_up_malloc() -> bool:
    """Stop glibc from mmapping and unmapping every mid-sized temporary (the RLS updates make
    hundreds of KB of them per step): 2-4x faster here. Process-wide; glibc only."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 256 * 2**20))


def _csv_list(text: str) -> list[str]:
    return [t.strip().lower() for t in text.split(",") if t.strip()]



add_arguments = arguments.accuracy   # the flags of `adaptd bench accuracy`, in a module of their own


def _command(args: argparse.Namespace, prog: str) -> str:
    parts = shlex.split(prog)
    for flag in ("datasets", "horizons", "models", "protocol", "data_dir", "river_budget", "json_out"):
        value = getattr(args, flag, None)
        if value is None:
            continue
        if isinstance(value, float):
            value = f"{value:g}"
        parts += [f"--{flag.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def main(args: argparse.Namespace, extra_models: Sequence[ModelSpec] | None = None) -> int:
    prog = getattr(args, "prog", None) or PROG
    try:
        datasets = _csv_list(args.datasets)
        horizons = [int(h) for h in _csv_list(args.horizons)]
        if not datasets or not horizons or min(horizons) < 1:
            raise ValueError("need at least one dataset and horizons >= 1")
        extra = list(extra_models or ())
        extra_names = {m.name for m in extra}
        if args.models:
            wanted = _csv_list(args.models)
            known = [*baseline_specs(None), *(m.name for m in extra)]
            unknown = [m for m in wanted if m not in known]
            if unknown:   # before any data is read, naming every row there is
                raise ValueError(f"unknown model {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")
            baselines = [m for m in wanted if m not in extra_names]
            extra = [m for m in extra if m.name in wanted]
            models_arg = ",".join(wanted)
        else:
            baselines = list(DEFAULT_MODELS)
            models_arg = ",".join(baselines + [m.name for m in extra])
        args.models = models_arg
        args.datasets, args.horizons = ",".join(datasets), ",".join(map(str, horizons))
        for ds in datasets:  # fail early and clearly if a file is missing
            from .datasets import data_path
            data_path(ds, args.data_dir)
    except DataMissing as exc:
        print(f"adaptd: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"adaptd: bench accuracy: {exc}", file=sys.stderr)
        return 2
    budget = args.river_budget if args.river_budget and args.river_budget > 0 else None
    speed_up_malloc()
    command = _command(args, prog)
    try:
        report = run(extra, datasets, horizons, args.protocol, args.data_dir, baselines=baselines,
                     river_budget=budget, command=command)
    except ValueError as exc:
        print(f"adaptd: bench accuracy: {exc}", file=sys.stderr)
        return 2
    print(render_markdown(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report.as_dict(), indent=1) + "\n")
    return 0
