"""The `adaptd` command line end to end: `python -m adaptd ...` against a real daemon (DESIGN.md §4)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from daemon_harness import DaemonProcess, daemon_env, run_cli, running_daemon, short_tempdir, write_config

pytestmark = pytest.mark.integration

# The shared data directory sits beside the repository (DESIGN.md §7).
ETTH1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ett" / "ETTh1.csv"


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with running_daemon(sections={"model": {"max_horizon": 48}}) as d:
        yield d
        rc, log = d.stop()
        assert rc == 0, log
        assert "Traceback" not in log, log


@pytest.fixture
def workdir() -> Iterator[Path]:
    directory = short_tempdir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def summary_counts(stdout: str) -> tuple[int, int]:
    match = re.search(r"accepted (\d+) records, rejected (\d+)", stdout)
    assert match, stdout
    return int(match.group(1)), int(match.group(2))


def series_json(daemon: DaemonProcess) -> dict[str, dict]:
    out = run_cli("series", "--json", config=daemon.config)
    assert out.returncode == 0, out.stderr
    return {s["series"]: s for s in json.loads(out.stdout)}


def test_ingest_wide_csv(daemon: DaemonProcess, workdir: Path) -> None:
    rows = ["date,wa,wb"] + [f"2024-01-01 {h:02d}:00,{h + 0.5},{'' if h == 7 else h * 2}" for h in range(24)]
    path = workdir / "wide.csv"
    path.write_text("\n".join(rows) + "\n")
    out = run_cli("ingest", str(path), "--no-progress", config=daemon.config)
    assert out.returncode == 0, out.stderr
    assert summary_counts(out.stdout) == (47, 0)
    assert "wide input" in out.stdout and "1 empty cells skipped" in out.stdout
    listed = series_json(daemon)
    assert listed["wa"]["observations"] == 24 and listed["wb"]["observations"] == 23
    assert listed["wa"]["first_ts"] == 1704067200.0  # naive times are UTC


def test_ingest_real_wide_dataset(daemon: DaemonProcess, workdir: Path) -> None:
    if not ETTH1.exists():
        pytest.skip(f"{ETTH1} not found")
    lines = ETTH1.read_text().splitlines()[:2001]
    path = workdir / "etth1-head.csv"
    path.write_text("\n".join(lines) + "\n")
    columns = lines[0].split(",")[1:]
    out = run_cli("ingest", str(path), "--no-progress", "--batch", "700", config=daemon.config)
    assert out.returncode == 0, out.stderr
    assert summary_counts(out.stdout) == (2000 * len(columns), 0)
    listed = series_json(daemon)
    for name in columns:
        assert listed[name]["observations"] == 2000
    fc = run_cli("forecast", "OT", "-H", "24", "--json", config=daemon.config)
    answer = json.loads(fc.stdout)
    assert answer["step"] == 3600 and len(answer["points"]) == 24
    assert answer["model"]["kind"]  # whichever engine: it says what it is


def test_ingest_long_csv_with_bad_rows(daemon: DaemonProcess, workdir: Path) -> None:
    path = workdir / "long.csv"
    path.write_text(
        "series,ts,value\n"                 # line 1
        "lg,2024-01-01 00:00,1\n"           # 2 ok
        "lg,2024-01-01 01:00,x\n"           # 3 not a number
        "lg,notatime,3\n"                   # 4 bad time
        "lg,2024-01-01 02:00,nan\n"         # 5 not finite
        ",2024-01-01 03:00,4\n"             # 6 empty series name (the daemon refuses it)
        "lg,2024-01-01 04:00\n"             # 7 two cells
        "\n"                                # 8 blank: not a record, not an error
        "lg,2024-01-01 05:00,inf\n"         # 9 not finite
        "lg,1704088800,6\n")                # 10 ok (epoch seconds, 06:00)
    out = run_cli("ingest", str(path), "--no-progress", config=daemon.config)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert summary_counts(out.stdout) == (2, 6)
    assert "long input" in out.stdout
    reasons = re.findall(r"line (\d+): (.+)", out.stdout)
    assert [int(n) for n, _ in reasons] == [3, 4, 5, 6, 7]  # the first five, by line
    assert "and 1 more" in out.stdout
    shown = {int(n): why for n, why in reasons}
    assert "number" in shown[3] and "time" in shown[4] and "finite" in shown[5]
    assert "series" in shown[6] and "cells" in shown[7]
    listed = series_json(daemon)
    assert listed["lg"]["observations"] == 2
    assert (listed["lg"]["first_ts"], listed["lg"]["last_ts"]) == (1704067200.0, 1704088800.0)


def test_ingest_from_stdin_json_lines(daemon: DaemonProcess) -> None:
    lines = [json.dumps({"series": "js", "ts": 1704067200 + 60 * i, "value": i * 1.5}) for i in range(10)]
    out = run_cli("ingest", "-", config=daemon.config, stdin=("\n".join(lines) + "\n").encode())
    assert out.returncode == 0, out.stderr
    assert summary_counts(out.stdout) == (10, 0)
    assert "jsonl input" in out.stdout
    assert series_json(daemon)["js"]["observations"] == 10


def test_ingest_from_stdin_with_bad_json_lines(daemon: DaemonProcess) -> None:
    text = ('{"series": "jb", "ts": 0, "value": 1}\n'          # 1 ok
            'not json\n'                                       # 2
            '[1, 2]\n'                                         # 3 not an object
            '{"series": "jb", "ts": 60, "value": NaN}\n'       # 4 not finite
            '{"series": "jb", "ts": 120, "value": 1e999}\n'    # 5 not finite
            '{"series": "jb", "ts": "soon", "value": 2}\n'     # 6 bad ts
            '{"series": "jb", "ts": 180, "value": 3}\n')       # 7 ok
    out = run_cli("ingest", "-", config=daemon.config, stdin=text.encode())
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert summary_counts(out.stdout) == (2, 5)
    assert sorted(int(n) for n in re.findall(r"line (\d+):", out.stdout)) == [2, 3, 4, 5, 6]
    assert series_json(daemon)["jb"]["observations"] == 2


def test_ingest_stopped_by_bytes_that_are_not_utf8_says_where_and_what_was_stored(
        daemon: DaemonProcess, workdir: Path) -> None:
    data = workdir / "broken.csv"
    data.write_bytes(b"series,ts,value\n" + b"".join(b"utf,%d,1.5\n" % (i * 3600) for i in range(3000))
                     + b"utf,soon,1\n" + b"utf,\xff\xfe,2\n" + b"utf,99999999,3\n")
    out = run_cli("ingest", str(data), "--no-progress", config=daemon.config)
    assert out.returncode == 2 and "line 3003 is not UTF-8 text" in out.stderr, out.stderr
    told = int(re.search(r"the (\d+) records before it were acknowledged", out.stderr).group(1))
    assert told == series_json(daemon)["utf"]["observations"] == 3000   # every line before it, stored
    # What happened before it is reported as for a whole file: the bad line before it too.
    assert summary_counts(out.stdout) == (3000, 1) and "line 3002:" in out.stdout, out.stdout


def test_ingest_refused_part_way_counts_every_batch_the_daemon_committed(workdir: Path) -> None:
    with running_daemon(sections={"server": {"max_batch_records": 500}}) as d:
        data = workdir / "many.csv"
        data.write_text("series,ts,value\n" + "many,nan,1\n"
                        + "".join(f"many,{i * 3600},{i}\n" for i in range(2000)))
        out = run_cli("ingest", str(data), "--batch", "600", "--no-progress", config=d.config)
        # Batches of 600, 600, 600 and 200: the first three are too large, the last is stored.
        assert out.returncode == 1 and "too_large" in out.stderr, out.stderr
        assert "holding lines 3-602" in out.stderr and "200 records were acknowledged, 1800 sent were not" in out.stderr
        assert series_json(d)["many"]["observations"] == 200
        # The line refused before the batch was is still reported.
        assert summary_counts(out.stdout) == (200, 1) and "line 2:" in out.stdout, out.stdout


@pytest.mark.integration
def test_ingest_through_overload_stores_everything_and_says_what_went_out_of_order(workdir: Path) -> None:
    """Models that fall behind make the daemon answer `overloaded`; `adaptd ingest` backs off
    and re-sends until every record is stored, in file order (3,000 of these 8,000 were stored
    late before the daemon refused batches sent behind a refused one)."""
    data = workdir / "busy.csv"
    data.write_text("series,ts,value\n" + "".join(f"busy{k},{i * 3600},{i % 24}\n"
                                                  for i in range(1000) for k in range(8)))
    sections = {"model": {"learning_backlog": 1000, "shed_lag": 0.05}, "server": {"overload_wait": 0.2}}
    with running_daemon(naive=False, sections=sections) as d:
        out = run_cli("ingest", str(data), "--no-progress", config=d.config)
        assert out.returncode == 0, out
        assert summary_counts(out.stdout) == (8000, 0)
        assert "re-sent after `overloaded`" in out.stdout, out.stdout
        stats = d.request({"op": "stats"})
        assert all(series["observations"] == 1000 for series in series_json(d).values())
    # The daemon refused every batch sent behind a refused one, so nothing went out of order.
    assert "stored after later lines" not in out.stdout and stats["records_late"] == 0, (stats, out.stdout)


def test_ingest_when_the_daemon_dies_part_way_reports_what_it_acknowledged(workdir: Path) -> None:
    with running_daemon() as d:
        argv = [sys.executable, "-m", "adaptd", "ingest", "-", "--batch", "10", "--no-progress",
                "--config", str(d.config)]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=str(d.config.parent), env=daemon_env())
        assert proc.stdin is not None
        proc.stdin.write(b"series,ts,value\ngone,soon,0\n" + b"".join(b"gone,%d,%d\n" % (i * 3600, i)
                                                                       for i in range(10)))
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while series_json(d).get("gone", {}).get("observations") != 10:
            assert time.monotonic() < deadline, "the first batch was never stored"
            time.sleep(0.1)
        time.sleep(0.5)   # its answer is on the way
        d.kill()
        out, err = proc.communicate(b"".join(b"gone,%d,1\n" % (i * 3600) for i in range(10, 25)), timeout=60)
        assert proc.returncode == 1, (out, err)
        assert b"Traceback" not in err and b"accepted 10 records, rejected 1" in out, (out, err)
        assert b"line 2:" in out, out


def test_forecast_table_and_json(daemon: DaemonProcess, workdir: Path) -> None:
    path = workdir / "fc.csv"
    path.write_text("series,ts,value\n" + "".join(f"fc,2024-03-01T{h:02d}:00:00,{h}\n" for h in range(12)))
    assert run_cli("ingest", str(path), "--no-progress", config=daemon.config).returncode == 0

    table = run_cli("forecast", "fc", "-H", "3", config=daemon.config)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert len(lines) == 5, table.stdout  # title, header, 3 steps
    assert "fc" in lines[0] and "2024-03-01T11:00:00Z" in lines[0] and "1h" in lines[0]
    assert lines[1].split()[:2] == ["time", "(UTC)"]
    assert [line.split()[0] for line in lines[2:]] == ["2024-03-01T12:00:00Z", "2024-03-01T13:00:00Z",
                                                       "2024-03-01T14:00:00Z"]

    out = run_cli("forecast", "fc", "--horizon", "3", "--json", config=daemon.config)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["ok"] is True and answer["series"] == "fc" and len(answer["points"]) == 3
    assert answer["origin"] == 1709290800.0  # 2024-03-01T11:00Z
    assert [p["ts"] for p in answer["points"]] == [1709290800.0 + 3600 * k for k in (1, 2, 3)]
    # The table shows the same numbers as the JSON.
    assert [float(line.split()[1]) for line in lines[2:]] == pytest.approx([p["value"] for p in answer["points"]],
                                                                          rel=1e-5)


def test_forecast_without_a_horizon_asks_what_the_daemon_allows(workdir: Path) -> None:
    """`-H` defaults to 24, or to the daemon's [model] max_horizon where that is less, even when
    the client's config (e.g. one listing a cluster's sockets) does not say it: a plain `adaptd
    forecast` is never refused for a horizon the operator did not ask for."""
    with running_daemon(sections={"model": {"max_horizon": 6}}) as d:
        d.ingest([{"series": "short", "ts": 1704067200 + 3600 * i, "value": float(i)} for i in range(12)])
        client = workdir / "client.toml"
        client.write_text(f'[server]\nsocket = "{d.socket_path}"\n')   # max_horizon: the built-in 48
        for config in (d.config, client):
            out = run_cli("forecast", "short", "--json", config=config)
            assert out.returncode == 0, out.stderr
            assert len(json.loads(out.stdout)["points"]) == 6
        assert d.request({"op": "stats"})["max_horizon"] == 6


def test_forecast_errors_exit_1(daemon: DaemonProcess) -> None:
    out = run_cli("forecast", "no-such-series", "-H", "3", config=daemon.config)
    assert out.returncode == 1 and "unknown_series" in out.stderr, out
    out = run_cli("forecast", "wa", "-H", "10000", config=daemon.config)
    assert out.returncode == 1 and "bad_request" in out.stderr, out


def test_series_and_status(daemon: DaemonProcess) -> None:
    daemon.ingest([{"series": "st", "ts": 1704067200 + 3600 * i, "value": 1.0} for i in range(5)])
    out = run_cli("series", config=daemon.config)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["series", "observations"]
    row = next(line.split() for line in lines[1:] if line.split()[0] == "st")
    assert row[1:] == ["5", "2024-01-01T00:00:00Z", "2024-01-01T04:00:00Z"]

    out = run_cli("status", config=daemon.config)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^health:\s+ok$", out.stdout, re.M), out.stdout
    assert re.search(r"^series:\s+\d+$", out.stdout, re.M)
    assert "meta-training" not in out.stdout          # the naive engine learns no initializer
    stats = json.loads(run_cli("status", "--json", config=daemon.config).stdout)
    assert stats["health"] == "ok" and stats["series"] == len(daemon.series())


def test_adaptd_config_environment_variable_names_the_file(daemon: DaemonProcess) -> None:
    out = run_cli("status", "--json", env={"ADAPTD_CONFIG": str(daemon.config)})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["config"] == str(daemon.config)


@pytest.mark.parametrize("stale", [False, True], ids=["no-socket-file", "stale-socket-file"])
def test_client_commands_without_a_daemon_say_it_is_not_running(workdir: Path, stale: bool) -> None:
    config = write_config(workdir)
    if stale:  # a socket file nobody listens on, as a crash leaves it
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(str(workdir / "adaptd.sock"))
    data = workdir / "d.csv"
    data.write_text("series,ts,value\na,0,1\n")
    for argv in (["status"], ["series"], ["forecast", "a", "-H", "3"], ["ingest", str(data), "--no-progress"]):
        out = run_cli(*argv, config=config)
        assert out.returncode == 1, (argv, out)
        assert "not running" in out.stderr, (argv, out.stderr)
        assert "Traceback" not in out.stderr


def test_a_client_of_a_hung_daemon_gets_an_error_not_a_traceback(workdir: Path) -> None:
    """A daemon that accepts a connection but never answers (hung, the watchdog's case)."""
    from adaptd.client import Client, ClientError

    path = workdir / "hung.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hung:
        hung.bind(str(path))
        hung.listen()
        with Client(path, timeout=0.3) as client:
            with pytest.raises(ClientError, match="no answer from the daemon .* within 0.3s"):
                client.request({"op": "ping"})
    # Hung before accepting: once its listen backlog is full, connecting fails at once.
    path = workdir / "full.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hung:
        hung.bind(str(path))
        hung.listen(0)
        waiting = []
        with pytest.raises(ClientError, match="accepts no connection"):
            for _ in range(16):
                waiting.append(Client(path, timeout=0.3))
                waiting[-1].connect()
        for client in waiting:
            client.close()


@pytest.mark.parametrize("argv, expected", [
    (["ingest", "{dir}", "--no-progress"], "a directory, not a file"),
    (["ingest", "{dir}/d.csv", "--batch", "0", "--no-progress"], "--batch 0: expected at least 1"),
])
def test_ingest_refuses_a_directory_and_an_empty_batch_size(workdir: Path, argv: list[str], expected: str) -> None:
    config = write_config(workdir)
    (workdir / "d.csv").write_text("series,ts,value\na,0,1\n")
    out = run_cli(*[a.format(dir=workdir) for a in argv], config=config)
    assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("argv", [["bench", "--config", "{c}", "adapt"], ["bench", "adapt", "--config", "{c}"]],
                         ids=["before-the-name", "after-the-name"])
def test_bench_reads_config_given_before_or_after_the_benchmark_name(workdir: Path, argv: list[str]) -> None:
    from adaptd.cli import main

    bad = workdir / "bad.toml"
    bad.write_text("[model]\nwindow = -1\n")
    assert main([part.format(c=bad) for part in argv]) == 2     # refused before anything runs


def test_bad_config_value_fails_serve_with_exit_2_naming_the_key(workdir: Path) -> None:
    config = workdir / "bad.toml"
    config.write_text(f'[server]\nsocket = "{workdir}/s.sock"\nmax_line_bytes = "x"\n[metrics]\nlisten = ""\n')
    out = run_cli("serve", config=config, timeout=30)
    assert out.returncode == 2, out
    assert "server.max_line_bytes" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (workdir / "s.sock").exists()
    # Client commands read the same file and refuse it the same way.
    out = run_cli("status", config=config)
    assert out.returncode == 2 and "server.max_line_bytes" in out.stderr


def test_unknown_config_key_and_missing_file(workdir: Path) -> None:
    config = workdir / "typo.toml"
    config.write_text("[server]\nmax_line_byte = 4096\n")
    out = run_cli("check-config", config=config)
    assert out.returncode == 2 and "server.max_line_byte" in out.stderr and "max_line_bytes" in out.stderr
    out = run_cli("serve", config=workdir / "missing.toml")
    assert out.returncode == 2 and "not found" in out.stderr


BROKEN = {   # a library whose compiled part does not load, as each one's import would say it
    "torch": ("torch/__init__.py", 'raise OSError("libtorch_cpu.so: cannot open shared object file")'),
    "river": ("river/drift/__init__.py", 'raise ImportError("river._river_rust: undefined symbol")'),
    "numpy": ("numpy/__init__.py", 'raise ImportError("libopenblas.so.0: cannot open shared object file")'),
}


@pytest.mark.parametrize("library", sorted(BROKEN))
def test_a_broken_library_is_named_with_the_way_out(workdir: Path, library: str) -> None:
    """A library failing to load stops serve and check-config with one line naming it and what
    to do; the naive engine needs neither torch nor river, and runs without them."""
    broken = workdir / "broken"
    path, text = BROKEN[library]
    for package in Path(path).parents[:-1]:
        (broken / package).mkdir(parents=True, exist_ok=True)
        (broken / package / "__init__.py").touch()
    (broken / path).write_text(text + "\n")
    env = {"PYTHONPATH": str(broken)}
    config = write_config(workdir, naive=False)
    for command in ("serve", "check-config"):
        out = run_cli(command, config=config, env=env, timeout=60)
        assert out.returncode == 2, out
        assert f'[model] engine = "online" needs {library}, which does not load here (' in out.stderr, out.stderr
        assert "reinstall it" in out.stderr and "Traceback" not in out.stderr
        assert ('engine = "naive" to serve' in out.stderr) == (library != "numpy")   # numpy: both need it
    assert not (workdir / "adaptd.sock").exists() and not (workdir / "adaptd.db").exists()   # stopped first
    naive = write_config(workdir, name="naive.toml")
    if library == "numpy":
        out = run_cli("serve", config=naive, env=env, timeout=60)
        assert out.returncode == 2 and '[model] engine = "naive" needs numpy' in out.stderr, out.stderr
        return
    daemon = DaemonProcess(naive, env=env).start()
    try:
        daemon.ingest([{"series": "a", "ts": 0.0, "value": 1.0}, {"series": "a", "ts": 3600.0, "value": 2.0}])
        assert daemon.forecast("a", 1)["points"][0]["value"] == 2.0
    finally:
        assert daemon.stop()[0] == 0
