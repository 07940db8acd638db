"""The flags of `adaptd bench accuracy`, `meta`, `coldstart` and `soak`, and the defaults they show.

Apart from the benchmarks' code so that building the `adaptd` argument parser loads neither
torch, numpy nor the engine: every command builds the whole parser, and an operator's
`adaptd forecast` should start in a fraction of a second. Import only the standard library here.
"""

from __future__ import annotations

import argparse

# bench accuracy
ACCURACY_DATASETS = ("etth2", "ettm1", "wth")   # the keys of accuracy.datasets.FILES
BASELINES = ("repeat-last", "seasonal-naive", "rls-ar60", "rls-ar96", "rls-ar60-relative", "rls-ar96-relative",
             "rls-ar60-raw", "snarimax", "holt-winters")   # the keys of accuracy.baselines.baseline_specs()
DEFAULT_MODELS = ("repeat-last", "seasonal-naive", "rls-ar60", "rls-ar96", "rls-ar60-relative", "rls-ar96-relative",
                  "snarimax", "holt-winters")
DEFAULT_DATASETS = ("etth2", "ettm1", "wth")
DEFAULT_HORIZONS = (1, 24, 48)
DEFAULT_RIVER_BUDGET = 900.0

# bench meta
REGIME_POOL = 16   # engine.regimes.POOL, the engine's own default


def at_least(low: int):  # type: ignore[no-untyped-def]
    """An argparse type: a whole number from `low` up (argparse then names the flag and exits 2)."""
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text}: expected a whole number from {low} up")
        return value
    return whole


def seed(text: str) -> int:
    """An argparse type: a seed np.random.seed takes, 0 to 2**32 - 1 (replay's)."""
    value = at_least(0)(text)
    if value >= 2 ** 32:
        raise argparse.ArgumentTypeError(f"{text}: expected a whole number from 0 to {2 ** 32 - 1}")
    return value


def ages(text: str) -> list[int]:
    """An argparse type: comma-separated ages (observations seen), each at least 1."""
    found = [at_least(1)(part.strip()) for part in text.split(",") if part.strip()]
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ages such as 4,8,12")
    return found


