"""The mixture of experts' weights: they follow recent losses, except the anchored share."""

from __future__ import annotations

import numpy as np
import pytest

from adaptd.engine.mixture import Mixture

PRIOR = np.array([0.5, 0.5, 0.0])


def weights_after(mixture: Mixture, sq_errors: list[float], times: int = 200) -> np.ndarray:
    mixture.resize(1, 1)
    for _ in range(times):
        mixture.update(np.array([0]), np.array([0]), np.sqrt(np.array([sq_errors])))
    return mixture.weights(np.array([0]), np.eye(1))[0, :, 0]


def test_unanchored_weights_go_to_the_expert_that_has_been_best_lately():
    w = weights_after(Mixture(3, eta=4.0), [1.0, 1.0, 0.1])
    assert w[2] > 0.99


def test_anchored_weights_keep_their_share_on_the_prior_while_the_experts_are_comparable():
    w = weights_after(Mixture(3, eta=4.0, anchor=0.5, prior=PRIOR), [1.0, 1.0, 0.4])
    assert w.sum() == pytest.approx(1.0)
    assert w[0] >= 0.25 and w[1] >= 0.25 and w[2] <= 0.5
    assert w[2] > 0.49                             # the adaptive half still follows the best


def test_an_expert_far_worse_than_the_best_loses_its_anchored_share():
    # An RLS fitted to a noiseless cycle forecasts hundreds of scale units off after a level shift.
    w = weights_after(Mixture(3, eta=4.0, anchor=0.5, prior=PRIOR, gate=3.0), [400.0, 1.0, 1.0])
    assert w[0] < 1e-3 and w[1] >= 0.5            # the anchor's share goes to the sound prior expert
    both = weights_after(Mixture(3, eta=4.0, anchor=0.5, prior=PRIOR, gate=3.0), [40.0, 40.0, 1.0])
    assert both[2] > 0.99                          # no sound prior expert: the weights follow the losses
    within = weights_after(Mixture(3, eta=4.0, anchor=0.5, prior=PRIOR, gate=3.0), [2.9, 1.0, 1.0])
    assert within[0] >= 0.25                       # under the gate: anchored as before


def test_a_fully_anchored_mixture_is_the_fixed_blend():
    w = weights_after(Mixture(3, eta=4.0, anchor=1.0, prior=PRIOR), [0.25, 0.1, 0.1])
    assert w.tolist() == PRIOR.tolist()


@pytest.mark.parametrize("prior", [[0.5, 0.5], [0.6, 0.6, 0.0], [1.5, -0.5, 0.0]])
def test_a_prior_that_is_not_a_blend_of_the_experts_is_refused(prior):
    with pytest.raises(ValueError, match="non-negative weights summing to 1"):
        Mixture(3, anchor=0.5, prior=np.array(prior))


def test_rows_left_unanchored_follow_their_losses_alone():
    # The engine leaves young series (cold starts) unanchored: their RLS has learnt little.
    mixture = Mixture(3, eta=4.0, anchor=0.5, prior=PRIOR)
    mixture.resize(2, 1)
    for _ in range(200):
        mixture.update(np.array([0, 1]), np.array([0, 0]), np.sqrt(np.array([[1.0, 1.0, 0.4], [1.0, 1.0, 0.4]])))
    w = mixture.weights(np.array([0, 1]), np.eye(1), anchored=np.array([True, False]))[:, :, 0]
    assert w[0, 2] == pytest.approx(0.5, abs=0.02)   # anchored: half stays on the prior
    assert w[1, 2] > 0.98                            # unanchored: all on the best expert


def learnt_blend(rls: np.ndarray, gru: np.ndarray) -> np.ndarray:
    """The anchor's learnt blend after these errors."""
    mixture = Mixture(3, eta=4.0, anchor=1.0, prior=PRIOR, blend_memory=0.01)
    mixture.resize(1, 1)
    for r, g in zip(rls, gru):
        mixture.update(np.array([0]), np.array([0]), np.array([[r, g, 1.0]]))
    return mixture.learnt_blend(np.array([0]))[0, :, 0]


def test_a_learnt_blend_weighs_the_experts_by_their_error_variances():
    rng = np.random.default_rng(0)
    rls, gru = rng.normal(0, 1.0, 3000), rng.normal(0, 2.0, 3000)
    w = learnt_blend(rls, gru)
    # Independent errors: weights in inverse proportion to the variances, 4:1 (shrunk a little).
    assert w[0] == pytest.approx(0.8, abs=0.05) and w[1] == pytest.approx(0.2, abs=0.05) and w[2] == 0
    # It minimises the blend's error, not each expert's: errors that cancel at 2:1 get 2:1
    # (by their variances alone, 4:1).
    common = rng.normal(0, 1.0, 3000)
    w = learnt_blend(common + rng.normal(0, 0.1, 3000), -2 * common + rng.normal(0, 0.1, 3000))
    assert w[0] == pytest.approx(2 / 3, abs=0.04) and w[1] == pytest.approx(1 / 3, abs=0.04)


