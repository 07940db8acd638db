"""Choosing engine settings on validation rows only: `python -m adaptd.bench.accuracy.validate`.

For each H=1 data set, models see the train rows as warm-up and are scored on the validation
rows [train_end, val_end) — rows the accuracy report never scores — so a setting picked here
is not tuned on the held-out test rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from ...config import load_config
from .baselines import baseline_specs
from .datasets import load_split
from .engine_model import EngineModel
from .runner import BenchContext, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", default="etth2,ettm1,wth")
    parser.add_argument("--variants", default="{}", help='JSON: {"name": {OnlineConfig field: value}}')
    args = parser.parse_args()
    variants = {"default": {}, **json.loads(args.variants)}
    settings = load_config(None)
    for name in args.datasets.split(","):
        split = load_split(name, "fsnet")
        values = split.values[: split.val_end]
        ctx = BenchContext(name, "fsnet", 1, split.channels, split.period, split.step_seconds, split.train_end,
                           split.val_end - split.train_end, split.val_end)
        rls = evaluate(baseline_specs()["rls-ar60-relative"].build(ctx), values, split.train_end, split.val_end, 1)
        print(f"{name}: rls-ar60-relative {rls.mse:.4f}", flush=True)
        for label, overrides in variants.items():
            model = EngineModel("adaptd", ctx, settings, adapt=True, init=settings.adapt.init)
            model.config = dataclasses.replace(model.config, **overrides)
            result = evaluate(model, values, split.train_end, split.val_end, 1)
            print(f"{name}: {label} {result.mse:.4f} (mae {result.mae:.4f}, {result.wall_seconds:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
