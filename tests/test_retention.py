"""`[store] retention`: what a pass deletes and what it must keep, on SQLite and PostgreSQL,
and the daemon running it on its own."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request

import pytest
import sqlalchemy as sa

from adaptd import retention
from adaptd.catalog import SeriesCatalog
from adaptd.metrics import Metrics
from adaptd.records import Observation
from adaptd.retention import Retention
from adaptd.store import Store
from daemon_harness import DaemonProcess, preload, run_cli, short_tempdir, write_config

HOUR = 3600.0


class Event:   # what the engine hands add_drift_events
    def __init__(self, series: str, ts: float):
        self.series, self.ts, self.detector, self.statistic = series, ts, "adwin", 0.5


def hourly(name: str, n: int, start: float = 0.0) -> list[Observation]:
    return [Observation(name, start + HOUR * t, float(t)) for t in range(n)]


def kept(store: Store, name: str) -> list[float]:
    return [ts for ts, _ in store.history(name)]


def events(store: Store, name: str) -> list[float]:
    return [ts for ts, _, _ in store.drift_history(name)]


def deleted_total(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("adaptd_retention_deleted_observations_total")


@pytest.mark.parametrize("batch", [5000, 7])   # one transaction per series, and many
def test_a_pass_keeps_the_window_before_each_series_newest_record(store: Store, monkeypatch, batch: int) -> None:
    monkeypatch.setattr(retention, "BATCH", batch)
    store.write(hourly("long", 200) + hourly("backfill", 100, start=-1e7) + hourly("short", 10))
    store.add_drift_events([Event("long", HOUR * 20), Event("long", HOUR * 180), Event("short", HOUR * 2)])
    metrics = Metrics()
    catalog = SeriesCatalog(store.series_summary())
    Retention(store, keep_seconds=50 * HOUR, keep_newest=30, metrics=metrics, catalog=catalog).prune()
    # The 50 hours before each one's newest record: 149..199 of "long", and the backfill's too,
    # although all of it is older than the clock minus 50 hours.
    assert kept(store, "long") == [HOUR * t for t in range(149, 200)]
    assert kept(store, "backfill") == [-1e7 + HOUR * t for t in range(49, 100)]
    assert kept(store, "short") == [HOUR * t for t in range(10)]     # fewer than keep_newest
    assert events(store, "long") == [HOUR * 180] and events(store, "short") == [HOUR * 2]
    assert deleted_total(metrics) == 149 + 49
    assert {n: (i.observations, i.first_ts) for n, i in catalog.snapshot().items()} == {
        "long": (51, HOUR * 149), "backfill": (51, -1e7 + HOUR * 49), "short": (10, 0.0)}


def test_the_newest_history_stays_whatever_the_retention(store: Store) -> None:
    """A restart restores from the newest `[model] history` observations: never deleted."""
    store.write(hourly("a", 300))
    Retention(store, keep_seconds=60.0, keep_newest=100, metrics=Metrics()).prune()
    assert kept(store, "a") == [HOUR * t for t in range(200, 300)]
    again = Retention(store, keep_seconds=60.0, keep_newest=100, metrics=Metrics())
    again.prune()                                                    # nothing more to do
    assert len(kept(store, "a")) == 100 and again.last_pass["deleted"] == 0


def test_a_record_dated_in_the_future_does_not_cost_the_history(store: Store) -> None:
    """A typo (year 2099) must not move the cut: it counts from now instead."""
    now = time.time()
    store.write([Observation("a", now - HOUR * (t + 0.5), 1.0) for t in range(100)] + [Observation("a", 4.1e9, 2.0)])
    Retention(store, keep_seconds=50 * HOUR, keep_newest=16, metrics=Metrics()).prune()
    assert len(kept(store, "a")) == 50 + 1                                # the last 50 hours, and the typo


def test_a_cluster_member_prunes_only_its_own_series(store: Store) -> None:
    store.write(hourly("mine", 100) + hourly("theirs", 100))
    Retention(store, 10 * HOUR, 16, Metrics(), owns=lambda name: name == "mine").prune()
    assert len(kept(store, "mine")) == 16 and len(kept(store, "theirs")) == 100


def test_a_pass_stops_between_batches_at_shutdown(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(retention, "BATCH", 10)
    store.write(hourly("a", 200) + hourly("b", 200))
    job = Retention(store, HOUR, 16, Metrics())
    calls = []

    def prune_before(*args):   # shutdown comes while the first batch is deleted
        calls.append(args)
        job.stop()
        return Store.prune_before(store, *args)

    monkeypatch.setattr(store, "prune_before", prune_before)
    job.prune()
    assert len(calls) == 1 and job.last_pass["deleted"] == 10
    assert sorted(len(kept(store, n)) for n in ("a", "b")) == [190, 200]


def test_a_late_record_below_the_batches_waits_for_the_next_pass(store: Store, monkeypatch) -> None:
    """No batch grows past BATCH rows, even when old records arrive during a pass."""
    monkeypatch.setattr(retention, "BATCH", 7)
    store.write(hourly("a", 100))
    counts = []

    def prune_before(*args):
        count, start = Store.prune_before(store, *args)
        counts.append(count)
        if len(counts) == 1:   # a backfill lands below where the next batch starts
            store.write([Observation("a", -HOUR * t, 0.5) for t in range(1, 21)])
        return count, start

    monkeypatch.setattr(store, "prune_before", prune_before)
    Retention(store, HOUR, 16, Metrics()).prune()
    assert max(counts) <= 7 and sum(counts) == 100 - 16
    assert kept(store, "a")[:20] == [-HOUR * t for t in range(20, 0, -1)]      # there until the next pass
    monkeypatch.undo()
    Retention(store, HOUR, 16, Metrics()).prune()
    assert kept(store, "a") == [HOUR * t for t in range(84, 100)]


def test_a_store_failure_ends_the_pass_with_a_warning_and_the_next_goes_on(store: Store, monkeypatch,
                                                                            caplog) -> None:
    store.write(hourly("a", 100) + hourly("b", 100))
    job = Retention(store, HOUR, 16, Metrics())
    real = Store.prune_before

    def flaky(*_args):
        monkeypatch.setattr(store, "prune_before", lambda *args: real(store, *args))   # once
        raise sa.exc.OperationalError("DELETE", {}, Exception("database is locked"))

    monkeypatch.setattr(store, "prune_before", flaky)
    metrics = job.metrics
    job.prune()
    assert "retention pass stopped after deleting 0 observations" in caplog.text
    assert job.last_pass["error"] == "database is locked"
    assert metrics.registry.get_sample_value("adaptd_retention_failures_total") == 1.0
    assert metrics.registry.get_sample_value("adaptd_retention_last_success_timestamp_seconds") == 0.0
    assert progress(metrics) == 0.0   # the stalled-retention alert counts from the daemon's start
    job.prune()
    assert len(kept(store, "a")) == len(kept(store, "b")) == 16
    assert job.last_pass["error"] is None
    assert metrics.registry.get_sample_value("adaptd_retention_last_success_timestamp_seconds") > time.time() - 60
    assert progress(metrics) == metrics.registry.get_sample_value("adaptd_retention_last_success_timestamp_seconds")


def progress(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("adaptd_retention_last_progress_timestamp_seconds")


def test_progress_counts_each_finished_series_and_a_failed_pass_gives_it_back(store: Store, monkeypatch) -> None:
    """The alert on stalled retention must tell a long pass that keeps finishing series from
    passes that each get partway and fail (they would never get through)."""
    store.write(hourly("a", 100) + hourly("b", 100) + hourly("c", 100))
    job = Retention(store, HOUR, 16, Metrics())
    job.prune()
    whole = progress(job.metrics)
    store.write([Observation(name, HOUR * 100, 1.0) for name in "abc"])
    seen, real = [], Store.prune_before

    def third_fails(series_id, *args):
        seen.append(progress(job.metrics))   # what the gauge said as each series began
        if len(seen) == 3:
            raise sa.exc.OperationalError("DELETE", {}, Exception("disk I/O error"))
        return real(store, series_id, *args)

    monkeypatch.setattr(store, "prune_before", third_fails)
    time.sleep(0.01)
    job.prune()
    assert seen[0] == whole < seen[1] < seen[2]       # each finished series moved it on
    assert progress(job.metrics) == whole             # the failed pass does not count


@pytest.mark.integration
def test_the_daemon_prunes_soon_after_start_and_says_so():
    directory = short_tempdir()
    config = write_config(directory, metrics=True, sections={"store": {"retention": 7200.0},
                                                             "model": {"history": 16}})
    preload(f"sqlite:///{directory}/adaptd.db", hourly("old", 100) + hourly("young", 5))
    d = DaemonProcess(config)
    try:
        d.start(timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = json.loads(run_cli("status", "--json", config=config).stdout)
            if stats["store"]["retention"]["last_pass"] is not None:
                break
            time.sleep(0.5)
        assert stats["store"]["retention"] == {"keep_s": 7200.0, "forget_after_s": 0.0,
                                               "last_pass": stats["store"]["retention"]["last_pass"]}
        assert stats["store"]["retention"]["last_pass"]["deleted"] == 84
        status = run_cli("status", config=config).stdout
        assert re.search(r"^store: .* \(keeps 2h of each series; last pass \S+ ago deleted 84 observations of "
                         r"1 series\)$", status, re.M), status
        scraped = urllib.request.urlopen(f"http://{d.settings.metrics.listen}/metrics", timeout=10).read().decode()
        assert "adaptd_retention_deleted_observations_total 84.0" in scraped
        listing = {s["series"]: s for s in json.loads(run_cli("series", "--json", config=config).stdout)}
        assert (listing["old"]["observations"], listing["young"]["observations"]) == (16, 5)
        assert listing["old"]["first_ts"] == 84 * HOUR                    # what is left starts later
        d.ingest([{"series": "old", "ts": 100 * HOUR, "value": 1.0}])   # the daemon still takes records
        assert "deleted 84 observations of 1 series" in d.stderr
    finally:
        d.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_status_without_retention_says_everything_is_kept():
    from adaptd.render import _retention_text
    assert _retention_text({"keep_s": 0.0, "last_pass": None}) == " (keeps every observation)"
    assert _retention_text({"keep_s": 7776000.0, "last_pass": None}) == " (keeps 90d of each series)"
    assert _retention_text({"keep_s": 86400.0, "last_pass": {"at": 1e6 - 7200, "deleted": 5, "series": 2,
                                                              "seconds": 0.1}}, now=1e6) == \
        " (keeps 1d of each series; last pass 2h ago deleted 5 observations of 2 series)"
    assert _retention_text({"keep_s": 3600.0, "last_pass": {"at": 1e6 - 60, "deleted": 0, "series": 0,
                                                             "seconds": 10.0, "error": "database is locked"}},
                           now=1e6) == \
        " (keeps 1h of each series; last pass 1min ago stopped by a store error after deleting 0 observations " \
        "of 0 series: database is locked)"
    assert _retention_text({"keep_s": 0.0, "forget_after_s": 2592000.0,
                            "last_pass": {"at": 1e6 - 60, "deleted": 300, "series": 0, "forgotten": 3}}, now=1e6) == \
        " (keeps each series' whole history, forgets a series silent for 30d; last pass 1min ago deleted 300 observations " \
        "of 3 series (3 series forgotten))"