def accuracy(p: argparse.ArgumentParser) -> None:
    """The flags of `adaptd bench accuracy` (for the CLI to register)."""
    p.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                   help=f"comma-separated, from {','.join(ACCURACY_DATASETS)} (default: all)")
    p.add_argument("--horizons", default=",".join(map(str, DEFAULT_HORIZONS)),
                   help="comma-separated forecast horizons (default 1,24,48)")
    p.add_argument("--models", default=None,
                   help=f"comma-separated model names (default: {','.join(DEFAULT_MODELS)} plus any registered "
                        f"extra models); available baselines: {','.join(BASELINES)}")
    p.add_argument("--protocol", choices=("auto", "fsnet", "dsof"), default="auto",
                   help="split: auto = FSNet/OneNet for H=1, leak-free DSOF for H>1 (default)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="directory holding ett/ and wth/ (default: ../shared/data relative to the repo root)")
    p.add_argument("--river-budget", type=float, default=DEFAULT_RIVER_BUDGET, metavar="SECONDS",
                   help="skip a river model on a column when its estimated run time exceeds this "
                        f"(printed, never silent; default {DEFAULT_RIVER_BUDGET:.0f}; 0 = no limit)")
    p.add_argument("--json-out", default=None, metavar="FILE", help="also write all numbers as JSON")


def meta(p: argparse.ArgumentParser) -> None:
    """The flags of `adaptd bench meta`."""
    p.add_argument("--datasets", default="synthetic,m4", help="comma-separated: synthetic, m4 (default both)")
    p.add_argument("--iterations", type=at_least(1), default=300, help="meta-training iterations per algorithm")
    p.add_argument("--tasks", type=at_least(1), default=400, help="test tasks per dataset")
    p.add_argument("--period", type=at_least(1), default=24, help="steps per season (M4 Hourly: 24)")
    p.add_argument("--bootstrap", type=at_least(1), default=2000, help="bootstrap resamples for the ratio intervals")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--data-dir", help="where ett/, wth/ and m4/ are (default ../shared/data)")
    p.add_argument("--regime-memory", type=int, default=4, help="remembered regimes per series (0: arm off)")
    p.add_argument("--regime-shared", type=int, default=64, help="remembered regimes shared by all series (0: arm off)")
    p.add_argument("--regime-lookup", type=int, default=1, help="remembered regimes fine-tuned at a drift (0: none)")
    p.add_argument("--regime-pool", type=int, default=REGIME_POOL,
                   help="remembered regimes nearest by key that are ranked by forecast at a drift")
    p.add_argument("--json", action="store_true")


def coldstart(p: argparse.ArgumentParser) -> None:
    """The flags of `adaptd bench coldstart`."""
    p.add_argument("--datasets", default="m4,etth2,wth,ettm1", help="comma-separated: m4, etth2, wth, ettm1")
    p.add_argument("--ages", type=ages, default="4,8,12,24,36,47",
                   help="observations seen when the forecasts are issued")
    p.add_argument("--stride", type=int, default=0,
                   help="steps between cold starts in one series (default: 96 for M4, 240 ETTh2, 480 others)")
    p.add_argument("--max-starts", type=at_least(0), default=0, help="at most this many cold starts per dataset (0: all)")
    p.add_argument("--bootstrap", type=at_least(1), default=1000, help="bootstrap resamples for the ratio intervals")
    p.add_argument("--data-dir", help="where ett/, wth/ and m4/ are (default ../shared/data)")
    p.add_argument("--rows", choices=("test", "validation"), default="test",
                   help="validation: rows no reported figure uses, for choosing settings")
    p.add_argument("--json", action="store_true")


def soak(p: argparse.ArgumentParser) -> None:
    """The flags of `adaptd bench soak`."""
    p.add_argument("--clients", type=int, default=64, help="concurrent client connections (threads; default 64)")
    p.add_argument("--seconds", type=float, default=120.0, help="length of the timed run (default 120)")
    p.add_argument("--series", type=int, default=1000, help="series, shared out among the clients (default 1000)")
    p.add_argument("--rate", type=float, default=1000.0,
                   help="steady-phase ingest, records/s over all clients (default 1000: one hourly step per "
                        "series per second at 1000 series)")
    p.add_argument("--batch", type=int, default=100, help="records per steady-phase ingest request (default 100)")
    p.add_argument("--forecast-ratio", type=int, default=20,
                   help="forecast requests per steady-phase ingest request, spread between them (default 20)")
    p.add_argument("--horizon", type=int, default=24, help="forecast horizon (default 24)")
    p.add_argument("--storm-every", type=float, default=30.0,
                   help="seconds between drift storms (a random third of the series change; 0 = none; default 30)")
    p.add_argument("--overload-fraction", type=float, default=0.2,
                   help="final fraction of the run without pacing (0 = no overload phase; default 0.2)")
    p.add_argument("--overload-batch", type=int, default=10_000,
                   help="records per ingest request in the overload phase (default 10000)")
    p.add_argument("--preload", type=int, default=136,
                   help="hourly steps of every series ingested and learnt before the clock starts; from 136 on, "
                        "a third of the series change at step 72, so that the first adaptations come in the "
                        "warm-up half of the steady phase (default 136)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds a client waits for one answer before counting a failure (default 60, as the CLI)")
    p.add_argument("--rss-slope-limit", type=float, default=2.0, metavar="MB_PER_MIN",
                   help="largest acceptable RSS growth over the second half of the steady phase, beyond what "
                        "the filling per-series history buffers explain (default 2)")
    p.add_argument("--store-url", default=None,
                   help="SQLAlchemy URL of an empty PostgreSQL database to use instead of SQLite in a temp dir")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
