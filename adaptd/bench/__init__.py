"""Benchmark commands (`adaptd bench NAME`): ratios against baselines measured in the same run."""

from __future__ import annotations

import argparse

from ..config import Settings


def run_bench(name: str, settings: Settings, args: argparse.Namespace) -> int:
    if name == "ingest":
        from .ingest import main
        return main(args)
    if name == "latency":
        from .latency import main as latency
        return latency(args)
    if name == "adapt":
        from .adapt import main as adapt
        return adapt(settings, args)
    if name == "soak":
        from .soak import main as soak
        return soak(args)
    if name == "meta":
        from .meta import main as meta
        return meta(settings, args)
    if name == "coldstart":
        from .coldstart import main as coldstart
        return coldstart(settings, args)
    if name == "accuracy":
        from .accuracy.engine_model import engine_specs
        from .accuracy.report import main as accuracy
        return accuracy(args, extra_models=engine_specs(settings))
    raise SystemExit(f"adaptd: unknown benchmark {name!r}")
