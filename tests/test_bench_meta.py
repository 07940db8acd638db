"""`adaptd bench meta`: every arm scored on the same tasks, honest intervals, runnable small."""

from __future__ import annotations

import json

import numpy as np
import pytest

import torch

from adaptd.bench.meta import CHOSEN, MEMORY_ARM, MEMORY_OWN, MEMORY_SHARED, REFERENCE, SEASONS, first_steps, synthetic, held_out_tasks
from adaptd.bench.meta_memory import Remembered, chosen_losses, newest_origins
from adaptd.bench.stats import bootstrap_ratio
from adaptd.cli import main
from adaptd.engine.learner import Examples, Initializer, adapt, example_loss
from adaptd.engine.online import OnlineConfig
from daemon_harness import run_cli, write_config

SMALL = OnlineConfig(window=16, patch=4, hidden=8, horizon=6, rls_lags=8, adapt_window=24, adapt_validation=4,
                     adapt_steps=3)


def test_shorter_seasons_score_a_prefix_of_the_same_tasks():
    data = synthetic(20, 24, 0)
    tasks = held_out_tasks(data, SMALL, [8, 16], 96, 1, 24)
    short = first_steps(tasks, 24)
    assert np.array_equal(short.time, tasks.time)
    mask = short.query.mask.numpy()
    offsets = np.arange(24)[:, None] + np.arange(1, 7)[None, :]
    assert mask.shape[1] == 24 and not mask[:, offsets > 24].any()   # nothing past the first season


def test_no_target_after_the_series_next_change_is_scored():
    data = synthetic(40, 24, 0)
    tasks = held_out_tasks(data, SMALL, [8, 16], 96, 1, 24)
    mask = tasks.query.mask.numpy()
    cut = 0
    for row, (j, t) in enumerate(zip(tasks.series, tasks.time)):
        later = [c for c in data.test_changes[j] if c > t]
        assert later == [] or later[0] > t + 24            # a season before the next change, at least
        target_time = t + np.arange(96)[:, None] + np.arange(1, 7)[None, :]
        if later:
            assert not mask[row][target_time >= later[0]].any()
            cut += int(later[0] <= t + 96)
        assert mask[row][target_time < min(later + [t + 97])].all()   # everything before it is
    assert cut > 0                                          # the rule was exercised


def test_bootstrap_interval_brackets_the_ratio_and_excludes_one_for_a_clear_gain():
    rng = np.random.default_rng(0)
    ref = rng.exponential(1.0, 400)
    better = ref * rng.uniform(0.7, 0.9, 400)
    ratio, lo, hi = bootstrap_ratio(better, ref, 500, 0)
    assert lo <= ratio <= hi < 1.0
    same, lo, hi = bootstrap_ratio(ref, ref, 500, 0)
    assert same == lo == hi == 1.0


def test_the_bench_chooses_among_candidates_exactly_as_the_daemon_adapts():
    data = synthetic(20, 24, 0)
    tasks = first_steps(held_out_tasks(data, SMALL, [8, 16], 48, 1, 24), 24)
    init = Initializer.random(SMALL.shape, 0, 0.3)
    n, P = len(tasks), 3
    pool = {k: torch.stack([Initializer.random(SMALL.shape, s + 1, 0.3).params[k][0] + 0.1 * torch.randn(n, *v.shape[1:])
                            for s in range(P)], dim=1) for k, v in init.params.items()}
    valid = torch.ones(n, P, dtype=torch.bool)
    valid[::2, 2] = False                                   # some tasks remember fewer regimes
    memory = Remembered(pool, valid, np.full(n, P))
    losses, won = chosen_losses(init, tasks, 3, 1.0, memory, lookup=1, recent=8)
    never = {k: torch.full_like(v, float("nan")) for k, v in init.params.items()}   # no previous weights
    for i in range(n):
        def one(ex: Examples) -> Examples:
            return Examples(ex.window[i:i + 1], ex.level[i:i + 1], ex.target[i:i + 1], ex.mask[i:i + 1])
        rows = valid[i].nonzero()[:, 0]
        result = adapt(init, never, one(tasks.support), one(tasks.valid), 3, 1.0,
                       {k: v[i, rows] for k, v in pool.items()}, 1, one(newest_origins(tasks.support, 8)))
        assert result.winner == won[i]
        assert float(example_loss(result.params, one(tasks.query))[0]) == pytest.approx(losses[i], rel=1e-4)
    assert len(set(won)) > 1


@pytest.mark.integration
def test_bench_meta_runs_small_and_reports_every_arm(tmp_path):
    config = write_config(tmp_path, sections={"model": {"window": 16, "patch": 4, "hidden": 8, "max_horizon": 6,
                                                        "rls_lags": 8},
                                              "adapt": {"window": 24, "validation": 4, "steps": 3}})
    done = run_cli("bench", "--config", str(config), "meta", "--datasets", "synthetic", "--iterations", "3",
                   "--tasks", "24", "--bootstrap", "50", "--json", timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["command"].startswith("adaptd bench meta")
    arms = report["reports"][0]["arms"]
    assert set(arms) >= {REFERENCE, "random + fine-tune", "pretrained, no fine-tune", "meta (Meta-SGD) + fine-tune",
                         "meta (Reptile) + fine-tune", "online RLS AR (keeps learning)", CHOSEN, MEMORY_OWN, MEMORY_SHARED, MEMORY_ARM}
    for seasons in map(str, SEASONS):
        assert arms[REFERENCE][seasons]["ratio"] == 1.0
        sizes = {arm[seasons]["tasks"] for arm in arms.values()}
        assert len(sizes) == 1 and sizes.pop() > 10                # identical tasks for every arm
        for arm in arms.values():
            assert np.isfinite(arm[seasons]["mean"]) and arm[seasons]["ratio_lo"] <= arm[seasons]["ratio_hi"]


@pytest.mark.parametrize("flag, value", [("--regime-pool", "0"), ("--regime-lookup", "-1"), ("--regime-shared", "5000")])
def test_bench_meta_refuses_regime_settings_the_daemon_would_refuse(flag: str, value: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "meta", flag, value]) == 2
    assert f"{flag} {value}: expected" in capsys.readouterr().err
