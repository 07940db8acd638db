"""`adaptd bench soak`: a short soak against the real daemon, and the report's arithmetic."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from adaptd.bench.harness import LogDrain
from adaptd.bench.soak import Feed, Series, percentiles, slope_per_minute
from adaptd.cli import build_parser


def test_percentiles_and_slope() -> None:
    p = percentiles([i / 1000 for i in range(1, 1001)])   # 1..1000 ms
    assert (p["n"], p["p50"], p["p99"], p["p99_9"], p["max"]) == (1000, 500.0, 990.0, 999.0, 1000.0)
    assert percentiles([])["p50"] is None
    assert slope_per_minute([(t, 100 + 0.5 * t) for t in range(60)]) == pytest.approx(30.0)
    assert slope_per_minute([(0, 1.0)]) is None


def test_feeds_keep_every_series_in_time_order() -> None:
    series = [Series(f"s{k}", k) for k in range(5)]
    feed = Feed(series[0::2])
    seen: dict[str, float] = {}
    for _ in range(7):
        line, n = feed.batch(4)
        records = json.loads(line)["records"]
        assert len(records) == n == 4
        for r in records:
            assert r["ts"] > seen.get(r["series"], float("-inf"))
            seen[r["series"]] = r["ts"]
    assert set(seen) == {"s0", "s2", "s4"}
    before = (series[0].level, series[0].scale)
    feed.catch_up([frozenset({"s0"})])
    assert (series[0].level, series[0].scale) != before and feed.storms_seen == 1


def test_registered_in_bench_group() -> None:
    args = build_parser().parse_args(["bench", "soak", "--seconds", "5", "--json"])
    assert (args.bench, args.clients, args.series, args.seconds, args.json) == ("soak", 64, 1000, 5.0, True)


@pytest.mark.integration
@pytest.mark.slow
def test_short_soak_reports_and_has_no_failures() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "adaptd", "bench", "soak", "--clients", "8", "--series", "50", "--seconds", "10",
         "--rate", "400", "--storm-every", "3", "--overload-fraction", "0.3", "--preload", "64", "--json"],
        capture_output=True, text=True, timeout=90)
    report = json.loads(out.stdout)
    assert report["failures"] == {}, (report["failures"], report["error_examples"], out.stderr[-2000:])
    assert set(report["errors"]) <= {f"{p}/ingest/overloaded" for p in ("steady", "overload")}
    assert out.returncode == (0 if report["ok"] else 1)
    assert set(report["phases"]) == {"steady", "overload"}
    for phase in report["phases"].values():
        assert phase["records"] > 0 and phase["forecasts"] > 0
        assert {"p50", "p99", "p99_9"} <= set(phase["ingest_ms"]) and phase["forecast_ms"]["n"] > 0
    assert report["phases"]["steady"]["forecast_models"].get("online", 0) > 0   # the preload warmed the models
    assert report["throughput"]["records_per_s"] > 0 and report["throughput"]["forecasts_per_s"] > 0
    assert len(report["storms"]) == 3
    memory = report["memory"]
    assert memory["samples"] >= 8 and memory["end_mb"] > 0 and memory["verdict"] == "n/a"   # too short to judge
    metrics = report["daemon_metrics"]
    assert metrics["scrapes"] >= 5
    assert {"drift_events", "adaptations", "learning_backlog_records", "ingest_queue_records"} <= set(metrics["end"])
    assert report["consistency"]["ok"] and report["consistency"]["late_records"] == 0
    assert report["daemon"]["exit_code"] == 0 and not report["daemon"]["died_during_run"]
    assert "Traceback" not in report["daemon"]["log"]["by_level"]
    assert report["reproduce"].startswith("adaptd bench soak --clients 8 ")
    assert "soak:" in out.stderr   # the progress line


def test_the_daemon_log_drain_counts_every_line_and_keeps_a_bounded_tail() -> None:
    # A soak runs for hours with the daemon logging: the bench must not keep every line.
    lines = [f"2026-11-27 12:00:{i % 60:02d} INFO adaptd.learning: step {i}" for i in range(5000)]
    lines[10] = "2026-11-27 12:00:10 WARNING adaptd.server: slow client"
    lines[4000] = "2026-11-27 12:00:40 ERROR adaptd.store: database is locked"
    lines[4001] = "2026-11-27 12:00:41 WARNING adaptd.server: slow client"
    drain = LogDrain(io.BytesIO("".join(line + "\n" for line in lines).encode()))
    drain.start()
    drain.join(10)
    assert drain.summary() == {"lines": 5000, "by_level": {"WARNING": 2, "ERROR": 1},
                               "first": ["WARNING adaptd.server: slow client", "ERROR adaptd.store: database is locked"]}
    assert len(drain.lines) == LogDrain.TAIL and drain.lines[-1] == lines[-1]
