"""`adaptd ingest` (adaptd/upload.py) against two real cluster members (the session's `pair`,
conftest.py): routing to the owners, the check of the socket list before anything is sent, a
member killed part way, the report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptd.config import Settings, parse_config
from adaptd.ownership import owner
from adaptd.route import ClusterMismatch
from adaptd.upload import UploadReport, upload

from daemon_harness import ClusterPair, daemon_env, run_cli


def client_settings(directory: Path, sockets: list[str]) -> Settings:
    return parse_config({"cluster": {"sockets": sockets}}, "client.toml", directory)


def interleaved(pair: ClusterPair, tag: str, n: int = 6) -> list[str]:
    """`n` names of the test's own, alternately member 0's and member 1's."""
    ours = [pair.names(k, n // 2, tag) for k in (0, 1)]
    return [name for both in zip(*ours) for name in both]


def long_csv(directory: Path, names: list[str], rows: int) -> Path:
    path = directory / "all.csv"
    path.write_text("series,ts,value\n" + "".join(f"{names[i % len(names)]},{i * 60},{i}\n" for i in range(rows)))
    return path


def not_ingest(requests: dict[str, float]) -> dict[str, float]:
    return {op: n for op, n in requests.items() if op not in ("ingest", "stats")}


@pytest.mark.postgres
@pytest.mark.integration
def test_every_record_goes_to_its_owner_in_file_order(pair: ClusterPair, tmp_path: Path) -> None:
    names = interleaved(pair, "owners")
    data = long_csv(tmp_path, names, 1000)
    late = [d.request({"op": "stats"})["records_late"] for d in pair]
    report = upload(client_settings(tmp_path, pair.sockets), str(data), batch=64, progress=False)
    assert (report.accepted, report.rejected) == (1000, 0)
    for k, d in enumerate(pair):
        mine = [name for name in names if owner(name, 2) == k]
        expected = sum(1 for i in range(1000) if owner(names[i % len(names)], 2) == k)
        assert pair.stored(k, names) == {name: 1000 // len(names) + (names.index(name) < 1000 % len(names))
                                         for name in mine}   # its own, every one; none of the other's
        assert report.members[k].accepted == expected > 0
        assert f"member {k} ({d.socket_path}): accepted {expected}, rejected 0" in report.summary()
    # In file order: no record reached a member after a later one of its series.
    assert [d.request({"op": "stats"})["records_late"] for d in pair] == late
    assert report.summary().startswith("accepted 1000 records, rejected 0 (long input")


@pytest.mark.postgres
@pytest.mark.integration
@pytest.mark.parametrize("order", ["swapped", "short"])
def test_a_list_in_the_wrong_order_or_of_the_wrong_length_is_refused_before_anything_is_sent(
        pair: ClusterPair, tmp_path: Path, order: str) -> None:
    s0, s1 = pair.sockets
    sockets, expected = {
        "swapped": ([s1, s0], f"[cluster] sockets[0] is {s1}, whose daemon is member 1 of 2, not member 0"),
        "short": ([s0], f"[cluster] sockets lists 1 socket, but the daemon at {s0} is member 0 of 2"),
    }[order]
    names = interleaved(pair, f"refused-{order}")
    data = long_csv(tmp_path, names, 100)
    before = [pair.requests(k) for k in (0, 1)]
    with pytest.raises(ClusterMismatch) as info:
        upload(client_settings(tmp_path, sockets), str(data), progress=False)
    message = str(info.value)
    assert message.startswith("client.toml: ") and expected in message, message
    assert message.endswith("no record was sent")
    for k in (0, 1):   # at most the check of its place (stats); no ingest
        after = pair.requests(k)
        assert after.get("ingest") == before[k].get("ingest") and not_ingest(after) == not_ingest(before[k])
        assert pair.stored(k, names) == {}


@pytest.mark.postgres
@pytest.mark.integration
def test_a_member_killed_part_way_stops_the_upload_for_all_and_the_report_counts_what_each_acknowledged(
        pair: ClusterPair, tmp_path: Path) -> None:
    names = interleaved(pair, "killed")
    config = tmp_path / "client.toml"
    config.write_text("[cluster]\nsockets = [" + ", ".join(f'"{s}"' for s in pair.sockets) + "]\n")
    rows = (f"{names[i % len(names)]},{i * 60},{i}\n".encode() for i in range(3000))
    proc = subprocess.Popen([sys.executable, "-m", "adaptd", "ingest", "-", "--batch", "10", "--no-progress",
                             "--config", str(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=daemon_env(), cwd=str(tmp_path))
    assert proc.stdin is not None
    # The first 200 records (100 a member, 10 batches each) are sent: wait until both stored them.
    proc.stdin.write(b"series,ts,value\n" + b"".join(next(rows) for _ in range(200)))
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while [sum(pair.stored(k, names).values()) for k in (0, 1)] != [100, 100]:
        assert time.monotonic() < deadline, "the first batches were never stored"
        time.sleep(0.05)
    time.sleep(0.5)   # their answers are on the way
    pair[1].kill()
    out, err = (text.decode() for text in proc.communicate(b"".join(rows), timeout=60))
    assert proc.returncode == 1 and "Traceback" not in err, (out, err)
    # It stopped for member 0 too, and says what each member acknowledged: all that member 0
    # stored; of member 1's, all it stored before it was killed.
    stored0 = sum(pair.stored(0, names).values())
    counts = [int(n) for n in re.findall(r"member \d \(.*\): accepted (\d+), rejected 0", out)]
    assert len(counts) == 2 and counts[0] == stored0 < 1500 and counts[1] == 100, out
    assert out.startswith(f"accepted {stored0 + 100} records, rejected 0 (long input"), out
    assert err.startswith(f"adaptd: -: member 1 ({pair[1].socket_path}): the daemon closed the connection"), err
    assert f"; stopped there. {stored0 + 100} records were acknowledged, " in err, err
    # With a member down, the commands that need it say so (exit 1), checking the list first;
    # status and series still show what the member that runs answers.
    status = run_cli("status", config=config)
    assert status.returncode == 1, status
    assert f"member 0 ({pair[0].socket_path})\nhealth:            ok" in status.stdout, status.stdout
    assert (f"member 1 ({pair[1].socket_path})\nhealth:            unreachable: member 1 ({pair[1].socket_path}): "
            in status.stdout and "adaptd is not running" in status.stdout), status.stdout
    status = run_cli("status", "--json", config=config)
    assert status.returncode == 1 and [a.get("health") for a in json.loads(status.stdout)] == ["ok", None]
    own = run_cli("status", "--member", "0", config=config)   # a host's own health check
    assert own.returncode == 0 and "member 1" not in own.stdout, own
    listed = run_cli("series", "--json", config=config)
    assert listed.returncode == 1 and "(its series are not listed)" in listed.stderr, listed
    ours = {s["series"] for s in json.loads(listed.stdout)} & set(names)   # the pair serves other tests' too
    assert ours == {n for n in names if owner(n, 2) == 0}
    forecast = run_cli("forecast", names[1], config=config)
    assert forecast.returncode == 1 and "adaptd is not running" in forecast.stderr, forecast
    pair[1].start()   # what it acknowledged is in the store
    assert sum(pair.stored(1, names).values()) == 100


@pytest.mark.postgres
@pytest.mark.integration
def test_one_socket_sends_everything_there_and_says_how_to_route(pair: ClusterPair, tmp_path: Path) -> None:
    names = interleaved(pair, "alone")
    settings = parse_config({"server": {"socket": str(pair[0].socket_path)}}, "member0.toml", tmp_path)
    before = pair.requests(0)
    report = upload(settings, str(long_csv(tmp_path, names, 100)), progress=False)
    assert report.accepted == sum(pair.stored(0, names).values()) == 50
    assert report.rejected == 50 and pair.stored(1, names) == {}
    after = pair.requests(0)   # one batch, no check: one daemon, as before [cluster] sockets
    assert after["ingest"] - before.get("ingest", 0) == 1 and after.get("stats") == before.get("stats")
    assert "list every member's socket in [cluster] sockets" in report.summary()
    assert "member 0 (" not in report.summary()


def test_the_first_reasons_are_the_first_lines_whichever_daemon_answered_first() -> None:
    report = UploadReport()
    for line in (40, 7, 31, 12, 3, 9, 50, 2):
        report.reason(line, f"r{line}")
    report.reason(7, "second reason of line 7")
    assert report.reasons == [(2, "r2"), (3, "r3"), (7, "r7"), (7, "second reason of line 7"), (9, "r9")]
