"""Regime memory: bounded libraries, nearest lookup whatever the level, scale or hour, nothing
non-finite stored, and checkpoints that bring back exactly what was remembered."""

from __future__ import annotations

import numpy as np
import torch

from adaptd.engine.regimes import RegimeMemory, embed, regime_key

torch.set_num_threads(1)
T = np.arange(48.0)


def shape(period: float, phase: float = 0.0, level: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """A daily-like window: two harmonics of `period`, so different periods differ in shape."""
    t = T + phase
    return level + scale * (np.sin(2 * np.pi * t / period) + 0.5 * np.cos(4 * np.pi * t / period))


def weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((1, 3, 2), float(value)), "b": torch.full((1, 2), -float(value))}


def test_a_library_stays_bounded_and_forgets_the_least_recently_used():
    memory = RegimeMemory(per_series=3, shared=0, lookup=1)
    idents = [memory.remember(0, regime_key(shape(p)), weights(p)) for p in (24, 12, 8)]
    memory.chosen(0, idents[0], shared=False)        # the oldest was just used again: keep it
    memory.remember(0, regime_key(shape(6)), weights(6))
    kept = sorted(float(e.params["w"][0, 0, 0]) for e in memory.library(0).entries)
    assert kept == [6.0, 8.0, 24.0]                  # 12 was used longest ago
    for p in range(2, 40):
        memory.remember(0, regime_key(shape(p + 0.5)), weights(p))
    assert len(memory.library(0)) == 3 and len(memory) == 3


def test_the_shared_library_is_bounded_across_series_and_skips_a_series_own_copies():
    memory = RegimeMemory(per_series=2, shared=4, lookup=2)
    for slot in range(10):
        memory.remember(slot, regime_key(shape(24, level=slot)), weights(slot))
    assert len(memory.shared) == 4
    assert len(memory) == 10                         # 1 per series; the 4 shared are copies of 4 of them
    found = memory.lookup(9, regime_key(shape(24)))
    assert found is not None and found.shared == [False, True, True, True]   # its own first, then others'
    assert found.params["w"][1:, 0, 0].tolist() == [8.0, 7.0, 6.0]         # not its own shared copy


def test_lookup_finds_the_same_shape_at_another_level_scale_and_hour():
    memory = RegimeMemory(per_series=4, shared=0, lookup=2)
    for p in (24, 12, 8, 6):
        memory.remember(0, regime_key(shape(p)), weights(p))
    for p in (24, 12, 8, 6):
        found = memory.lookup(0, regime_key(shape(p, phase=7.0, level=1e4, scale=1e-3)))
        assert found is not None and float(found.params["w"][0, 0, 0]) == p
        assert found.distances[0] < found.distances[1]
    assert memory.lookup(1, regime_key(shape(24))) is None    # another series remembers nothing


def test_nothing_non_finite_or_flat_is_stored():
    memory = RegimeMemory(per_series=4, shared=4, lookup=1)
    assert memory.remember(0, regime_key(shape(24)), {"w": torch.tensor([[float("nan"), 1.0]])}) == -1
    assert memory.remember(0, regime_key(shape(24)), {"w": torch.tensor([[float("inf"), 1.0]])}) == -1
    assert regime_key(np.full(48, 3.0)) is None                     # a flat window has no shape
    assert regime_key(np.where(T == 5, np.nan, T)) is None
    assert memory.remember(0, None, weights(1)) == -1
    assert len(memory) == 0
    assert np.isfinite(embed(regime_key(1e300 * np.sign(np.sin(T) + 0.1)))).all()


def test_memory_off_stores_nothing():
    for memory in (RegimeMemory(4, 64, 0), RegimeMemory(0, 0, 2)):
        assert memory.remember(0, regime_key(shape(24)), weights(1)) == -1
        assert memory.lookup(0, regime_key(shape(24))) is None


def test_a_checkpoint_round_trip_brings_back_every_entry_and_the_clock():
    memory = RegimeMemory(per_series=3, shared=4, lookup=2)
    for slot in range(3):
        for p in (24, 12, 8, 6):
            memory.remember(slot, regime_key(shape(p, level=slot)), weights(10 * slot + p))
    ident = memory.library(1).entries[0].ident
    memory.source[1] = memory.chosen(1, ident, shared=False)
    states = {slot: memory.state(slot) for slot in range(3)}
    restored = RegimeMemory(per_series=3, shared=4, lookup=2)
    for new_slot, slot in ((5, 0), (6, 1), (7, 2)):                # slots may differ after a restart
        restored.load(new_slot, states[slot], ["w", "b"])
    assert restored.clock == memory.clock and restored.source == {6: ident}
    for slot, new_slot in ((0, 5), (1, 6), (2, 7)):
        for p in (24, 12, 8, 6, 5):
            a = memory.lookup(slot, regime_key(shape(p, phase=3.0)))
            b = restored.lookup(new_slot, regime_key(shape(p, phase=3.0)))
            assert a.idents == b.idents and a.distances == b.distances and a.shared == b.shared
            for k in a.params:
                assert torch.equal(a.params[k], b.params[k])
    # ... and they go on forgetting the same entries.
    memory.remember(0, regime_key(shape(5)), weights(5))
    restored.remember(5, regime_key(shape(5)), weights(5))
    assert sorted(e.ident for e in memory.shared.entries) == sorted(e.ident for e in restored.shared.entries)


