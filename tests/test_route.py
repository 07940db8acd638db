"""Which daemon a client command talks to (adaptd/route.py): the splitting of a file's records
by owner, the socket list from the config, the check of each daemon's place, and `forecast`,
`series` and `status` against two real cluster members (the session's `pair`, conftest.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from adaptd.cli import main, status_output
from adaptd.cluster import owner
from adaptd.config import parse_config
from adaptd.route import Batches, Route, mismatch

from daemon_harness import ClusterPair, hourly


@pytest.mark.parametrize("members, size", [(1, 7), (2, 1), (3, 10), (5, 1000)])
def test_batches_carry_every_record_once_to_its_owner_in_file_order(members: int, size: int) -> None:
    rng = random.Random(members * 100 + size)
    names = [f"s{rng.randrange(10**6)}-é" for _ in range(40)]
    records = [{"series": rng.choice(names), "ts": i, "value": 0.5} for i in range(3000)]
    sent: list[tuple[int, list[dict[str, Any]], list[int]]] = []
    batches = Batches(Route(tuple(Path(f"{k}.sock") for k in range(members))), size,
                      lambda member, batch, lines: sent.append((member, batch, lines)))
    for line, record in enumerate(records, start=2):
        batches.add(record, line)
    batches.flush()
    assert all(0 < len(batch) <= size and len(batch) == len(lines) for _, batch, lines in sent)
    for member in range(members):
        mine = [(record, line) for k, batch, lines in sent if k == member for record, line in zip(batch, lines)]
        expected = [(record, line) for line, record in enumerate(records, start=2)
                    if owner(record["series"], members) == member]
        assert mine == expected
        sizes = [len(batch) for k, batch, _ in sent if k == member]
        assert all(n == size for n in sizes[:-1])   # full batches, then what was left at the end


def test_the_route_is_the_cluster_sockets_else_the_server_socket(tmp_path: Path) -> None:
    alone = Route.of(parse_config({"server": {"socket": "a.sock"}}, "a.toml", tmp_path))
    assert alone == Route((tmp_path / "a.sock",), cluster=False, source="a.toml")
    assert alone.member_of("anything") == 0 and alone.label(0) == ""
    settings = parse_config({"server": {"socket": "a.sock"}, "cluster": {"sockets": ["m0.sock", "/run/m1.sock"]}},
                            "c.toml", tmp_path)
    route = Route.of(settings)
    assert route.sockets == (tmp_path / "m0.sock", Path("/run/m1.sock")) and route.cluster
    assert route.label(1) == "member 1 (/run/m1.sock): "
    assert [route.member_of(f"meter-{k}") for k in range(6)] == [owner(f"meter-{k}", 2) for k in range(6)]


def test_a_daemon_from_before_cluster_is_not_taken_for_a_member() -> None:
    """Its stats has no `cluster`: it is one daemon alone, member 0 of 1."""
    older = {"ok": True, "health": "ok", "version": "0.0.9", "series": 3}
    assert mismatch(0, 1, Path("m0.sock"), older) is None
    why = mismatch(1, 2, Path("m1.sock"), older)
    assert why is not None and "the daemon at m1.sock is member 0 of 1" in why
    assert "list every member's socket, in member order" in why


def client_config(directory: Path, sockets: list[str]) -> Path:
    path = directory / "client.toml"
    path.write_text("[cluster]\nsockets = [" + ", ".join(f'"{s}"' for s in sockets) + "]\n")
    return path


def load(pair: ClusterPair, tag: str, n: int = 2) -> dict[int, list[str]]:
    """`n` series of each member's, named after `tag`, with 30 hourly records each, stored by their owner."""
    ours = {k: pair.names(k, n, tag) for k in range(pair.MEMBERS)}
    for k, names in ours.items():
        pair[k].ingest([r for name in names for r in hourly(name, 30)])
    return ours