def test_a_learnt_blend_weighs_errors_in_the_units_it_is_given():
    # Volatile stretches (factor 10) dominate a mean squared error: there RLS is better; in calm
    # ones (factor 0.1) the GRU is, by more in the normalised units each expert is scored in.
    rls = np.tile([0.1, 2.0], 1500)
    gru = np.tile([0.2, 1.0], 1500)
    factor = np.tile([10.0, 0.1], 1500)
    mixture = Mixture(3, eta=4.0, anchor=1.0, prior=PRIOR, blend_memory=0.01)
    mixture.resize(2, 1)
    for r, g, f in zip(rls, gru, factor):
        mixture.update(np.array([0, 1]), np.array([0, 0]), np.array([[r, g, 1.0], [r, g, 1.0]]), np.array([f, 1.0]))
    w = mixture.learnt_blend(np.array([0, 1]))[:, :, 0]
    assert w[0, 0] > 0.7 and w[1, 0] < 0.3


def test_a_learnt_blend_stays_a_blend_and_is_the_prior_before_any_error():
    mixture = Mixture(3, eta=4.0, anchor=1.0, prior=PRIOR, blend_memory=0.01)
    mixture.resize(2, 1)
    assert mixture.learnt_blend(np.array([0]))[0, :, 0].tolist() == PRIOR.tolist()
    # A worse expert whose errors go the same way as the better one's would take a negative
    # weight in the unconstrained optimum: the blend keeps it at 0.
    rng = np.random.default_rng(1)
    common = rng.normal(0, 1.0, 2000)
    w = learnt_blend(common, 3 * common + rng.normal(0, 0.1, 2000))
    assert w[0] == pytest.approx(1.0) and w[1] == pytest.approx(0.0) and (w >= 0).all()
    # Non-finite errors are not learnt; huge ones are bounded.
    mixture.update(np.array([1, 1]), np.array([0, 0]), np.array([[np.nan, 1.0, 1.0], [1e300, 1.0, 1.0]]))
    assert np.isfinite(mixture.moments).all()
    assert np.isfinite(mixture.weights(np.array([1]), np.eye(1))).all()


def test_a_learnt_blend_on_an_expert_the_gate_took_out_leaves_the_anchor_to_the_other():
    mixture = Mixture(3, eta=4.0, anchor=0.5, prior=PRIOR, gate=3.0, blend_memory=0.01)
    mixture.resize(1, 1)
    # The record of RLS erring 0.5 where the GRU erred 1.5, the same way: the blend is all RLS ...
    mixture.moments[0, :, :, 0] = [[0.25, 0.75], [0.75, 2.25]]
    assert mixture.learnt_blend(np.array([0]))[0, :, 0].tolist() == [1.0, 0.0, 0.0]
    # ... and lately RLS is broken (a level shift in a smooth series), the last value the best.
    mixture.loss[0, :, 0] = [400.0, 1.0, 0.64]
    w = mixture.weights(np.array([0]), np.eye(1))[0, :, 0]
    # As with the fixed blend; the losses alone would give the last value nine tenths.
    assert w[0] < 1e-3 and w[1] >= 0.5


def test_a_learnt_blend_starts_from_an_unequal_prior_too():
    mixture = Mixture(3, anchor=1.0, prior=np.array([0.7, 0.3, 0.0]), blend_memory=0.01)
    mixture.resize(1, 2)
    start = mixture.learnt_blend(np.array([0]))[0]
    assert np.allclose(start, [[0.7, 0.7], [0.3, 0.3], [0.0, 0.0]], atol=0.01)   # the shrinkage: 0.694
    mixture.resize(3, 2)                  # more series: the first keeps its record
    mixture.update(np.array([0]), np.array([1]), np.array([[1.0, 2.0, 0.0]]))
    before = mixture.moments[0].copy()
    mixture.resize(8, 2)
    np.testing.assert_array_equal(mixture.moments[0], before)


def test_a_learnt_blend_needs_a_prior_of_two_experts():
    with pytest.raises(ValueError, match="a learnt blend is of two experts"):
        Mixture(3, anchor=0.5, prior=np.array([0.4, 0.3, 0.3]), blend_memory=0.01)
    Mixture(3, anchor=0.5, prior=np.array([0.4, 0.3, 0.3]))            # a fixed blend may weigh any