def test_a_checkpoint_with_broken_entries_is_refused():
    memory = RegimeMemory(per_series=2, shared=0, lookup=1)
    memory.remember(0, regime_key(shape(24)), weights(1))
    state = memory.state(0)
    state["regime_w_w"] = np.full_like(state["regime_w_w"], np.nan)
    fresh = RegimeMemory(per_series=2, shared=0, lookup=1)
    try:
        fresh.load(0, state, ["w", "b"])
    except ValueError as exc:
        assert "not finite" in str(exc)
    else:
        raise AssertionError("non-finite remembered weights were loaded")


# -- in the engine: a series that returns to a regime starts from where it left it -------------
import dataclasses  # noqa: E402

from adaptd.engine.learner import Initializer  # noqa: E402
from adaptd.engine.online import OnlineConfig, OnlineEngine  # noqa: E402
from adaptd.engine.telemetry import Telemetry  # noqa: E402
from adaptd.records import Observation  # noqa: E402

HOUR = 3600.0
SMALL = OnlineConfig(window=16, patch=4, hidden=8, horizon=4, rls_lags=8, adapt_window=32, adapt_validation=4,
                     cooldown=16, adapt_steps=3, history=256, regime_memory=4, regime_shared=8, regime_lookup=2)


def regimes(spans: list[tuple[str, int]], seed: int = 0) -> np.ndarray:
    """Regime "a": a daily cycle around 10; "b": a fast saw-tooth around 60 at another scale."""
    rng = np.random.default_rng(seed)
    out, t = [], 0
    for kind, n in spans:
        steps = np.arange(t, t + n)
        if kind == "a":
            out.append(10 + 3 * np.sin(2 * np.pi * steps / 24) + rng.normal(0, 0.2, n))
        else:
            out.append(60 + 12 * ((steps % 6) / 6.0) + rng.normal(0, 1.0, n))
        t += n
    return np.concatenate(out)


class Winners(Telemetry):
    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def adaptation(self, outcome: str, seconds: float, winner: str | None = None) -> None:
        self.seen.append(winner)


def run(engine: OnlineEngine, y: np.ndarray, start: int = 0, name: str = "s") -> list[float]:
    out = []
    for t in range(start, len(y)):
        engine.observe([Observation(name, t * HOUR, float(y[t]))])
        out.append(engine.forecast(name, 4).points[0].value if t else np.nan)
    return out


def test_a_series_returning_to_an_earlier_regime_adapts_from_its_memory():
    y = regimes([("b", 300), ("a", 200), ("b", 300)])
    engine = OnlineEngine(SMALL, Initializer.random(SMALL.shape, 0, 0.05))
    winners = Winners()
    engine.telemetry = winners
    with_memory = np.array(run(engine, y[:500]))
    assert len(engine.regimes.library(0)) >= 1            # it left regime "b": "b" is remembered
    before = len(winners.seen)
    with_memory = np.concatenate([with_memory, run(engine, y, start=500)])
    assert winners.seen[before:][:1] == ["memory"], winners.seen   # the return to "b" starts from it
    assert engine.counters["adapted_memory"] >= 1 and engine.stats()["regimes"] >= 1
    # ... and forecasts the returned regime better than the same engine without memory.
    without = np.array(run(OnlineEngine(dataclasses.replace(SMALL, regime_lookup=0),
                                        Initializer.random(SMALL.shape, 0, 0.05)), y))
    def error(f: np.ndarray) -> float:
        return float(np.mean((f[500:600] - y[501:601]) ** 2))
    assert error(with_memory) < 0.75 * error(without)


def test_without_memory_nothing_is_remembered_and_memory_never_wins():
    y = regimes([("a", 300), ("b", 200), ("a", 200)])
    engine = OnlineEngine(dataclasses.replace(SMALL, regime_lookup=0), Initializer.random(SMALL.shape, 0, 0.05))
    run(engine, y)
    assert engine.counters["adapted_memory"] == 0 and len(engine.regimes) == 0
    assert engine.counters["adapted"] == (engine.counters["adapted_finetuned"] + engine.counters["adapted_init"])


def test_a_restarted_engine_remembers_the_same_regimes_and_forecasts_exactly_as_before():
    y = regimes([("b", 300), ("a", 200), ("b", 200)])
    engine = OnlineEngine(SMALL, Initializer.random(SMALL.shape, 0, 0.05))
    run(engine, y[:500])
    assert len(engine.regimes) >= 1
    history = {"s": [(t * HOUR, float(v)) for t, v in enumerate(y[:500])]}
    restored = OnlineEngine(SMALL, Initializer.random(SMALL.shape, 0, 0.05))
    assert restored.restore(history, engine.checkpoint()) == []
    assert len(restored.regimes) == len(engine.regimes)
    # The drift detectors are checkpointed too: both see the return to "b" at the same moment,
    # and adapt to it from memory alike.
    memory_wins = engine.counters["adapted_memory"]
    assert run(restored, y, start=500) == run(engine, y, start=500)
    assert restored.counters["adapted_memory"] == engine.counters["adapted_memory"] - memory_wins >= 1


