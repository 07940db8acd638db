"""What a restart learns beyond the newest records: the rest of what its checkpoints missed.

`Engine.restore` is given the newest `[model] history` stored records of every series. A
series whose checkpoint is older than those (more records than that arrived between its last
checkpoint and a crash, or a stop that left learning behind) needs the records in between
learnt first, or its models would see them as a gap and forecast unlike a daemon that never
stopped. They are fetched here, as many as half the learning backlog holds (the daemon's
budget: ingest after the restart must still find room).
"""

from __future__ import annotations

import logging

from .engine.base import Engine
from .records import Observation
from .store import Store

log = logging.getLogger(__name__)


def with_unlearnt(store: Store, engine: Engine, history: dict[str, list[tuple[float, float]]],
                  pending: list[Observation], budget: int) -> list[Observation]:
    """`pending` (what `restore(history, ...)` returned) preceded by each restored series'
    stored records between its checkpoint and its `history`, series with the fewest first while
    the total stays within `budget` records; the rest are named in a warning."""
    spans = engine.unlearnt_before(history)
    counts = store.count_between(spans) if spans else {}
    room = budget - len(pending)
    taken: dict[str, tuple[float, float]] = {}
    for name, n in sorted(counts.items(), key=lambda item: (item[1], item[0])):
        if n > room:
            break
        taken[name] = spans[name]
        room -= n
    left = {name: n for name, n in counts.items() if name not in taken}
    if left:
        log.warning("%d stored records of %d series (%s) between their checkpoints and their newest "
                    "records are not learnt: more than half [model] learning_backlog holds; their models "
                    "continue across the gap", sum(left.values()), len(left), ", ".join(sorted(left)[:5]))
    if not taken:
        return pending
    older = [Observation(name, ts, value) for name, rows in store.between(taken).items() for ts, value in rows]
    log.info("learning %d more stored records of %d series: they arrived after the series' "
             "checkpoints, before their newest [model] history records", len(older), len(taken))
    return sorted(older + pending, key=lambda o: o.ts)   # series advance together, as they arrived
