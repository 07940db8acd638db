"""`adaptd bench latency`: forecast answer times from a real daemon while a live feed runs."""

from __future__ import annotations

import multiprocessing as mp
import re
import subprocess

import pytest

from adaptd.bench.harness import ScratchDaemon
from adaptd.bench.latency import _collect
from adaptd.cli import main

PERCENTILES = r"p50 ([\d.]+) ms, p99 ([\d.]+) ms, p99.9 ([\d.]+) ms"


@pytest.mark.slow
def test_open_loop_clients_get_answer_times_by_the_model_that_answered(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "latency", "--series", "30", "--clients", "2", "--seconds", "3", "--interval", "0.5",
            "--rate", "100", "--set", "model.train_every=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    answered = re.search(r"forecasts answered: (\d+) \(", out)
    overall = re.search(r"answer time: " + PERCENTILES, out)
    assert answered and overall, out
    assert 150 <= int(answered.group(1)) <= 450, out     # ~100 a second over 3 s: paced, not back to back
    p50, p99, p999 = (float(overall.group(i)) for i in (1, 2, 3))
    assert 0 < p50 <= p99 <= p999
    sources = re.findall(r"^  (\w+): " + PERCENTILES, out, re.M)
    assert sources and {name for name, *_ in sources} <= {"online", "provisional", "cold_start", "last_value",
                                                          "seasonal_naive"}, out
    assert re.search(r"clients waking late to send: " + PERCENTILES, out), out
    assert re.search(r"meanwhile: \d+ rounds of ingest \(30 records each\), \d+ drifts detected, \d+ adaptations ran",
                     out), out
    assert ("reproduce: adaptd bench latency --series 30 --clients 2 --seconds 3.0 --interval 0.5 --rate 100 "
            "--set model.train_every=2") in out


@pytest.mark.slow
def test_the_floor_is_measured_with_the_same_clients_before_the_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    """--floor: a stand-in process that only answers, alone, with the feed, and beside a busy
    core; the daemon's p99 is then reported over the closest of them."""
    args = ["bench", "latency", "--series", "30", "--clients", "2", "--seconds", "2", "--interval", "0.5",
            "--rate", "100", "--floor"]
    assert main(args) == 0
    out = capsys.readouterr().out
    floors = re.findall(r"^  (alone|with the ingest feed|with the feed and a busy core): (\d+) answers, "
                        + PERCENTILES + r"; clients waking late: " + PERCENTILES + "$", out, re.M)
    assert [name for name, *_ in floors] == ["alone", "with the ingest feed", "with the feed and a busy core"], out
    assert all(100 <= int(count) <= 300 for _, count, *_ in floors), out      # ~100 a second over 2 s each
    assert all(0 < float(p50) <= float(p99) for _, _, p50, p99, *_ in floors), out
    ratio = re.search(r"p99 over the floor's \(with the feed and a busy core\): ([\d.]+)x", out)
    assert ratio and float(ratio.group(1)) > 0, out
    assert "--rate 100 --floor" in out


@pytest.mark.parametrize("args", [["--rate", "-5"], ["--rate", "inf"], ["--rate", "nan"]])
def test_a_rate_that_is_negative_or_not_finite_is_refused_before_any_daemon_starts(args: list[str]) -> None:
    with pytest.raises(SystemExit, match="--rate must be a finite number >= 0"):
        main(["bench", "latency", *args])


def test_no_clients_is_refused_before_any_daemon_starts() -> None:
    with pytest.raises(SystemExit, match="--clients and --series must be at least 1"):
        main(["bench", "latency", "--clients", "0", "--rate", "10"])


@pytest.mark.parametrize("setting, message", [
    ("train_every=1", "expected section.key=value"),
    ("model.train_every=0", "train_every"),
    ("model.no_such_key=1", "no_such_key"),
    ("model.train_every=inf", "train_every"),
    ("store.url=sqlite:///elsewhere.db", "scratch store and socket"),
    ("server.socket=/tmp/x.sock", "scratch store and socket"),
])
def test_a_bad_setting_is_refused_with_the_config_message_before_any_daemon_starts(
        setting: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_daemon(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a daemon was started")
    monkeypatch.setattr(subprocess, "Popen", no_daemon)
    with pytest.raises(SystemExit, match=f"adaptd bench latency: .*{message}"):
        main(["bench", "latency", "--set", setting])


def test_a_daemon_that_fails_to_start_says_why(tmp_path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    daemon = ScratchDaemon({"store": {"url": f"sqlite:///{tmp_path}/a-file/adaptd.db"}})
    with pytest.raises(RuntimeError, match="daemon exited: (?s:.*)a-file"):
        with daemon:
            pass
    assert daemon.process is not None and daemon.process.returncode is not None
    assert daemon.process.stderr is not None and daemon.process.stderr.closed
    assert not daemon.dir.exists()


def _crash() -> None:
    raise SystemExit(3)


def test_a_forecast_client_that_dies_fails_the_bench_instead_of_hanging_it() -> None:
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()
    dead = ctx.Process(target=_crash)
    dead.start()
    dead.join()
    with pytest.raises(SystemExit, match=r"1 forecast client\(s\) failed \(exit codes \[3\]\)"):
        _collect([dead], out, timeout=60)
