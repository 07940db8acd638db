"""Which daemon a client command talks to (adaptd/route.py): the splitting of a file's records
by owner and the socket list from the config (test_upload.py and test_cluster.py send to
members)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from adaptd.cli import main
from adaptd.cluster import owner
from adaptd.config import parse_config
from adaptd.route import Batches, Route


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


def test_ingest_help_says_how_to_send_to_a_cluster(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "with [cluster] sockets in the config (every member's socket, in member order)" in text
    assert "each record goes to the member that owns its series" in text
