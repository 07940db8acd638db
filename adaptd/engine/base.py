"""The engine interface the daemon, replay and benchmarks drive."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..records import Observation
from ..store import Checkpoint
from .telemetry import SILENT, SeriesNow, Telemetry


class UnknownSeries(LookupError):
    """No observation of this series has been stored."""


class NotReady(RuntimeError):
    """The series exists but cannot be forecast yet; the message says what it needs."""


@dataclass(frozen=True)
class ForecastPoint:
    ts: float
    value: float
    lo: float
    hi: float


@dataclass(frozen=True)
class Forecast:
    series: str
    origin: float
    step: float
    points: tuple[ForecastPoint, ...]
    model: dict[str, Any] = field(default_factory=dict)

    def head(self, horizon: int) -> "Forecast":
        return Forecast(self.series, self.origin, self.step, self.points[:horizon], self.model)


class Engine(ABC):
    """Takes committed records (in commit order) and answers forecasts.

    Two halves: `record` is cheap and runs on the ingest writer thread before the ack, so a
    forecast asked after an ack knows that ack's records (read-your-writes); `learn` may be
    slow and runs later on the learning thread. Until a series' models have learnt its newest
    records (`caught_up`), its forecast comes from a model that has (the naive fallback).
    `forecast` may run concurrently with both, from another thread.
    """

    kind: str = "engine"
    telemetry: Telemetry = SILENT   # the daemon sets its metrics here

    @abstractmethod
    def record(self, batch: Sequence[Observation]) -> None: ...

    def learn(self, batch: Sequence[Observation], shed: bool = False) -> None:
        """Update the models with records already passed to `record`; `shed`: catch up by
        skipping the costliest learning (the daemon is behind), never anything forecasts need."""

    def observe(self, batch: Sequence[Observation]) -> None:
        """Record and learn at once (replay, tests)."""
        self.record(batch)
        self.learn(batch)

    def caught_up(self, series: str) -> bool:
        return True

    def forecast_current(self, series: str, horizon: int) -> Forecast | None:
        """The forecast to answer now, reflecting every recorded record; None while only
        waiting for learning would give one from the models (then `forecast` answers from the
        fallback). Raises like `forecast`."""
        return self.forecast(series, horizon) if self.caught_up(series) else None

    def progress(self) -> float:
        """A number that grows while `learn` is getting somewhere (its rounds, its adaptations):
        how the learning thread shows it is busy, not stuck, within one long step."""
        return 0.0

    def halt_learning(self) -> None:
        """Make a `learn` in progress return soon (shutdown): what it leaves unlearnt is in the
        store and is learnt after the next start, from the series' checkpoint on."""

    @abstractmethod
    def forecast(self, series: str, horizon: int) -> Forecast: ...

    def unlearnt_before(self, history: dict[str, list[tuple[float, float]]]) -> dict[str, tuple[float, float]]:
        """After `restore(history, ...)`: the series whose checkpoint ends before their first
        `history` row, each with the span (checkpoint's newest ts, that row's ts) whose stored
        records the models have still to learn first (none for engines without checkpoints)."""
        return {}

    def restore(self, history: dict[str, list[tuple[float, float]]],
                checkpoints: Sequence[Checkpoint] = ()) -> list[Observation]:
        """Rebuild state from checkpoints and the newest stored observations of every series;
        returns the records the models have still to `learn`."""
        batch = [Observation(name, ts, value) for name, rows in history.items() for ts, value in rows]
        self.record(batch)
        return batch

    def learning_backlog(self) -> int:
        return 0

    def forgettable(self, series: str) -> bool:
        """Whether the series' state can be dropped now (`[store] forget_after`): nothing of it
        is still being learnt or adapted."""
        return True

    def forget(self, series: str) -> None:
        """Drop the series' state: it is gone from the store (a later record starts it afresh)."""

    def checkpoint(self) -> list[Checkpoint]:
        """State worth saving beyond the stored observations (none for stateless engines)."""
        return []

    def take_drift_events(self) -> list[Any]:
        return []

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def warm_series(self) -> int:
        """Series the learned models serve (the others get the naive fallback)."""
        return 0

    def now(self, series: str) -> SeriesNow | None:
        """The series at its newest observation beside the forecast issued for it (None: unknown)."""
        return None

    def close(self) -> None:
        """Stop background work (adaptations in flight)."""
