"""Which daemon a client command talks to (adaptd/route.py): the splitting of a file's records
by owner, the socket list from the config, and `forecast`, `series` and `status` routed to
stand-in members on real Unix sockets (test_cluster.py runs real daemons)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from adaptd.cli import main
from adaptd.cluster import owner
from adaptd.config import ENV_VAR, parse_config
from adaptd.route import Batches, Route

from daemon_harness import short_tempdir
from fake_daemon import FakeMember


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


@pytest.fixture
def members(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeMember]]:
    """Two stand-in members, and $ADAPTD_CONFIG naming a client config that lists their sockets."""
    directory = short_tempdir()
    started = [FakeMember(directory / f"m{k}.sock", 2, k) for k in range(2)]
    config = directory / "client.toml"
    config.write_text('[cluster]\nsockets = ["m0.sock", "m1.sock"]\n')
    monkeypatch.setenv(ENV_VAR, str(config))
    yield started
    for member in started:
        member.close()
    shutil.rmtree(directory, ignore_errors=True)


def names_of(member: int) -> list[str]:
    return [name for name in (f"meter-{k}" for k in range(100)) if owner(name, 2) == member]


def test_forecast_asks_the_member_that_owns_the_series(members: list[FakeMember], capsys) -> None:
    for k in (0, 1):
        assert main(["forecast", names_of(k)[0], "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["series"] == names_of(k)[0]
        assert members[k].ops[-2:] == ["stats", "forecast"] and "forecast" not in members[1 - k].ops
        members[k].ops.clear()


def test_series_lists_every_members_and_status_shows_each(members: list[FakeMember], capsys) -> None:
    for k, member in enumerate(members):
        member.records += [{"series": name, "ts": 0, "value": 1.0} for name in names_of(k)[:2]]
    assert main(["series", "--json"]) == 0
    listed = [item["series"] for item in json.loads(capsys.readouterr().out)]
    assert listed == sorted(names_of(0)[:2] + names_of(1)[:2])
    assert main(["status", "--json"]) == 0
    assert [answer["cluster"] for answer in json.loads(capsys.readouterr().out)] == [
        {"members": 2, "member": 0}, {"members": 2, "member": 1}]
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "member 1 (" in text and "cluster:           member 1 of 2" in text


def test_client_commands_refuse_a_list_in_the_wrong_order_with_exit_2(members: list[FakeMember], capsys,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = members[0].path.parent / "swapped.toml"
    config.write_text('[cluster]\nsockets = ["m1.sock", "m0.sock"]\n')
    for argv in (["forecast", names_of(0)[0]], ["series"], ["status"]):
        assert main([*argv, "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert f"{config}: [cluster] sockets[" in err and "list the sockets in member order" in err, err
    assert not any(op in member.ops for member in members for op in ("forecast", "series"))


def test_ingest_help_says_how_to_send_to_a_cluster(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "with [cluster] sockets in the config (every member's socket, in member order)" in text
    assert "each record goes to the member that owns its series" in text
