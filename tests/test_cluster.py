"""`[cluster] members = N, member = k` (DESIGN.md §4): daemons sharing one database each serve
the series that hash to them and never touch the others'."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest

from adaptd.cluster import Membership, owner
from adaptd.records import validate_batch
from adaptd.store import Store

from daemon_harness import ClusterPair, DaemonProcess, hourly, run_cli, short_tempdir, write_config


def names_of(member: int, members: int, n: int) -> list[str]:
    return [name for name in (f"meter-{k}" for k in range(1000)) if owner(name, members) == member][:n]


def test_every_series_has_one_owner_and_they_share_the_series_evenly():
    counts = collections.Counter(owner(f"series-{k}", 4) for k in range(8000))
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 1800
    assert all(Membership(1, 0).owns(f"series-{k}") for k in range(100))   # alone: everything
    assert owner("é-ü-名", 7) == 1   # CRC-32 of the UTF-8 bytes: the same in every process


def test_a_batch_keeps_its_own_records_and_names_where_the_others_go():
    mine, theirs = names_of(0, 3, 1)[0], names_of(2, 3, 1)[0]
    records = [{"series": mine, "ts": 0, "value": 1.0}, {"series": theirs, "ts": 0, "value": 1.0},
               {"series": mine, "ts": "bad", "value": 1.0}, {"series": mine, "ts": 1, "value": 2.0}]
    accepted, rejected = validate_batch(records, Membership(3, 0).refusal)
    assert [(o.series, o.ts) for o in accepted] == [(mine, 0.0), (mine, 1.0)]
    assert [index for index, _ in rejected] == [1, 2]
    assert "belongs to cluster member 2 of 3" in str(rejected[0][1]) and rejected[0][1].field == "cluster"
    assert validate_batch(records)[0] == validate_batch(records, Membership(1, 0).refusal)[0]


@pytest.mark.postgres
@pytest.mark.integration
def test_two_daemons_on_one_database_each_serve_and_restore_only_their_own(fresh_postgres_url: str) -> None:
    dirs = [short_tempdir(), short_tempdir()]
    daemons = [DaemonProcess(write_config(d, fresh_postgres_url, naive=False,
                                          sections={"cluster": {"members": 2, "member": k}}))
               for k, d in enumerate(dirs)]
    ours = {k: names_of(k, 2, 2) for k in (0, 1)}
    every = [r for names in ours.values() for name in names for r in hourly(name, 80)]
    try:
        for d in daemons:
            d.start()
        answers = [d.request({"op": "ingest", "records": every}) for d in daemons]
        for k, answer in enumerate(answers):
            assert answer["ok"] and answer["accepted"] == 160, answer
            assert len(answer["rejected"]) == 160
            assert f"belongs to cluster member {1 - k} of 2" in answer["rejected"][0]["message"]
            assert {item["member"] for item in answer["rejected"]} == {1 - k}   # where to, for programs
        # Neither a second member 1 nor a daemon with another cluster size gets past start-up.
        for k, (members, member) in enumerate(((2, 1), (3, 2), (1, 0))):
            extra_dir = short_tempdir()
            dirs.append(extra_dir)
            extra = DaemonProcess(write_config(extra_dir, fresh_postgres_url, naive=False,
                                               sections={"cluster": {"members": members, "member": member}}))
            extra.start(wait=False)
            assert extra.wait_exit() == 2
            expected = ("member 1 of 2 is already running" if members == 2 else
                        "daemons with [cluster] members = 2 are running")
            assert expected in extra.stderr and "Traceback" not in extra.stderr, extra.stderr
        for k, d in enumerate(daemons):
            assert set(d.series()) == set(ours[k])
            assert d.request({"op": "stats"})["cluster"] == {"members": 2, "member": k}
            other = ours[1 - k][0]
            answer = d.request({"op": "forecast", "series": other, "horizon": 3})
            assert answer["error"]["code"] == "unknown_series" and f"member {1 - k} of 2" in answer["error"]["message"]
            assert answer["error"]["member"] == 1 - k                                 # where to ask, for programs
            d.wait_learnt()
        before = daemons[0].forecast(ours[0][0], 3)
        for d in daemons:
            rc, log = d.stop()
            assert rc == 0, log
        assert "meta-training is member 0's job" in daemons[1].stderr
        store = Store.open(fresh_postgres_url)
        try:   # both checkpointed their own series, neither the other's
            assert {c.series for c in store.load_checkpoints()} == set(ours[0]) | set(ours[1])
        finally:
            store.close()
        daemons[0].start()   # the store holds all four series: it takes back its own two
        assert set(daemons[0].series()) == set(ours[0])
        assert daemons[0].request({"op": "stats"})["engine"]["series"] == 2   # the models too
        answer = daemons[0].request({"op": "forecast", "series": ours[1][0], "horizon": 3})
        assert answer["error"]["code"] == "unknown_series", answer
        after = daemons[0].forecast(ours[0][0], 3)
        assert [p["value"] for p in after["points"]] == pytest.approx([p["value"] for p in before["points"]])
        assert daemons[0].stop()[0] == 0
    finally:
        for d in daemons:
            d.kill()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.mark.postgres
def test_a_lost_store_lock_is_taken_back_unless_another_daemon_took_it(fresh_postgres_url: str, monkeypatch) -> None:
    """A PostgreSQL restart or a dropped connection ends the session and its advisory locks
    without a word: the daemon's periodic `keep` notices and takes them back."""
    import sqlalchemy as sa

    import adaptd.cluster as cluster
    from adaptd.cluster import Claim, ClaimRefused

    monkeypatch.setattr(cluster, "PREDECESSOR_WAIT", 0.2)
    store = Store.open(fresh_postgres_url)
    claims: list[Claim] = []

    def drop(claim: Claim) -> None:   # what a server restart does to the claim's session
        pid = claim._connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()  # type: ignore[union-attr]
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()

    try:
        claims.append(Claim(store, Membership(2, 0)))
        first = claims[0]
        assert first.advisory and first.held() and first.keep()
        with pytest.raises(ClaimRefused, match="member 0 of 2 is already running"):
            Claim(store, Membership(2, 0))
        drop(first)
        assert not first.held()
        assert first.keep() and first.held()               # taken back
        with pytest.raises(ClaimRefused, match="members = 2 are running"):
            Claim(store, Membership(3, 1))                 # the layout lock came back too
        drop(first)
        claims.append(Claim(store, Membership(2, 0)))      # meanwhile another daemon took member 0
        assert not first.keep() and not first.held()
    finally:
        for claim in claims:
            claim.release()
        store.close()


