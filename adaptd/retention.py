"""Retention: the store keeps `[store] retention` seconds of each series' history.

Counted back from each series' newest record (or from now, if that is dated later), not from
the clock: a series whose newest record is old (a backfill, or one that stopped reporting)
keeps its last stretch. Late records older than the cut go at the next pass. The newest
`[model] history` observations of every series always stay: a restart restores from them. Drift
events before the cut go with the observations (meta-training cuts its tasks at them). Deletes
run in short transactions of BATCH rows, so ingest commits (SQLite has one writer) never wait
long for them. In a cluster each member prunes the series it serves.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import sqlalchemy as sa

from .catalog import SeriesCatalog
from .metrics import Metrics
from .store import Owns, Store, StoreError

log = logging.getLogger(__name__)

BATCH = 5000   # observations per delete transaction: tens of milliseconds of SQLite's write lock


class Retention:
    def __init__(self, store: Store, keep_seconds: float, keep_newest: int, metrics: Metrics,
                 owns: Owns | None = None, catalog: SeriesCatalog | None = None):
        """`catalog`: the daemon's counts of each series' observations, kept exact."""
        self.store = store
        self.catalog = catalog
        self.keep_seconds = keep_seconds
        self.keep_newest = keep_newest
        self.metrics = metrics
        self.owns = owns
        self._stopping = threading.Event()
        self.last_pass: dict[str, Any] | None = None   # for `adaptd status`

    def prune(self) -> None:
        """One pass over every series (the scheduled job); stops early at shutdown."""
        started, at = time.monotonic(), time.time()
        deleted = series = 0
        error = None
        try:
            for series_id, name in self.store.series_to_prune(self.owns):
                if self._stopping.is_set():
                    break
                cutoff = self.store.prune_cutoff(series_id, self.keep_seconds, self.keep_newest, time.time())
                start: float | None = -math.inf if cutoff is not None else None
                here = 0
                try:
                    while start is not None and not self._stopping.is_set():
                        assert cutoff is not None
                        count, start = self.store.prune_before(series_id, cutoff, BATCH, start)
                        here += count
                        self.metrics.retention_deleted.inc(count)
                finally:
                    if here:
                        deleted, series = deleted + here, series + 1
                        if self.catalog is not None:
                            self.catalog.pruned(name, here, self.store.first_ts(series_id))
                self.metrics.retention_progress.set(time.time())   # a long pass is not a hung one
        except Exception as exc:   # a store error (or a bug: then with its traceback); the next pass goes on
            error = " ".join(str(getattr(exc, "orig", None) or exc).split()) or type(exc).__name__
            self.metrics.retention_failures.inc()
            log.warning("retention pass stopped after deleting %d observations: %s", deleted, error,
                        exc_info=not isinstance(exc, (StoreError, sa.exc.SQLAlchemyError)))
            # Passes that each get partway and fail do not get through: back to the last whole one.
            self.metrics.retention_progress.set(self.metrics.value(
                "adaptd_retention_last_success_timestamp_seconds"))
        else:
            finished = time.time()
            self.metrics.retention_success.set(finished)
            self.metrics.retention_progress.set(finished)
        seconds = time.monotonic() - started
        self.metrics.retention_seconds.set(seconds)
        self.last_pass = {"at": at, "seconds": round(seconds, 2), "deleted": deleted, "series": series,
                          "error": error}
        if deleted:
            log.info("retention: deleted %d observations of %d series (older than %gs before each one's "
                     "newest record) in %.1fs", deleted, series, self.keep_seconds, seconds)

    def stop(self) -> None:
        self._stopping.set()