def test_a_checkpoint_from_before_regime_memory_still_loads():
    y = regimes([("a", 300), ("b", 200)])
    old = OnlineEngine(dataclasses.replace(SMALL, regime_lookup=0), Initializer.random(SMALL.shape, 0, 0.05))
    run(old, y)
    assert not any(k.startswith("regime") for k in np.load(__import__("io").BytesIO(old.checkpoint()[0].payload)))
    new = OnlineEngine(SMALL, Initializer.random(SMALL.shape, 0, 0.05))
    assert new.restore({"s": [(t * HOUR, float(v)) for t, v in enumerate(y)]}, old.checkpoint()) == []
    assert new.forecast("s", 4) == old.forecast("s", 4)
    assert len(new.regimes) == 0


def test_hostile_series_never_put_anything_non_finite_in_memory():
    n = 400
    t = np.arange(n)
    hostile = {"spikes": np.where(t % 37 == 0, 1e30, 1.0), "alternating": np.where(t % 2 == 0, 1e6, -1e6),
               "huge": 1e300 * np.sign(np.sin(t / 5) + 0.1), "tiny": 1e-12 * np.sin(t),
               "switching": np.where((t // 60) % 2 == 0, 5 + np.sin(t), 1e8 * np.cos(t / 3))}
    engine = OnlineEngine(dataclasses.replace(SMALL, cooldown=4), Initializer.random(SMALL.shape, 0, 0.05))
    for i in range(n):
        engine.observe([Observation(name, i * HOUR, float(y[i])) for name, y in hostile.items()])
    for name in hostile:
        assert all(np.isfinite([p.value, p.lo, p.hi]).all() for p in engine.forecast(name, 4).points), name
    assert len(engine.regimes) >= 1
    libraries = [engine.regimes.shared, *engine.regimes.own.values()]
    for entry in (e for lib in libraries for e in lib.entries):
        assert np.isfinite(entry.key).all() and np.isfinite(entry.embedding).all()
        assert all(bool(torch.isfinite(v).all()) for v in entry.params.values())
    restored = OnlineEngine(SMALL, Initializer.random(SMALL.shape, 0, 0.05))
    history = {name: [(i * HOUR, float(y[i])) for i in range(n)] for name, y in hostile.items()}
    assert restored.restore(history, engine.checkpoint()) == []
    assert len(restored.regimes) == len(engine.regimes)


def test_memory_does_not_break_adaptation_when_the_validation_covers_the_ranked_origins():
    # adapt_window // 4 <= adapt_validation: no origin the remembered regimes are ranked on has a
    # known target yet. Adaptations must still run (they used to fail once 2 regimes were remembered).
    config = dataclasses.replace(SMALL, adapt_validation=8, regime_lookup=1)
    engine = OnlineEngine(config, Initializer.random(config.shape, 0, 0.05))
    run(engine, regimes([("b", 300)] + [("a", 150), ("b", 150)] * 4))
    assert len(engine.regimes.library(0)) >= 2
    assert engine.counters["drifts"] >= 3 and engine.counters["failed"] == 0


def test_a_shared_only_lookup_sees_every_shared_entry_whatever_its_owner_label():
    # bench meta relabels the shared library's owners -2, -3, ...: none may be skipped.
    memory = RegimeMemory(per_series=0, shared=4, lookup=1)
    for p in (24, 12, 8):
        memory.remember(9, regime_key(shape(p)), weights(p))
    for j, entry in enumerate(memory.shared.entries):
        entry.owner = -2 - j
    assert len(memory.lookup(0, regime_key(shape(24))).idents) == 3
    assert len(memory.lookup(9, regime_key(shape(24))).idents) == 3


def test_adapting_in_a_background_thread_uses_memory_too_and_queued_jobs_hold_no_copies():
    engine = OnlineEngine(dataclasses.replace(SMALL, adapt_workers=1), Initializer.random(SMALL.shape, 0, 0.05))
    try:
        run(engine, regimes([("b", 300), ("a", 200), ("b", 300)]))
    finally:
        engine.close()
    assert engine.counters["failed"] == 0 and engine.counters["adapted_memory"] >= 1
    found = engine.regimes.lookup(0, engine._regime_key(0, 0))
    assert found is not None and "params" not in vars(found)       # stacked only when the job runs
    entry = next(e for e in engine.regimes.library(0).entries if e.ident == found.idents[0])
    assert all(found.rows[0][k] is v for k, v in entry.params.items())


def test_shared_only_memory_keeps_no_per_series_state():
    memory = RegimeMemory(per_series=0, shared=4, lookup=1)
    for slot in range(3):
        memory.remember(slot, regime_key(shape(24 - slot)), weights(slot))
    found = memory.lookup(5, regime_key(shape(24)))
    assert memory.chosen(5, found.idents[0], found.shared[0]) == -1
    assert memory.own == {} and memory.state(5)["regime_source"] == -1
