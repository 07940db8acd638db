"""Drift adaptation's choice among candidates: the lowest loss on the newest points wins, and a
candidate that is not finite never does."""

from __future__ import annotations

import math

import torch

from adaptd.engine.gru import GRUShape
from adaptd.engine.learner import Examples, Initializer, adapt, preselect

torch.set_num_threads(1)
SHAPE = GRUShape(window=8, patch=2, hidden=4, horizon=3)
TARGET = torch.tensor([1.0, -2.0, 0.5])


def examples(n: int = 12) -> Examples:
    """Windows and levels of zeros whose targets are always TARGET: bias = TARGET fits exactly."""
    return Examples(torch.zeros(1, n, SHAPE.window), torch.zeros(1, n), TARGET.expand(1, n, 3).clone(),
                    torch.ones(1, n, 3))


def theta(step: float = 0.05, seed: int = 0) -> Initializer:
    return Initializer.random(SHAPE, seed, step)


def with_bias(init: Initializer, bias: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {k: v.clone() for k, v in init.params.items()}
    params["bias"] = bias.reshape(1, 3).clone()
    return params


def stacked(*rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def test_the_fine_tuned_initializer_wins_when_the_steps_help():
    init = theta(step=0.5)
    result = adapt(init, with_bias(init, -TARGET), examples(), examples(), steps=5)
    assert result.winner == "finetuned" and result.replaced
    assert result.losses["finetuned"] < result.losses["init"] < result.losses["previous"]


def test_the_initializer_as_it_is_wins_when_the_steps_hurt():
    init = theta(step=0.5)
    # Training targets point the wrong way; the newest points agree with θ* (no change).
    train = Examples(*(t for t in (examples().window, examples().level, -5 * examples().target, examples().mask)))
    valid = Examples(examples().window, examples().level, torch.zeros(1, 12, 3), examples().mask)
    result = adapt(init, with_bias(init, TARGET), train, valid, steps=5)
    assert result.winner == "init" and result.replaced
    for k, v in result.params.items():
        assert torch.equal(v, init.params[k])


def test_a_remembered_regime_wins_when_it_fits_and_says_which():
    init = theta()
    memory = stacked(with_bias(init, -TARGET), with_bias(init, TARGET), with_bias(init, 3 * TARGET))
    result = adapt(init, with_bias(init, 2 * TARGET), examples(), examples(), steps=2, memory=memory)
    assert (result.winner, result.remembered) == ("memory", 1)
    assert result.losses["memory"] < min(result.losses["finetuned"], result.losses["init"], result.losses["previous"])


def test_the_previous_weights_are_kept_when_they_score_best():
    init = theta()
    result = adapt(init, with_bias(init, TARGET), examples(), examples(), steps=2,
                   memory=with_bias(init, -TARGET))
    assert result.winner == "previous" and not result.replaced and result.remembered == -1


def test_candidates_that_are_not_finite_never_win():
    init = theta()
    broken = with_bias(init, TARGET)
    broken["w_h"][0, 0, 0] = float("nan")
    result = adapt(init, with_bias(init, 5 * TARGET), examples(), examples(), steps=2,
                   memory=stacked(broken, with_bias(init, -TARGET)))
    assert (result.winner, result.remembered) != ("memory", 0)   # the closest to the target, were it finite
    assert all(bool(torch.isfinite(v).all()) for v in result.params.values())
    # Everything broken: the series keeps what it has.
    nan_init = Initializer({k: torch.full_like(v, float("nan")) for k, v in init.params.items()}, init.step_sizes,
                           "meta")
    current = with_bias(init, TARGET)
    result = adapt(nan_init, current, examples(), examples(), steps=2, memory=broken)
    assert result.winner == "previous" and math.isnan(result.losses["init"])


def test_without_steps_the_initializer_is_one_candidate_not_two():
    init = theta()
    result = adapt(init, with_bias(init, 5 * TARGET), examples(), examples(), steps=0)
    assert result.winner == "init" and "finetuned" not in result.losses


def test_of_many_remembered_regimes_those_forecasting_the_newest_points_best_compete():
    init = theta()
    pool = stacked(*(with_bias(init, f * TARGET) for f in (-1.0, 3.0, 0.9, 1.0, 2.0)))
    assert preselect(pool, examples(), 2).tolist() == [3, 2]
    result = adapt(init, with_bias(init, 5 * TARGET), examples(), examples(), steps=2, memory=pool, lookup=1)
    assert (result.winner, result.remembered) == ("memory", 3)     # an index into the whole pool
    # Ranked on `recent` when given: there the target is 2 x TARGET.
    recent = Examples(examples().window, examples().level, 2 * examples().target, examples().mask)
    assert preselect(pool, recent, 1).tolist() == [4]


def test_remembered_regimes_are_kept_in_order_when_no_recent_origin_has_a_known_target():
    # adapt.window // 4 <= adapt.validation: the engine's `recent` holds no origin at all.
    init = theta()
    pool = stacked(*(with_bias(init, f * TARGET) for f in (-1.0, 3.0, 1.0)))
    none = Examples(torch.zeros(1, 0, SHAPE.window), torch.zeros(1, 0), torch.zeros(1, 0, 3), torch.zeros(1, 0, 3))
    assert preselect(pool, none, 2).tolist() == [0, 1]
    result = adapt(init, with_bias(init, 5 * TARGET), examples(), examples(), steps=2, memory=pool, lookup=2,
                   recent=none)
    assert result.winner != "memory" or result.remembered in (0, 1)


def test_the_winning_remembered_regime_is_named_by_its_row_in_the_whole_pool():
    init = theta()
    pool = stacked(*(with_bias(init, f * TARGET) for f in (-1.0, 3.0, 0.9, 1.0, 2.0)))
    recent = Examples(examples().window, examples().level, 1.8 * examples().target, examples().mask)
    assert preselect(pool, recent, 2).tolist() == [4, 3]
    # The newest points want TARGET: the second of the two preselected wins.
    result = adapt(init, with_bias(init, 5 * TARGET), examples(), examples(), steps=2, memory=pool, lookup=2,
                   recent=recent)
    assert (result.winner, result.remembered) == ("memory", 3)


def test_with_a_kept_share_each_new_candidate_is_scored_and_loaded_partway_back_to_the_current_weights():
    init = theta()
    current = with_bias(init, 3 * TARGET)
    result = adapt(init, current, examples(), examples(), steps=0, keep=0.25)
    assert result.winner == "init"
    for k, v in result.params.items():
        assert torch.allclose(v, 0.75 * init.params[k] + 0.25 * current[k])
    as_is = adapt(init, current, examples(), examples(), steps=0)
    assert as_is.losses["previous"] == result.losses["previous"]   # the current weights are not moved
    assert as_is.losses["init"] != result.losses["init"]           # the candidate scored is the one loaded


def test_a_kept_share_leaves_the_current_weights_alone_when_they_score_best():
    init = theta()
    current = with_bias(init, TARGET)
    result = adapt(init, current, examples(), examples(), steps=2, keep=0.5)
    assert result.winner == "previous"
    for k, v in result.params.items():
        assert torch.equal(v, current[k])
