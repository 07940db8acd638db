"""Interval widths from the quantile tracker: issued intervals cover what they promise even
when their targets arrive many steps later and the series' volatility comes in spells."""

from __future__ import annotations

import numpy as np

from adaptd.engine.conformal import CEILING, QuantileTracker, lead_units


def delayed_intervals(lead: int, judge_issued: bool, tracked_as: int = 0, n: int = 30_000,
                      seed: int = 0) -> tuple[float, float]:
    """Coverage and mean width of intervals issued at each origin for a target `lead` steps
    later, whose errors overlap (the sum of the next `lead` shocks) and whose volatility drifts
    slowly; the tracker steps as it does at lead `tracked_as` (0: `lead`)."""
    rng = np.random.default_rng(seed)
    log_vol = np.zeros(n + lead)
    for t in range(1, n + lead):
        log_vol[t] = 0.995 * log_vol[t - 1] + 0.1 * rng.normal()
    shocks = rng.normal(size=n + lead) * np.exp(log_vol)
    cumulative = np.concatenate([[0.0], np.cumsum(shocks)])
    score = np.abs(cumulative[lead + 1: n + lead + 1] - cumulative[1: n + 1]) / np.sqrt(lead)
    tracker = QuantileTracker(coverage=0.9, rate=0.02, initial=1.0, leads=np.array([tracked_as or lead]))
    tracker.resize(1)
    issued = np.empty(n)
    slot, first = np.array([0]), np.array([0])
    for t in range(n):
        if t >= lead:   # as the engine does: fold in what matured, then issue the next interval
            o = t - lead
            tracker.update(slot, first, score[o:o + 1], issued[o:o + 1] if judge_issued else None)
        issued[t] = tracker.q[0, 0]
    scored = slice(2000, n - lead)
    return float(np.mean(score[scored] <= issued[scored])), float(np.mean(issued[scored]))


def delayed_coverage(lead: int, judge_issued: bool) -> float:
    return delayed_intervals(lead, judge_issued)[0]


def test_intervals_cover_their_target_at_long_leads():
    for lead in (1, 24, 48):
        assert abs(delayed_coverage(lead, judge_issued=True) - 0.9) < 0.006, lead


def test_judging_a_late_target_by_the_current_width_would_undercover():
    # Why the engine keeps the width each forecast was issued with: the tracker's width when a
    # lead-24 target arrives has already been widened by the misses of overlapping forecasts.
    assert delayed_coverage(24, judge_issued=False) < delayed_coverage(24, judge_issued=True) - 0.01


def test_long_leads_step_slowly_and_so_get_narrower_intervals_at_the_same_coverage():
    # At the lead-1 rate a lead-48 tracker swings about its quantile (a score carries ~1/48 of
    # new information): its intervals cover as well but are wider on average.
    slow_cover, slow_width = delayed_intervals(48, judge_issued=True)
    fast_cover, fast_width = delayed_intervals(48, judge_issued=True, tracked_as=1)
    assert abs(slow_cover - 0.9) < 0.006 and abs(fast_cover - 0.9) < 0.006
    assert slow_width < 0.8 * fast_width   # about 0.6 for these walks


def test_an_interval_unit_moves_from_the_fast_scale_to_the_long_run_one_with_the_lead():
    leads = np.array([1, 3, 48])
    ratio = np.array([4.0, 1.0])   # fast scale / long-run scale at the origin
    units = lead_units(ratio, leads)   # in units of the fast scale
    assert np.allclose(units[1], 1.0)                       # both scales agree: nothing changes
    assert np.isclose(units[0, 0], 0.5)                     # lead 1: sqrt(fast x long-run) = fast / 2
    assert np.isclose(units[0, 2], 4.0 ** (-48 / 49))        # lead 48: almost the long-run scale


def test_a_series_with_tiny_errors_gets_tight_intervals_that_still_cover():
    rng = np.random.default_rng(1)
    tracker = QuantileTracker(coverage=0.9, rate=0.05, initial=1.0)
    tracker.resize(1)
    inside = []
    for t in range(6000):
        score = np.abs(rng.normal(0, 0.01, 1))
        if t >= 2000:
            inside.append(score[0] <= tracker.q[0, 0])
        tracker.update(np.array([0]), np.array([0]), score)
    assert 0.01 < tracker.q[0, 0] < 0.03          # the 90% quantile of |N(0, 0.01)| is 0.016
    assert abs(np.mean(inside) - 0.9) < 0.02


def test_a_width_that_shrank_to_zero_can_grow_again():
    tracker = QuantileTracker(coverage=0.9, rate=0.05, initial=0.0)
    tracker.resize(1)
    for _ in range(50):
        tracker.update(np.array([0]), np.array([0]), np.array([1.0]))
    assert tracker.q[0, 0] > 0.1


def test_enormous_errors_leave_the_width_finite():
    tracker = QuantileTracker(coverage=0.9, rate=0.05, initial=1.0)
    tracker.resize(1)
    for _ in range(20_000):
        tracker.update(np.array([0]), np.array([0]), np.array([1e300]))
    assert np.isfinite(tracker.q[0, 0]) and tracker.q[0, 0] <= CEILING
