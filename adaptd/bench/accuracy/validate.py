"""Choosing engine settings on validation rows only: `python -m adaptd.bench.accuracy.validate`.

For each data set, models see the train rows as warm-up and are scored on the validation rows
[train_end, val_end) — rows the accuracy report never scores — so a setting picked here is not
tuned on the held-out test rows. H=1 uses the FSNet split, longer horizons the DSOF split, as
the report does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from ...config import load_config
from ...engine.online import OnlineConfig
from .baselines import baseline_specs
from .datasets import FILES, DataMissing, load_split
from .engine_model import EngineModel
from .report import AFTER_CHANGE_SEASONS, auto_protocol, change_episodes, interval_text, paired_ratio
from .runner import BenchContext, EvalResult, after_changes, evaluate


def _variants(parser: argparse.ArgumentParser, text: str) -> dict[str, dict]:
    """--variants checked before any data is read: a typo should not cost a 5-minute run."""
    try:
        variants = json.loads(text)
    except json.JSONDecodeError as e:
        parser.error(f"--variants is not JSON: {e}")
    fields = {f.name for f in dataclasses.fields(OnlineConfig)}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        parser.error('--variants must look like {"name": {"field": value}}')
    for label, overrides in variants.items():
        unknown = sorted(set(overrides) - fields)
        if unknown:
            parser.error(f"--variants {label}: {', '.join(unknown)} not OnlineConfig fields; "
                         f"choose from {', '.join(sorted(fields))}")
    return variants


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", default="etth2,ettm1,wth")
    parser.add_argument("--horizon", type=int, default=1)
    parser.add_argument("--baselines", default="rls-ar60-relative,rls-ar96",
                        help="comma-separated baseline models scored next to the variants")
    parser.add_argument("--variants", default="{}", help='JSON: {"name": {OnlineConfig field: value}}')
    parser.add_argument("--no-default", action="store_true", help="skip the default settings' row")
    parser.add_argument("--data-dir", help="where ett/ and wth/ are (default ../shared/data)")
    args = parser.parse_args(argv)
    H = args.horizon
    datasets, baselines = (list(filter(None, arg.split(","))) for arg in (args.datasets, args.baselines))
    specs = baseline_specs()
    variants = {**({} if args.no_default else {"default": {}}), **_variants(parser, args.variants)}
    if not variants:
        parser.error("--no-default needs --variants: there would be nothing to score")
    if H < 1:
        parser.error(f"--horizon must be at least 1, got {H}")
    for flag, names, known in (("--datasets", datasets, FILES), ("--baselines", baselines, specs)):
        unknown = [n for n in names if n not in known]
        if unknown:
            parser.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    protocol = auto_protocol(H)
    settings = load_config(None)
    for name in datasets:
        try:
            split = load_split(name, protocol, args.data_dir)
        except DataMissing as e:
            parser.error(str(e))
        values = split.values[: split.val_end]
        ctx = BenchContext(name, protocol, H, split.channels, split.period, split.step_seconds, split.train_end,
                           split.val_end - split.train_end, split.val_end)
        for baseline in baselines:
            result = evaluate(specs[baseline].build(ctx), values, split.train_end, split.val_end, H)
            print(f"{name} H={H}: {baseline} {result.mse:.4f} (mae {result.mae:.4f})", flush=True)
        results: dict[str, EvalResult] = {}
        for label, overrides in variants.items():
            model = EngineModel("adaptd", ctx, settings, adapt=True, init=settings.adapt.init)
            model.config = dataclasses.replace(model.config, **overrides)
            result = results[label] = evaluate(model, values, split.train_end, split.val_end, H)
            print(f"{name} H={H}: {label} {result.mse:.4f} (mae {result.mae:.4f}, {result.wall_seconds:.0f}s)", flush=True)
        _print_after_changes(f"{name} H={H}", results, split.train_end - 1, AFTER_CHANGE_SEASONS * split.period)


def _print_after_changes(where: str, results: dict[str, EvalResult], first_origin: int, span: int) -> None:
    """Every variant's MSE on the same cells: up to `span` rows after a change any variant detected
    (as the report's "after detected change" column; a variant with "adapt": false is the no-adapt row),
    and each one's ratio to the first variant there, with the report's paired interval."""
    if not any(r.drift_rows for r in results.values()):
        return
    mask = after_changes(list(results.values()), first_origin, span)
    episodes = change_episodes(mask)
    reference = next(iter(results))   # "default" unless --no-default
    for label, res in results.items():
        paired = ""
        if label != reference and episodes:
            p = paired_ratio(res, results[reference], mask, episodes)
            paired = (f"; / {reference} {p['ratio']:.3f}{interval_text(p)} over {p['episodes']} episodes, "
                      f"better in {p['better']:.0%}, worse in {p['worse']:.0%}")
        print(f"{where}: {label} after detected changes {float(res.origin_mse[mask].mean()):.4f} "  # type: ignore[index]
              f"({mask.mean():.0%} of cells, {len(res.drift_rows)} detected{paired})", flush=True)


if __name__ == "__main__":
    main()