@pytest.mark.postgres
@pytest.mark.integration
def test_forecast_asks_the_member_that_owns_the_series(pair: ClusterPair, tmp_path: Path, capsys) -> None:
    ours = load(pair, "fc-owner")
    config = client_config(tmp_path, pair.sockets)
    for k in (0, 1):
        name = ours[k][0]
        before = [pair.requests(m) for m in (0, 1)]
        assert main(["forecast", name, "-H", "3", "--json", "--config", str(config)]) == 0
        answer = json.loads(capsys.readouterr().out)
        after = [pair.requests(m) for m in (0, 1)]
        assert answer["series"] == name and answer["origin"] == hourly(name, 30)[-1]["ts"]
        # The owner was checked (stats), then asked; the other member heard nothing.
        assert {op: after[k][op] - before[k].get(op, 0) for op in after[k]
                if after[k][op] != before[k].get(op, 0)} == {"stats": 1, "forecast": 1}
        assert after[1 - k] == before[1 - k]
        assert answer["points"] == pair[k].forecast(name, 3)["points"]
    assert main(["forecast", ours[0][0], "-H", "3", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith(f"{ours[0][0]}: 3 steps of 1h after ")


@pytest.mark.postgres
@pytest.mark.integration
def test_series_lists_every_members_and_status_shows_each(pair: ClusterPair, tmp_path: Path, capsys) -> None:
    ours = load(pair, "listed")
    config = client_config(tmp_path, pair.sockets)
    assert main(["series", "--json", "--config", str(config)]) == 0
    listing = json.loads(capsys.readouterr().out)
    listed = [item["series"] for item in listing]
    # Each member's own list, merged: every series once, in name order.
    assert listed == sorted([*pair[0].series(), *pair[1].series()])
    assert all(listed.count(name) == 1 for names in ours.values() for name in names)
    assert {item["series"]: item["observations"] for item in listing if item["series"].startswith("listed-")} == {
        name: 30 for names in ours.values() for name in names}
    assert main(["series", "--config", str(config)]) == 0
    table = capsys.readouterr().out
    assert all(f"\n{name}  " in table for names in ours.values() for name in names), table
    assert main(["status", "--json", "--config", str(config)]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [answer["cluster"] for answer in answers] == [{"members": 2, "member": 0}, {"members": 2, "member": 1}]
    assert all(answer["health"] == "ok" and answer["config"] == str(d.config) for answer, d in zip(answers, pair))
    assert main(["status", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    for k, d in enumerate(pair):
        assert f"member {k} ({d.socket_path})\nhealth:            ok" in text, text
        assert f"cluster:           member {k} of 2" in text
        assert f"config:            {d.config}" in text


@pytest.mark.postgres
@pytest.mark.integration
def test_status_exits_1_unless_every_member_is_healthy(pair: ClusterPair, tmp_path: Path) -> None:
    """A real member is not made unhealthy on demand (its threads stop only on a bug): its real
    answer, with the health a stopped store writer gives. A member that is not running at all:
    test_upload.py, after killing one."""
    route = Route.of(parse_config({"cluster": {"sockets": pair.sockets}}, "client.toml", tmp_path))
    answers = {k: d.request({"op": "stats"}) for k, d in enumerate(pair)}
    assert status_output(route, answers, {}, as_json=False)[1] == 0
    answers[1]["health"] = "store writer or learning thread stopped"
    text, code = status_output(route, answers, {}, as_json=False)
    assert code == 1 and f"member 1 ({pair[1].socket_path})\nhealth:            store writer or" in text
    text, code = status_output(route, answers, {}, as_json=True)
    assert code == 1 and [a["health"] for a in json.loads(text)] == ["ok", "store writer or learning thread stopped"]


@pytest.mark.postgres
@pytest.mark.integration
@pytest.mark.parametrize("order", ["swapped", "short", "long"])
def test_every_client_command_refuses_a_socket_list_in_the_wrong_order_or_of_the_wrong_length(
        pair: ClusterPair, tmp_path: Path, capsys, order: str) -> None:
    s0, s1 = pair.sockets
    missing = str(pair[0].directory / "m2.sock")   # nothing there (a short path): a member that does not exist
    sockets, expected = {
        "swapped": ([s1, s0], "list the sockets in member order"),
        "short": ([s0], f"[cluster] sockets lists 1 socket, but the daemon at {s0} is member 0 of 2"),
        "long": ([s0, s1, missing], "[cluster] sockets lists 3 sockets, but the daemon at "),
    }[order]
    config = client_config(tmp_path, sockets)
    # A series each socket of the list is taken to own: each way the owner is picked.
    names = [next(f"refused-{order}-{i}" for i in range(1000) if owner(f"refused-{order}-{i}", len(sockets)) == k)
             for k in range(len(sockets))]
    data = tmp_path / "all.csv"
    data.write_text("series,ts,value\n" + "".join(f"{name},{3600 * i},{i}\n" for i in range(20) for name in names))
    before = [pair.requests(k) for k in (0, 1)]
    ingested = [d.request({"op": "stats"})["records_ingested"] for d in pair]
    for argv in ([["forecast", name] for name in names] + [["series"], ["status"], ["status", "--json"],
                                                           ["ingest", str(data), "--no-progress"]]):
        assert main([*argv, "--config", str(config)]) == 2, argv
        out, err = capsys.readouterr()
        assert err.startswith(f"adaptd: {config}: [cluster] sockets") and expected in err, (argv, err)
        assert out == "", (argv, out)
    assert "no record was sent" in err   # ingest's
    for k in (0, 1):   # nothing but the checks (stats) reached the daemons; nothing was stored
        after = pair.requests(k)
        assert {op: n for op, n in after.items() if op != "stats"} == {
            op: n for op, n in before[k].items() if op != "stats"}
        assert pair.stored(k, names) == {}
    assert [d.request({"op": "stats"})["records_ingested"] for d in pair] == ingested


def test_ingest_help_says_how_to_send_to_a_cluster(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "with [cluster] sockets in the config (every member's socket, in member order)" in text
    assert "each record goes to the member that owns its series" in text


def test_a_socket_path_too_long_for_a_unix_address_is_a_client_error_not_a_traceback() -> None:
    from adaptd.client import Client, ClientError
    with pytest.raises(ClientError, match="cannot connect to .*: AF_UNIX path too long"):
        Client("/tmp/" + "x" * 200).connect()


@pytest.mark.parametrize("member", ["2", "-1"])
def test_a_member_number_outside_the_list_is_refused_before_any_daemon_is_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], member: str) -> None:
    config = tmp_path / "client.toml"
    config.write_text('[cluster]\nsockets = ["m0.sock", "m1.sock"]\n')   # nothing listens there
    for command in ("status", "series"):
        assert main([command, "--member", member, "--config", str(config)]) == 2
        assert f"--member {member}: [cluster] sockets lists members 0 to 1" in capsys.readouterr().err