# -- the client commands, given every member's socket ([cluster] sockets) ----------------------

@pytest.mark.postgres
@pytest.mark.integration
def test_adaptd_ingest_sends_each_record_of_a_mixed_file_to_its_owner_and_forecast_asks_it(
        pair: ClusterPair, tmp_path: Path) -> None:
    """Through either member's config (each lists both sockets): the session's two members, conftest.py."""
    ours = {k: pair.names(k, 3, "mixed") for k in (0, 1)}
    names = [name for pair_of_names in zip(ours[0], ours[1]) for name in pair_of_names]   # interleaved
    data = tmp_path / "all.csv"
    data.write_text("series,ts,value\n" + "".join(f"{name},{1_700_000_000 + 3600 * i},{i + k}\n"
                                                  for i in range(50) for k, name in enumerate(names)))
    rejected = [d.request({"op": "stats"})["records_rejected"] for d in pair]
    out = run_cli("ingest", str(data), "--no-progress", "--batch", "7", config=pair[1].config)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stdout.startswith("accepted 300 records, rejected 0 (long input"), out.stdout
    for k, d in enumerate(pair):
        assert f"member {k} ({d.socket_path}): accepted 150, rejected 0" in out.stdout, out.stdout
        assert pair.stored(k, names) == {name: 50 for name in ours[k]}   # its own, every one; nothing of the other's
        assert d.request({"op": "stats"})["records_rejected"] == rejected[k]
    for k, d in enumerate(pair):   # asked through the other member's config: the owner answers
        name = ours[k][0]
        fc = run_cli("forecast", name, "-H", "3", "--json", config=pair[1 - k].config)
        assert fc.returncode == 0, fc.stderr
        answer = json.loads(fc.stdout)
        assert answer["series"] == name and answer["origin"] == 1_700_000_000 + 3600 * 49
        assert answer["points"] == d.forecast(name, 3)["points"]
    listed = run_cli("series", "--json", config=pair[0].config)
    assert [item["series"] for item in json.loads(listed.stdout) if item["series"] in names] == sorted(names)
    # Removed by their owners, through one member's config; a member asked directly names the owner.
    gone = [ours[0][1], ours[1][1]]
    out = run_cli("forget", *gone, config=pair[0].config)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{name}: removed (50 observations deleted)" for name in gone]
    for k in (0, 1):
        assert pair.stored(k, names) == {name: 50 for name in ours[k] if name not in gone}
    refused = pair[0].request({"op": "forget", "series": ours[1][2]})["error"]
    assert refused["code"] == "unknown_series" and refused["member"] == 1


@pytest.mark.postgres
@pytest.mark.integration
def test_a_socket_list_in_the_wrong_order_or_of_the_wrong_length_stores_nothing(
        pair: ClusterPair, tmp_path: Path) -> None:
    """`adaptd ingest` end to end (test_route.py: every client command, each case)."""
    data = tmp_path / "refused.csv"
    names = pair.names(0, 2, "unsent") + pair.names(1, 2, "unsent")
    data.write_text("series,ts,value\n" + "".join(f"{name},{3600 * i},{i}\n" for i in range(20) for name in names))
    s0, s1 = pair.sockets
    ingested = [d.request({"op": "stats"})["records_ingested"] for d in pair]
    for sockets, expected in (([s1, s0], f"[cluster] sockets[0] is {s1}, whose daemon is member 1 of 2, not member 0"),
                              ([s0], f"[cluster] sockets lists 1 socket, but the daemon at {s0} is member 0 of 2"),
                              ([s0, s1, str(pair[0].directory / "third.sock")], "lists 3 sockets")):
        client = tmp_path / "client.toml"
        client.write_text("[cluster]\nsockets = [" + ", ".join(f'"{s}"' for s in sockets) + "]\n")
        out = run_cli("ingest", str(data), "--no-progress", config=client)
        assert out.returncode == 2 and expected in out.stderr and "no record was sent" in out.stderr, out.stderr
        assert out.stdout == "" and "Traceback" not in out.stderr
    for k, d in enumerate(pair):
        assert pair.stored(k, names) == {} and d.request({"op": "stats"})["records_ingested"] == ingested[k]
