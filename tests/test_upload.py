"""`adaptd ingest` (adaptd/upload.py) against stand-in cluster members on real Unix sockets:
routing to the owners, the check of the socket list before anything is sent, a member that stops
part way, and the report. test_cluster.py does the same with real daemons on PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from adaptd.cluster import owner
from adaptd.config import Settings, parse_config
from adaptd.route import ClusterMismatch
from adaptd.upload import UploadReport, Stopped, upload

from daemon_harness import short_tempdir
from fake_daemon import FakeMember

NAMES = [f"meter-{k}" for k in range(12)]


@pytest.fixture
def directory() -> Iterator[Path]:
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cluster(directory: Path) -> Iterator[Callable[..., list[FakeMember]]]:
    """members(n, **per-member options) -> n stand-in members on sockets m0.sock, m1.sock, ..."""
    started: list[FakeMember] = []

    def start(n: int, **options: dict) -> list[FakeMember]:
        for k in range(n):
            started.append(FakeMember(directory / f"m{k}.sock", n, k, **options.get(str(k), {})))
        return started[-n:]

    yield start
    for member in started:
        member.close()


def client_settings(directory: Path, sockets: list[str]) -> Settings:
    return parse_config({"cluster": {"sockets": sockets}}, "client.toml", directory)


def long_csv(directory: Path, rows: int) -> Path:
    path = directory / "all.csv"
    path.write_text("series,ts,value\n" + "".join(f"{NAMES[i % len(NAMES)]},{i * 60},{i}\n" for i in range(rows)))
    return path


def test_every_record_goes_to_its_owner_in_file_order(directory: Path, cluster) -> None:
    members = cluster(3)
    data = long_csv(directory, 1000)
    report = upload(client_settings(directory, ["m0.sock", "m1.sock", "m2.sock"]), str(data), batch=64,
                    progress=False)
    assert (report.accepted, report.rejected) == (1000, 0)
    for k, member in enumerate(members):
        expected = [i * 60 for i in range(1000) if owner(NAMES[i % len(NAMES)], 3) == k]
        assert [r["ts"] for r in member.records] == expected   # its own, every one, in file order
        assert report.members[k].accepted == len(expected) > 0
        assert f"member {k} ({directory / f'm{k}.sock'}): accepted {len(expected)}, rejected 0" in report.summary()
    assert report.summary().startswith("accepted 1000 records, rejected 0 (long input")


@pytest.mark.parametrize("sockets, expected", [
    (["m1.sock", "m0.sock"], "[cluster] sockets[0] is {d}/m1.sock, whose daemon is member 1 of 2, not member 0"),
    (["m0.sock"], "[cluster] sockets lists 1 socket, but the daemon at {d}/m0.sock is member 0 of 2"),
])
def test_a_list_in_the_wrong_order_or_of_the_wrong_length_is_refused_before_anything_is_sent(
        directory: Path, cluster, sockets: list[str], expected: str) -> None:
    members = cluster(2)
    data = long_csv(directory, 100)
    with pytest.raises(ClusterMismatch) as info:
        upload(client_settings(directory, sockets), str(data), progress=False)
    message = str(info.value)
    assert message.startswith("client.toml: ") and expected.format(d=directory) in message, message
    assert message.endswith("no record was sent")
    assert all(member.ops in ([], ["stats"]) and not member.records for member in members)


def test_a_daemon_from_before_cluster_is_not_taken_for_a_member(directory: Path, cluster) -> None:
    cluster(2, **{"1": {"cluster": False}})
    with pytest.raises(ClusterMismatch, match="m1.sock is member 0 of 1"):
        upload(client_settings(directory, ["m0.sock", "m1.sock"]), str(long_csv(directory, 10)), progress=False)


def test_a_member_that_refuses_a_batch_stops_every_member_and_the_report_counts_what_they_stored(
        directory: Path, cluster) -> None:
    members = cluster(2, **{"1": {"fail_from": 2}})
    data = long_csv(directory, 2000)
    with pytest.raises(Stopped) as info:
        upload(client_settings(directory, ["m0.sock", "m1.sock"]), str(data), batch=50, progress=False)
    message, report = str(info.value), info.value.report
    assert message.startswith(f"member 1 ({directory}/m1.sock): the daemon refused a batch (internal: "), message
    stored = sum(len(member.records) for member in members)
    assert f"; stopped there. {stored} records were acknowledged, " in message
    assert report.accepted == stored and report.members[1].accepted == 50 == len(members[1].records)
    assert info.value.exit_code == 1


def test_one_socket_sends_everything_there_and_says_how_to_route(directory: Path, cluster) -> None:
    members = cluster(2)
    settings = parse_config({"server": {"socket": "m0.sock"}}, "member0.toml", directory)
    report = upload(settings, str(long_csv(directory, 100)), progress=False)
    assert report.accepted == len(members[0].records) and report.rejected == 100 - report.accepted > 0
    assert members[0].ops == ["ingest"]   # no check: one daemon, as before [cluster] sockets
    assert "list every member's socket in [cluster] sockets" in report.summary()
    assert "member 0 (" not in report.summary()


def test_the_first_reasons_are_the_first_lines_whichever_daemon_answered_first() -> None:
    report = UploadReport()
    for line in (40, 7, 31, 12, 3, 9, 50, 2):
        report.reason(line, f"r{line}")
    report.reason(7, "second reason of line 7")
    assert report.reasons == [(2, "r2"), (3, "r3"), (7, "r7"), (7, "second reason of line 7"), (9, "r9")]
