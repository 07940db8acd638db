"""`adaptd meta-train` and `adaptd initializers`."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..cli import _fail
from ..config import Settings
from ..store import Store, StoreError
from .job import NotEnoughData, run
from .sources import series_from_m4, series_from_store
from .train import Progress


def meta_train(settings: Settings, args: argparse.Namespace) -> int:
    if args.iterations is not None and args.iterations < 1:
        return _fail(f"--iterations {args.iterations}: expected at least 1", 2)
    if args.export:   # told now, not after the training it would have saved (and no file made yet)
        target = Path(args.export)
        if target.is_dir() or not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
            return _fail(f"--export {args.export}: not a file in a writable folder", 2)
    try:
        # Training on the store's history needs the store; an M4 file run creates one to save in.
        store = Store.open(settings.store.url, settings.store.sqlite_synchronous, settings.store.pool_size,
                           must_exist=not args.m4)
    except StoreError as exc:
        return _fail(str(exc), 2)
    try:
        if not args.no_progress:   # before the bar: reading a large store takes a while
            print(f"meta-train: reading {args.m4 or 'the store'} ...", file=sys.stderr, flush=True)
        try:
            series, detections = (series_from_m4(args.m4), {}) if args.m4 else series_from_store(
                store, settings.meta.max_series, settings.meta.max_history)
        except (OSError, ValueError) as exc:
            return _fail(f"{args.m4}: {exc}", 2)
        bar = None
        if not args.no_progress:
            from tqdm import tqdm
            bar = tqdm(total=args.iterations or settings.meta.iterations, unit="it", desc="meta-train",
                       disable=None, leave=False)

        def progress(p: Progress) -> None:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{p.loss:.4f}", tasks_s=f"{p.tasks_per_second:.0f}")
            if args.progress_lines:
                print(json.dumps({"progress": {"iteration": p.iteration, "iterations": p.iterations,
                                               "loss": p.loss if math.isfinite(p.loss) else None,
                                               "tasks_per_second": round(p.tasks_per_second, 1),
                                               "eta_s": round(p.eta, 1)}}), flush=True)
        try:
            report = run(settings, store, series, args.iterations, args.algorithm, args.seed,
                         promote=not args.no_promote, progress=progress, detections=detections,
                         from_pretrained=args.from_pretrained)
        except NotEnoughData as exc:
            return _fail(f"{exc} ({len(series)} series found)", 3)
        finally:
            if bar is not None:
                bar.close()
    finally:
        store.close()
    if args.export:
        Path(args.export).write_bytes(report.payload)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        verdict = "promoted" if report.promoted else "stored, not promoted (did not beat the current one)"
        print(f"initializer version {report.version} ({report.algorithm}, {report.series} series, "
              f"{report.seconds:.0f} s): {verdict}")
        cold = report.parts.get("cold_start")
        detail = "" if cold is None else (f" = post-adaptation MSE {report.parts['post_adaptation']:.4f} + "
                                          f"{settings.meta.cold_start_weight:g} x cold-start MSE {cold:.4f}")
        print(f"  validation score {report.val_score:.4f}{detail}")
        for name, score in report.baselines.items():
            print(f"  {name}: {score:.4f}")
    return 0


def list_initializers(settings: Settings, args: argparse.Namespace) -> int:
    try:
        store = Store.open(settings.store.url, settings.store.sqlite_synchronous, settings.store.pool_size,
                           must_exist=True)
    except StoreError as exc:
        return _fail(str(exc), 2)
    try:
        rows = store.initializer_list()
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no initializers stored yet: run `adaptd meta-train`")
        return 0
    print(f"{'version':>7}  {'algorithm':<9}  {'promoted':<8}  {'val score':>9}  {'series':>6}  created")
    for row in rows:
        training: dict[str, Any] = row["training"] or {}
        score = f"{row['val_score']:.4f}" if row["val_score"] is not None else "-"
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(row["created_at"]))
        print(f"{row['version']:>7}  {row['algorithm']:<9}  {'yes' if row['promoted'] else 'no':<8}  "
              f"{score:>9}  {training.get('series', '-'):>6}  {created} UTC")
    return 0
