"""Meta-learning tasks: what the daemon sees at a drift, and what it must then forecast.

A task is one series at one detection time t. Its support is exactly what an adaptation at t
trains on (`Adapting._support` in engine/adapting.py): the `adapt_window` origins before t,
with targets observed at least `validation` steps before t. Its query is the next `query`
origins from t on, with targets up to t + query: the support never sees a query target. Detection times are drawn
around known changes (a change plus a detection delay the daemon's detectors produce), at the
detections the daemon recorded in its store, and at ordinary times, so the initializer is
trained for false alarms as well as real changes.

Where the series' next known change comes before t + query, the query stops there: a target
after it measures a jump no forecaster issued at t can know of, common to every arm, and a
few such targets would otherwise outweigh all the others (bench meta on synthetic changes: 2%
of the targets of two seasons, 61% of the squared error).

>>> import numpy as np
>>> from adaptd.engine.online import OnlineConfig
>>> c = OnlineConfig(window=8, patch=2, hidden=4, horizon=3, rls_lags=4, adapt_window=6, adapt_validation=2)
>>> y = np.sin(np.arange(120) / 3.0)
>>> tasks = sample_tasks(SeriesPool([y], c), 5, query=4, rng=np.random.default_rng(0))
>>> tasks.support.window.shape, tasks.query.window.shape
(torch.Size([5, 6, 8]), torch.Size([5, 4, 8]))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from ..engine.features import MIN_SCALE, normalisation_path, series_examples, young_examples
from ..engine.learner import Examples
from ..engine.online import OnlineConfig

# Detection delays (steps after a change) to draw from when none were measured: ADWIN on the
# daemon's residuals fires a few to a few dozen steps after a real level or dynamics change.
DEFAULT_DELAYS = (4, 8, 12, 16, 24, 32, 48)
# A cold start's weight (young scale / series' spread, squared) at most: see sample_cold_starts.
# Over M4, ETTh2 and WTH series the median weight is 0.04 and the largest ~18; the cap was
# neutral on validation (BENCHMARKS, cold start).
MAX_YOUNG_WEIGHT = 1.0
# A spliced series: at least this many values of one series' span, then of another's (more where
# the window, support, delays or query need it: `with_splices`).
SPLICE_BEFORE, SPLICE_AFTER = 300, 200


@dataclass(frozen=True)
class Tasks:
    support: Examples    # (n, adapt_window, ...)
    query: Examples      # (n, query, ...)
    series: np.ndarray   # (n,) index of each task's series in its pool
    time: np.ndarray     # (n,) detection time of each task
    valid: Examples | None = None   # the support origins' newest `validation` targets (the daemon
                                    # chooses among its candidates on them), if cut

    def __len__(self) -> int:
        return int(self.series.size)


class SeriesPool:
    """Series prepared once (normalised examples at every origin) to cut many tasks from.

    `changes[i]` lists known change times of series i (synthetic data, spliced series);
    `detections[i]` the times the daemon's detectors fired on it (recorded drift events: a
    task there sees what that adaptation saw); `span` restricts detection times to
    [start, stop) per series (held-out time ranges).
    """

    def __init__(self, series: Sequence[np.ndarray], config: OnlineConfig,
                 changes: Sequence[Sequence[int]] | None = None,
                 span: Sequence[tuple[int, int]] | None = None,
                 detections: Sequence[Sequence[int]] | None = None):
        self.config = config
        self.series = [np.asarray(y, dtype=np.float64) for y in series]
        self.examples = [series_examples(np.asarray(y, dtype=np.float64), config.window, config.horizon,
                                         config.scale_rate, config.mean_rate) for y in series]
        self.lengths = np.array([len(y) for y in series])
        self.changes = [list(c) for c in changes] if changes is not None else [[] for _ in series]
        self.detections = [list(d) for d in detections] if detections is not None else [[] for _ in series]
        self.span = list(span) if span is not None else [(0, n) for n in self.lengths]
        self.weight = self.lengths.astype(np.float64)   # how often tasks are drawn from each

    def detection_range(self, i: int, query: int) -> tuple[int, int]:
        """Detection times t whose support origins and query targets all lie in the series."""
        c = self.config
        first = c.window - 1 + c.adapt_window          # the oldest support origin has a full window
        last = self.lengths[i] - query - 1             # the newest query target exists
        start, stop = self.span[i]
        return max(first, start), min(last, stop - query - 1)

    def next_change(self, i: int, t: int) -> int:
        """Series i's first known change or recorded detection after time t (a detection comes
        after the change it found)."""
        return next_change((*self.changes[i], *self.detections[i]), t)

    def usable(self, query: int) -> np.ndarray:
        return np.array([lo < hi for lo, hi in (self.detection_range(i, query) for i in range(len(self.lengths)))])

    def __add__(self, other: "SeriesPool") -> "SeriesPool":
        """Both pools' series in one (their examples are not computed again)."""
        joined = copy.copy(self)
        for cached in ("room", "spread"):   # cached properties of self's series alone
            joined.__dict__.pop(cached, None)
        for name in ("series", "examples", "changes", "detections", "span"):
            setattr(joined, name, getattr(self, name) + getattr(other, name))
        joined.lengths = np.concatenate([self.lengths, other.lengths])
        joined.weight = np.concatenate([self.weight, other.weight])
        return joined

    @cached_property
    def room(self) -> np.ndarray:
        """Values in each series' span: a cold start needs more than a window of them."""
        return np.array([stop - start for start, stop in self.span])

    @cached_property
    def spread(self) -> np.ndarray:
        """Each series' standard deviation over its span: the units cold starts are weighted to
        (inf or NaN for values near the float limit)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return np.array([max(float(np.std(y[lo:hi])), MIN_SCALE) for y, (lo, hi) in zip(self.series, self.span)])


def with_splices(pool: SeriesPool, share: float, query: int, rng: np.random.Generator,
                 delays: Sequence[int] = DEFAULT_DELAYS) -> SeriesPool:
    """`pool` and as many spliced series, drawing `share` of the tasks between them: each the
    stretch of one series' span up to a drawn point, then the stretch of another's from a drawn
    point, a known change between them. Real changes are rare at ordinary times and a new store
    has recorded few detections; a splice is the abrupt change (another level, shape and noise at
    once) an adaptation is for. The share holds whatever the series' lengths (task draws follow
    length otherwise, and a store's series are long). Values stay inside each series' span, so
    a held-out time range stays held out. `pool` itself where fewer than two series have room."""
    c = pool.config
    before = max(SPLICE_BEFORE, c.window + c.adapt_window + max(delays))   # the support at the longest delay
    after = max(SPLICE_AFTER, max(delays) + query + c.horizon)             # and its query
    room = np.flatnonzero(pool.room >= min(before, after))
    if share <= 0 or room.size < 2:
        return pool
    series, changes = [], []
    for _ in range(len(pool.series)):
        a, b = (int(i) for i in rng.choice(room, 2, replace=False))
        (lo_a, hi_a), (lo_b, hi_b) = pool.span[a], pool.span[b]
        end = int(rng.integers(min(lo_a + before, hi_a), hi_a + 1))       # the change: A up to here...
        begin = int(rng.integers(lo_b, max(lo_b, hi_b - after) + 1))      # ...then B from here
        head = pool.series[a][max(lo_a, end - before):end]
        series.append(np.concatenate([head, pool.series[b][begin:min(hi_b, begin + after)]]))
        changes.append([head.size])
    spliced = SeriesPool(series, c, changes=changes)
    spliced.weight *= share / (1 - share) * pool.weight.sum() / spliced.weight.sum()
    return pool + spliced


def next_change(changes: Sequence[int], t: int) -> int:
    """The first of `changes` after time t (a huge number when there is none)."""
    return min((c for c in changes if c > t), default=np.iinfo(np.int64).max)


def sample_tasks(pool: SeriesPool, n: int, query: int, rng: np.random.Generator,
                 delays: Sequence[int] = DEFAULT_DELAYS, change_share: float = 0.5) -> Tasks:
    """`n` tasks; a share `change_share` placed a drawn detection delay after a known change, or
    at a recorded detection."""
    usable = np.flatnonzero(pool.usable(query))
    if usable.size == 0:
        raise ValueError(f"no series is long enough for a task (window + adapt_window + query = "
                         f"{pool.config.window + pool.config.adapt_window + query} steps)")
    weights = pool.weight[usable] / pool.weight[usable].sum()
    series = rng.choice(usable, size=n, p=weights)
    times = np.empty(n, dtype=np.int64)
    for k, i in enumerate(series):
        lo, hi = pool.detection_range(int(i), query)
        near = [c + d for c in pool.changes[i] for d in delays if lo <= c + d < hi]
        near += [e for e in pool.detections[i] if lo <= e < hi]
        if near and rng.random() < change_share:
            times[k] = near[rng.integers(len(near))]
        else:
            times[k] = rng.integers(lo, hi)
    return cut_tasks(pool, series, times, query)


def sample_cold_starts(pool: SeriesPool, n: int, first_age: int,
                       rng: np.random.Generator) -> tuple[Examples, np.ndarray]:
    """`n` cold starts, (n, 1, ...): a stretch of a series fed to a fresh engine from a drawn
    start, forecast after its first a values, a drawn from [first_age, window) (the ages at which
    the engine forecasts a young series from θ* as it is); targets within the series' span.

    Also each one's weight, (s / σ)²: s the young scale its targets are in units of, σ the
    spread of the series over its span. A scale seen over a few steps is often tiny, and the
    targets in its units huge and mostly noise; the weight puts every cold start's loss in units
    of its series' spread, which is what a user (and bench coldstart) sees. Capped at 1 (a loss
    in young units): a start on a spike of a mostly flat series has s far above σ (38 times the
    cap in the test's spiky series; ~18 at most on real data), and one such draw would steer a
    whole training step."""
    c = pool.config
    first_age = max(1, min(first_age, c.window - 1))
    room = pool.room
    usable = np.flatnonzero(room > c.window)
    if usable.size == 0:
        raise ValueError(f"no series has more than {c.window} values in its span for a cold start")
    parts, weights = [], np.empty(n)
    for k, i in enumerate(rng.choice(usable, size=n, p=room[usable] / room[usable].sum())):
        lo, hi = pool.span[int(i)]
        age = int(rng.integers(first_age, c.window))
        begin = int(rng.integers(lo, hi - age))
        y = pool.series[int(i)][begin:min(hi, begin + age + c.horizon)]   # what the targets need
        part = young_examples(y, np.array([age]), c.window, c.horizon, c.scale_rate, c.mean_rate)
        scale, _ = normalisation_path(y[:age], c.scale_rate, c.mean_rate)
        with np.errstate(over="ignore", invalid="ignore"):   # values near the float limit
            weights[k] = (scale[-1] / pool.spread[int(i)]) ** 2
        parts.append(part)
    weights[~np.isfinite(weights)] = 0.0   # a spread that overflows: the example teaches nothing
    np.minimum(weights, MAX_YOUNG_WEIGHT, out=weights)
    return Examples.from_numpy(*(np.stack([p[j] for p in parts]) for j in range(4))), weights


def cut_tasks(pool: SeriesPool, series: np.ndarray, times: np.ndarray, query: int) -> Tasks:
    c = pool.config
    A, v, W = c.adapt_window, c.adapt_validation, c.window
    support, queries, valids = [], [], []
    for i, t in zip(series, times):
        win, level, target, mask = pool.examples[int(i)]
        # Example row r is the origin at time r + W - 1 (its newest value).
        s_rows = np.arange(t - A, t) - (W - 1)
        q_rows = np.arange(t, t + query) - (W - 1)
        leads = np.arange(1, c.horizon + 1)
        s_known = (np.arange(t - A, t)[:, None] + leads[None, :]) <= t - v   # observed before t - v
        v_known = ((np.arange(t - A, t)[:, None] + leads[None, :]) <= t) & ~s_known   # the newest v
        q_until = min(t + query, pool.next_change(int(i), t) - 1)          # the newest target scored
        q_known = (np.arange(t, t + query)[:, None] + leads[None, :]) <= q_until
        support.append((win[s_rows], level[s_rows], target[s_rows], mask[s_rows] * s_known))
        queries.append((win[q_rows], level[q_rows], target[q_rows], mask[q_rows] * q_known))
        valids.append((win[s_rows], level[s_rows], target[s_rows], mask[s_rows] * v_known))

    def stack(parts: list[tuple[np.ndarray, ...]]) -> Examples:
        return Examples.from_numpy(*(np.stack([p[j] for p in parts]) for j in range(4)))

    return Tasks(stack(support), stack(queries), np.asarray(series), np.asarray(times), stack(valids))
