"""The real daemon as a subprocess, spoken to over its real Unix socket (DESIGN.md §2, §6).

Most protocol tests share one daemon (module fixture); each of them ends by checking that the
connection and the daemon still answer. Tests about start-up, shutdown and restarts run
their own daemons.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import stat
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

import adaptd
from adaptd.client import Client, ClientError

from daemon_harness import (DaemonProcess, hourly, running_daemon, short_tempdir, stored_rows,
                            write_config)

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
H = 3600.0
MAX_BATCH = 50
MAX_HORIZON = 48


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    sections = {"server": {"max_batch_records": MAX_BATCH, "socket_mode": "0640"},
                "model": {"max_horizon": MAX_HORIZON}}
    with running_daemon(sections=sections) as d:
        yield d
        rc, log = d.stop()
        assert rc == 0, log
        assert "Traceback" not in log, log  # no request may crash a connection handler
        assert "Unhandled exception" not in log, log


@pytest.fixture
def conn(daemon: DaemonProcess) -> Iterator[Client]:
    client = daemon.client(timeout=30.0)
    try:
        yield client
    finally:
        client.close()


def raw(client: Client, line: bytes) -> dict[str, Any]:
    client.send_raw(line + b"\n")
    return client.read_response()


def assert_usable(client: Client, daemon: DaemonProcess) -> None:
    """The same connection, and a new one, still answer ping."""
    assert client.request({"op": "ping"}) == {"ok": True, "version": adaptd.__version__}
    assert daemon.request({"op": "ping"})["ok"] is True


def error_code(answer: dict[str, Any]) -> str:
    assert answer["ok"] is False, answer
    assert set(answer["error"]) == {"code", "message"} and answer["error"]["message"], answer
    return answer["error"]["code"]


# -- the ops --------------------------------------------------------------------------------

def test_ping_returns_the_package_version(conn: Client) -> None:
    assert conn.request({"op": "ping"}) == {"ok": True, "version": adaptd.__version__}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mappings from /proc (Linux)")
def test_a_naive_daemon_does_not_load_torch(daemon: DaemonProcess) -> None:
    # `[model] engine = "naive"` needs none of the online engine's libraries: torch alone is
    # ~250 MB of memory and seconds of every start.
    maps = Path(f"/proc/{daemon.pid}/maps").read_text()
    assert "libtorch" not in maps and "/river/" not in maps


def test_ingest_acks_counts_and_forecast_reflects_them(conn: Client, daemon: DaemonProcess) -> None:
    answer = conn.request({"op": "ingest", "records": hourly("rw", 10)})
    assert answer == {"ok": True, "accepted": 10, "rejected": []}
    fc = conn.request({"op": "forecast", "series": "rw", "horizon": 3})
    assert fc["ok"] and fc["series"] == "rw"
    assert fc["origin"] == T0 + 9 * H and fc["step"] == H
    assert [p["ts"] for p in fc["points"]] == [T0 + 10 * H, T0 + 11 * H, T0 + 12 * H]
    for p in fc["points"]:
        assert p["lo"] <= p["value"] <= p["hi"] and all(math.isfinite(p[k]) for k in ("value", "lo", "hi"))
    assert set(fc["model"]) >= {"kind", "version", "init", "last_drift", "adaptations"}
    # Read-your-writes, on the same connection and on another one: each ack is visible at once.
    with daemon.client() as other:
        for i, value in enumerate((100.0, -7.25, 3.0), start=10):
            assert conn.request({"op": "ingest", "records": [{"series": "rw", "ts": T0 + i * H, "value": value}]}
                                )["accepted"] == 1
            for c in (conn, other):
                fc = c.request({"op": "forecast", "series": "rw", "horizon": 1})
                assert fc["origin"] == T0 + i * H, fc
                assert fc["points"][0]["value"] == value  # few points: the last value is the forecast


def test_pipelined_requests_are_answered_in_order_with_ids(conn: Client) -> None:
    conn.request_nowait({"op": "ingest", "id": 1, "records": hourly("pipe", 5)})
    conn.request_nowait({"op": "forecast", "id": 2, "series": "pipe", "horizon": 2})
    conn.request_nowait({"op": "nope", "id": 3})
    conn.request_nowait({"op": "series", "id": 4})
    conn.request_nowait({"op": "ping", "id": 5})
    answers = [conn.read_response() for _ in range(5)]
    assert [a["id"] for a in answers] == [1, 2, 3, 4, 5]
    assert answers[0]["accepted"] == 5
    assert answers[1]["origin"] == T0 + 4 * H  # the ingest before it on the line was applied first
    assert answers[2]["error"]["code"] == "unknown_op"


@pytest.mark.parametrize("request_id", ["abc", 7, 0, -1.5, False, None, "ünï 😀", {"k": [1, None]}, [1, "x"], "",
                                        "\ud800 lone surrogate"])
def test_ids_are_echoed_on_success_and_on_error(conn: Client, daemon: DaemonProcess, request_id: Any) -> None:
    requests = [{"op": "ping"}, {"op": "stats"}, {"op": "series"}, {"op": "fly"}, {"op": "ingest", "records": 3},
                {"op": "ingest", "records": [{"series": "ids", "ts": T0, "value": 1}]},
                {"op": "forecast", "series": "never-seen-series", "horizon": 1}]
    for request in requests:
        # json.dumps writes a lone surrogate as the escape \ud800, which is valid JSON text.
        line = json.dumps({**request, "id": request_id}).encode()
        answer = raw(conn, line)
        assert "id" in answer and answer["id"] == request_id, (request, answer)
    assert_usable(conn, daemon)


def test_a_null_id_is_echoed_as_null_and_a_missing_id_is_not_invented(conn: Client) -> None:
    # A client matching answers to requests by id must find its "id": null answered, not dropped.
    assert raw(conn, b'{"op": "ping", "id": null}') == {"ok": True, "version": adaptd.__version__, "id": None}
    assert raw(conn, b'{"op": "fly", "id": null}')["id"] is None
    assert raw(conn, b'{"op": "ping"}') == {"ok": True, "version": adaptd.__version__}
    assert "id" not in raw(conn, b'{"op": "fly"}')
    assert "id" not in raw(conn, b'[1, 2]')   # not an object: no id to echo


@pytest.mark.parametrize("bad_id", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_an_id_that_cannot_be_echoed_gets_one_error_line(conn: Client, daemon: DaemonProcess, bad_id: str) -> None:
    answer = raw(conn, b'{"op": "ingest", "id": ' + bad_id.encode()
                 + b', "records": [{"series": "bad-id", "ts": 0, "value": 1}]}')
    assert error_code(answer) == "bad_request"
    assert "id" in answer["error"]["message"]
    assert_usable(conn, daemon)
    assert "bad-id" not in daemon.series()  # refused as a whole: nothing of it was stored


def test_series_op_lists_counts_and_time_range(conn: Client) -> None:
    conn.request({"op": "ingest", "records": hourly("listed-a", 4) + hourly("listed-b", 2, start=T0 + 10 * H)})
    listing = conn.request({"op": "series"})
    assert listing["ok"] is True
    names = [s["series"] for s in listing["series"]]
    assert names == sorted(names)
    by_name = {s["series"]: s for s in listing["series"]}
    assert by_name["listed-a"]["observations"] == 4
    assert (by_name["listed-a"]["first_ts"], by_name["listed-a"]["last_ts"]) == (T0, T0 + 3 * H)
    assert by_name["listed-b"]["observations"] == 2
    assert (by_name["listed-b"]["first_ts"], by_name["listed-b"]["last_ts"]) == (T0 + 10 * H, T0 + 11 * H)


def test_stats_op_reports_health_and_counters(conn: Client) -> None:
    before = conn.request({"op": "stats"})
    assert before["ok"] is True and before["health"] == "ok" and before["version"] == adaptd.__version__
    conn.request({"op": "ingest", "records": hourly("stats-s", 3) + [{"series": "stats-s", "ts": "x", "value": 1}]})
    after = conn.request({"op": "stats"})
    assert after["records_ingested"] - before["records_ingested"] == 3
    assert after["records_rejected"] - before["records_rejected"] == 1
    assert after["series"] >= 1 and after["series"] == len(conn.request({"op": "series"})["series"])
    assert after["connections"] >= 1
    assert after["uptime_s"] >= before["uptime_s"]
    assert after["store"]["dialect"] == "sqlite"


def test_socket_file_has_the_configured_mode(daemon: DaemonProcess) -> None:
    st = os.stat(daemon.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640  # from the config, not the 0660 default


# -- malformed requests: one error line each, the connection stays open ----------------------

@pytest.mark.parametrize("line, code", [
    (b'{"op": "ping"', "bad_request"),
    (b"not json at all", "bad_request"),
    (b'{"op": "ping"} trailing', "bad_request"),
    (b"{'op': 'ping'}", "bad_request"),
    (b"[1, 2, 3]", "bad_request"),
    (b'[{"op": "ping"}]', "bad_request"),
    (b"42", "bad_request"),
    (b"-0.5", "bad_request"),
    (b'"ping"', "bad_request"),
    (b"null", "bad_request"),
    (b"true", "bad_request"),
    (b"NaN", "bad_request"),
    (b"{}", "bad_request"),
    (b'{"id": 1}', "bad_request"),
    (b'{"op": 5}', "bad_request"),
    (b'{"op": null}', "bad_request"),
    (b'{"op": ["ping"]}', "bad_request"),
    (b'{"op": "fly"}', "unknown_op"),
    (b'{"op": "PING"}', "unknown_op"),
    (b'{"op": ""}', "unknown_op"),
    (b'{"op": "' + b"x" * 5000 + b'"}', "unknown_op"),
], ids=lambda v: v[:24].decode(errors="replace") if isinstance(v, bytes) else v)
def test_malformed_request_gets_its_code(conn: Client, daemon: DaemonProcess, line: bytes, code: str) -> None:
    assert error_code(raw(conn, line)) == code
    assert_usable(conn, daemon)


def test_unknown_op_message_lists_the_ops(conn: Client) -> None:
    message = raw(conn, b'{"op": "fly"}')["error"]["message"]
    assert "fly" in message
    for op in ("ping", "ingest", "forecast", "series", "stats", "forget"):
        assert op in message


@pytest.mark.parametrize("line", [
    b"[" * 100_000,
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"op": "ingest", "records": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
], ids=["open-brackets", "balanced-brackets", "nested-objects", "nested-records"])
def test_deeply_nested_json_is_a_bad_request(conn: Client, daemon: DaemonProcess, line: bytes) -> None:
    answer = raw(conn, line)
    assert error_code(answer) == "bad_request"
    assert_usable(conn, daemon)


@pytest.mark.parametrize("line", [
    b'{"op": "ping", "id": "\xff\xfe"}',
    b'{"op": "ingest", "records": [{"series": "bad\xc3(", "ts": 0, "value": 1}]}',
    b'{"op": "ping", "id": "\xed\xa0\x80"}',  # a surrogate encoded in UTF-8 form: not UTF-8
    b"\xc0\xaf",
    # UTF-16 with a byte-order mark is still not UTF-8 (the protocol is UTF-8 only)
    '{"op": "ping"}'.encode("utf-16"),
    '{"op": "ping"}'.encode("utf-8-sig"),
], ids=["bad-id-bytes", "bad-series-bytes", "encoded-surrogate", "overlong", "utf-16", "utf-8-bom"])
def test_bytes_that_are_not_utf8_json_are_a_bad_request(conn: Client, daemon: DaemonProcess, line: bytes) -> None:
    line = line.replace(b"\n", b"")
    answer = raw(conn, line)
    assert error_code(answer) == "bad_request"
    assert_usable(conn, daemon)
    assert not any(name.startswith("bad") and "(" in name for name in daemon.series())


def test_blank_lines_and_crlf_are_tolerated(conn: Client) -> None:
    conn.send_raw(b"\n\r\n   \n" + b'{"op": "ping", "id": "crlf"}\r\n')
    assert conn.read_response() == {"ok": True, "version": adaptd.__version__, "id": "crlf"}


def test_non_finite_values_are_rejected_per_record(conn: Client, daemon: DaemonProcess) -> None:
    s = "nonfinite"
    values = ["NaN", "1.5", "Infinity", "-Infinity", "2.5", "1e999", "-1e999", '"3"', "null", "true", "[1]"]
    records = ",".join(f'{{"series": "{s}", "ts": {T0 + i * H}, "value": {v}}}' for i, v in enumerate(values))
    answer = raw(conn, f'{{"op": "ingest", "id": "nf", "records": [{records}]}}'.encode())
    assert answer["ok"] is True and answer["id"] == "nf"
    assert answer["accepted"] == 2
    rejected = answer["rejected"]
    assert [r["index"] for r in rejected] == [0, 2, 3, 5, 6, 7, 8, 9, 10]
    assert {r["code"] for r in rejected} == {"bad_request"}
    assert all("value" in r["message"] for r in rejected)
    info = daemon.series()[s]
    assert info["observations"] == 2 and (info["first_ts"], info["last_ts"]) == (T0 + H, T0 + 4 * H)
    fc = conn.request({"op": "forecast", "series": s, "horizon": 2})
    assert all(math.isfinite(p[k]) for p in fc["points"] for k in ("value", "lo", "hi")), fc
    assert fc["points"][0]["value"] == 2.5
    assert_usable(conn, daemon)


def test_timestamps_are_validated_per_record(conn: Client, daemon: DaemonProcess) -> None:
    s = "timestamps"
    good = ["2024-01-01T00:00:00", "2024-01-01T01:00:00+00:00", "2024-01-01T03:00:00+01:00",
            "2024-01-01T03:00:00Z", 1704081600, 1704085200.0, "2024-01-01 06:00"]
    bad = ["yesterday", "2024-13-01T00:00:00", "", "   ", True, None, {"t": 1}, [1704067200], 1e20, -1e20,
           "2024-01-01T00:00:00+25:00", "1704067200", 10**400]
    records = [{"series": s, "ts": t, "value": float(i)} for i, t in enumerate(good)]
    records += [{"series": s, "ts": t, "value": 1.0} for t in bad]
    records.append({"series": s, "value": 1.0})
    line = json.dumps({"op": "ingest", "records": records}, allow_nan=False).encode()
    answer = raw(conn, line)
    assert answer["accepted"] == len(good)
    assert [r["index"] for r in answer["rejected"]] == list(range(len(good), len(records)))
    assert {r["code"] for r in answer["rejected"]} == {"bad_request"}
    assert all(r["message"] for r in answer["rejected"])
    info = daemon.series()[s]
    # Naive ISO-8601 means UTC: 2024-01-01T00:00:00 is 1704067200.
    assert info["observations"] == len(good)
    assert (info["first_ts"], info["last_ts"]) == (1704067200.0, 1704067200.0 + 6 * H)
    assert_usable(conn, daemon)


def test_series_names_are_validated_per_record(conn: Client, daemon: DaemonProcess) -> None:
    good = ["x" * 200, "ünïcode série 😀", "with space", "a/b:c=d"]
    bad = ["", "y" * 201, "tab\there", "new\nline", "nul\x00", "\x7f", "\ud800", 5, None, ["a"], {"n": "a"}]
    records = [{"series": name, "ts": T0, "value": 1.0} for name in good + bad]
    records.append({"ts": T0, "value": 1.0})
    answer = conn.request({"op": "ingest", "records": records})
    assert answer["accepted"] == len(good)
    assert [r["index"] for r in answer["rejected"]] == list(range(len(good), len(records)))
    assert {r["code"] for r in answer["rejected"]} == {"bad_request"}
    listed = daemon.series()
    for name in good:
        assert listed[name]["observations"] == 1
    assert not any(isinstance(n, str) and n in listed for n in bad)
    assert_usable(conn, daemon)


def test_records_that_are_not_objects_are_rejected_per_record(conn: Client, daemon: DaemonProcess) -> None:
    records = [5, "x", None, [1, 2], {"series": "objs", "ts": T0, "value": 1}, {}]
    answer = conn.request({"op": "ingest", "records": records})
    assert answer["accepted"] == 1
    assert [r["index"] for r in answer["rejected"]] == [0, 1, 2, 3, 5]
    assert_usable(conn, daemon)


def test_empty_records_list_is_acknowledged_as_nothing(conn: Client, daemon: DaemonProcess) -> None:
    assert conn.request({"op": "ingest", "records": [], "id": "e"}) == {
        "ok": True, "accepted": 0, "rejected": [], "id": "e"}
    assert_usable(conn, daemon)


@pytest.mark.parametrize("records", [{}, "records", None, 5, {"series": "s", "ts": 0, "value": 1}, "missing"])
def test_records_must_be_a_list(conn: Client, daemon: DaemonProcess, records: Any) -> None:
    request: dict[str, Any] = {"op": "ingest", "id": 9}
    if records != "missing":
        request["records"] = records
    answer = conn.request(request)
    assert error_code(answer) == "bad_request" and answer["id"] == 9
    assert "records" in answer["error"]["message"]
    assert_usable(conn, daemon)


def test_batch_over_max_batch_records_is_too_large_and_stores_nothing(conn: Client, daemon: DaemonProcess) -> None:
    answer = conn.request({"op": "ingest", "records": hourly("too-many", MAX_BATCH + 1)})
    assert error_code(answer) == "too_large"
    assert str(MAX_BATCH) in answer["error"]["message"]
    assert_usable(conn, daemon)  # too_large for a batch does not close the connection
    assert "too-many" not in daemon.series()
    assert conn.request({"op": "ingest", "records": hourly("too-many", MAX_BATCH)})["accepted"] == MAX_BATCH
    assert daemon.series()["too-many"]["observations"] == MAX_BATCH


# -- forecast errors ------------------------------------------------------------------------

def test_forecast_of_unknown_series(conn: Client, daemon: DaemonProcess) -> None:
    answer = conn.request({"op": "forecast", "series": "no-such-series", "horizon": 1, "id": "u"})
    assert error_code(answer) == "unknown_series" and answer["id"] == "u"
    assert "no-such-series" in answer["error"]["message"]
    assert set(answer["error"]) == {"code", "message"}     # no `member`: one daemon has no other
    assert_usable(conn, daemon)


def test_forecast_needs_two_timestamps(conn: Client, daemon: DaemonProcess) -> None:
    conn.request({"op": "ingest", "records": [{"series": "lonely", "ts": T0, "value": 1.0}]})
    assert error_code(conn.request({"op": "forecast", "series": "lonely", "horizon": 1})) == "not_ready"
    # The same timestamp re-sent is still one timestamp.
    conn.request({"op": "ingest", "records": [{"series": "lonely", "ts": T0, "value": 2.0}]})
    assert error_code(conn.request({"op": "forecast", "series": "lonely", "horizon": 1})) == "not_ready"
    conn.request({"op": "ingest", "records": [{"series": "lonely", "ts": T0 + 60, "value": 3.0}]})
    fc = conn.request({"op": "forecast", "series": "lonely", "horizon": 2})
    assert fc["ok"] and fc["step"] == 60 and fc["points"][0]["ts"] == T0 + 120
    assert_usable(conn, daemon)


@pytest.mark.parametrize("horizon", [0, -1, MAX_HORIZON + 1, 10**30, "3", 2.5, 3.0, True, None, [3], "missing"])
def test_forecast_horizon_must_be_an_integer_in_range(conn: Client, daemon: DaemonProcess, horizon: Any) -> None:
    conn.request({"op": "ingest", "records": hourly("horizons", 4)})
    request: dict[str, Any] = {"op": "forecast", "series": "horizons"}
    if horizon != "missing":
        request["horizon"] = horizon
    answer = conn.request(request)
    assert error_code(answer) == "bad_request"
    assert str(MAX_HORIZON) in answer["error"]["message"]
    assert_usable(conn, daemon)


def test_extreme_finite_values_still_give_a_finite_forecast(conn: Client, daemon: DaemonProcess) -> None:
    big = 1.7976931348623157e308
    records = [{"series": "extreme", "ts": T0 + i * 60, "value": big if i % 2 else -big} for i in range(30)]
    assert conn.request({"op": "ingest", "records": records})["accepted"] == 30
    fc = conn.request({"op": "forecast", "series": "extreme", "horizon": 3})
    assert fc["ok"] is True, fc
    for p in fc["points"]:
        assert all(math.isfinite(p[k]) for k in ("value", "lo", "hi")) and p["lo"] <= p["value"] <= p["hi"]
    assert_usable(conn, daemon)


def test_forecast_at_the_maximum_horizon(conn: Client) -> None:
    conn.request({"op": "ingest", "records": hourly("max-h", 4)})
    fc = conn.request({"op": "forecast", "series": "max-h", "horizon": MAX_HORIZON})
    assert len(fc["points"]) == MAX_HORIZON
    assert [p["ts"] for p in fc["points"]] == [T0 + (3 + i) * H for i in range(1, MAX_HORIZON + 1)]


@pytest.mark.parametrize("series", ["", None, 5, "z" * 201, "bad\nname"])
def test_forecast_of_an_invalid_series_name(conn: Client, daemon: DaemonProcess, series: Any) -> None:
    assert error_code(conn.request({"op": "forecast", "series": series, "horizon": 1})) == "bad_request"
    assert_usable(conn, daemon)


# -- clients that misbehave -----------------------------------------------------------------

def test_clients_that_disconnect_early_do_not_disturb_the_daemon(daemon: DaemonProcess) -> None:
    # Mid-line: half a request, then gone.
    with daemon.client() as c:
        c.send_raw(b'{"op": "ingest", "records": [{"series": "midline", "ts": 0, "value": 1}')
    # A whole request, gone before the answer; and many pipelined requests never read.
    with daemon.client() as c:
        c.send_raw(b'{"op": "ping"}\n' * 2000)
    with daemon.client() as c:
        c.send_raw(b"[" * 50_000)
    # Connect and go without a byte.
    for _ in range(20):
        with daemon.client():
            pass
    assert daemon.request({"op": "ping"})["ok"] is True
    assert "midline" not in daemon.series()
    # Every one of those connections was closed on the daemon's side too.
    deadline = time.monotonic() + 10
    while (open_now := daemon.request({"op": "stats"})["connections"]) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_now == 1


def test_oversized_line_is_too_large_then_closed_others_unaffected() -> None:
    limit = 4096
    with running_daemon(sections={"server": {"max_line_bytes": limit}}) as d, d.client() as bystander:
        bystander.request({"op": "ingest", "records": hourly("by", 3)})

        # A line of exactly the limit (without its newline) is fine.
        base = b'{"op": "ping", "id": ""}'
        exact = base[:-2] + b"x" * (limit - len(base)) + b'"}'
        assert len(exact) == limit
        with d.client() as c:
            answer = raw(c, exact)
            assert answer["ok"] is True and len(answer["id"]) == limit - len(base)

        # One byte over: too_large, then the daemon closes this connection.
        over = base[:-2] + b"x" * (limit - len(base) + 1) + b'"}'
        with d.client() as c:
            answer = raw(c, over)
            assert error_code(answer) == "too_large"
            assert str(limit) in answer["error"]["message"]
            with pytest.raises((ClientError, ConnectionResetError, BrokenPipeError)):
                c.request({"op": "ping"})

        # A line that never ends (no newline at all) is cut off the same way, not buffered forever.
        with d.client() as c:
            try:
                c.send_raw(b"y" * (1 << 20))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon may hang up before it has read everything
            assert error_code(c.read_response()) == "too_large"
            with pytest.raises((ClientError, ConnectionResetError, BrokenPipeError)):
                c.request({"op": "ping"})

        # The connection opened before, and new ones, are unaffected.
        assert bystander.request({"op": "forecast", "series": "by", "horizon": 1})["ok"] is True
        assert d.request({"op": "ping"})["ok"] is True
        rc, log = d.stop()
        assert rc == 0, log


def test_last_request_without_newline_is_answered_at_end_of_input() -> None:
    """`printf '{"op": "ping"}' | nc -U adaptd.sock`: the request is complete when the client
    stops writing; a line cut off mid-way is refused, and nothing of it is stored."""
    def answer_at_eof(d: DaemonProcess, data: bytes) -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(d.socket_path))
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := s.recv(1 << 16):
                received += chunk
        return [json.loads(line) for line in received.splitlines()]

    with running_daemon() as d:
        assert answer_at_eof(d, b'{"op": "ping", "id": "last"}') == [{"ok": True, "id": "last",
                                                                       "version": adaptd.__version__}]
        batch = json.dumps({"op": "ingest", "records": hourly("eof", 3)}).encode()
        answers = answer_at_eof(d, b'{"op": "ping"}\n' + batch)
        assert [a["ok"] for a in answers] == [True, True] and answers[1]["accepted"] == 3
        assert d.series()["eof"]["observations"] == 3

        cut = json.dumps({"op": "ingest", "records": hourly("cut", 3)}).encode()[:-2]
        [refused] = answer_at_eof(d, cut)
        assert error_code(refused) == "bad_request"
        assert "cut" not in d.series()

        with d.client() as slow:      # no [server] request_timeout by default: a line takes what it takes
            slow.send_raw(b'{"op": "ping",')
            time.sleep(1.5)
            slow.send_raw(b' "id": "late"}\n')
            assert slow.read_response()["id"] == "late"
        rc, log = d.stop()
        assert rc == 0, log


def test_a_request_left_half_sent_is_refused_in_time_and_idle_connections_stay_open() -> None:
    """A client that sends half a line and stalls would hold one of `max_connections` forever;
    it gets `bad_request` after `request_timeout` and is closed. A client that sends nothing is
    just idle (long-lived clients are fine), and a slow writer that finishes in time is answered."""
    with running_daemon(sections={"server": {"request_timeout": 1.0, "max_connections": 2}}, metrics=True) as d, \
            d.client() as idle:
        with d.client() as stalled:
            started = time.monotonic()
            stalled.send_raw(json.dumps({"op": "ingest", "records": hourly("half", 3)}).encode()[:20])
            answer = stalled.read_response()
            waited = time.monotonic() - started
            assert error_code(answer) == "bad_request" and "request_timeout" in answer["error"]["message"]
            assert 0.9 < waited < 10, waited
            with pytest.raises((ClientError, ConnectionResetError, BrokenPipeError)):
                stalled.request({"op": "ping"})
        time.sleep(1.5)                                   # idle for longer than the timeout
        assert idle.request({"op": "ping"})["ok"] is True
        with d.client() as slow:                          # the stalled one's slot is free again
            slow.send_raw(b'{"op": ')
            time.sleep(0.5)
            slow.send_raw(b'"ping", "id": "slow"}\n')
            assert slow.read_response() == {"ok": True, "id": "slow", "version": adaptd.__version__}
        assert "half" not in d.series()
        # An SRE tells a stalled writer from a malformed request by its op label.
        with d.client() as malformed:
            malformed.send_raw(b"{not json\n")
            assert error_code(malformed.read_response()) == "bad_request"
        with urllib.request.urlopen(f"http://{d.settings.metrics.listen}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'adaptd_requests_total{op="unfinished",outcome="bad_request"} 1.0' in text, text
        assert 'adaptd_requests_total{op="invalid",outcome="bad_request"} 1.0' in text, text
        # The process's own, for memory growth and open files against the unit's LimitNOFILE.
        for standard in ("process_resident_memory_bytes", "process_open_fds", "process_max_fds", "python_info"):
            assert f"\n{standard}" in text, standard
        rc, log = d.stop()
        assert rc == 0, log


def test_many_concurrent_clients_every_ack_is_stored() -> None:
    threads, batches, per_batch = 16, 8, 25
    directory = short_tempdir()
    try:
        d = DaemonProcess(write_config(directory)).start()
        start = threading.Barrier(threads, timeout=60)

        def worker(k: int) -> int:
            acked = 0
            with d.client() as c:
                start.wait()
                for b in range(batches):
                    own = [{"series": f"conc-{k}", "ts": T0 + (b * per_batch + i) * H, "value": float(k + i)}
                           for i in range(per_batch)]
                    shared = [{"series": "conc-shared", "ts": T0 + ((k * batches + b) * per_batch + i) * 60.0,
                               "value": float(b)} for i in range(per_batch)]
                    answer = c.request({"op": "ingest", "records": own + shared})
                    assert answer["ok"] and answer["rejected"] == [], answer
                    acked += answer["accepted"]
                    fc = c.request({"op": "forecast", "series": f"conc-{k}", "horizon": 2})
                    assert fc["ok"] and fc["origin"] == own[-1]["ts"], fc  # read-your-writes under load
                    assert c.request({"op": "stats"})["ok"]
            return acked

        with ThreadPoolExecutor(threads) as pool:
            acked = sum(pool.map(worker, range(threads)))
        assert acked == threads * batches * per_batch * 2

        def check() -> None:
            listing = d.series()
            for k in range(threads):
                info = listing[f"conc-{k}"]
                assert info["observations"] == batches * per_batch
                assert info["last_ts"] == T0 + (batches * per_batch - 1) * H
            assert listing["conc-shared"]["observations"] == threads * batches * per_batch

        check()
        assert d.request({"op": "stats"})["records_ingested"] == acked
        rc, log = d.stop()
        assert rc == 0, log
        d.start()
        check()  # every acknowledged record survived the restart
        assert d.stop()[0] == 0
    finally:
        if "d" in locals() and d.running:
            d.kill()
        shutil.rmtree(directory, ignore_errors=True)


# -- lifecycle: shutdown, restart, crashes, a second daemon ----------------------------------

def restart_cycle(store_url: str | None) -> None:
    """Ingest, SIGTERM (with an idle client connected), restart on the same store, compare."""
    directory = short_tempdir()
    d = DaemonProcess(write_config(directory, store_url))
    try:
        d.start()
        names = ["cycle-a", "cycle-b", "cycle ü", "é" * 200]
        acked = 0
        with d.client() as c:
            for k, name in enumerate(names):
                values = [math.sin(i / 3.0) * (k + 1) + 0.01 * i for i in range(60)]
                records = hourly(name, 60, values=values)
                for start in range(0, 60, 20):
                    acked += c.request({"op": "ingest", "records": records[start:start + 20]})["accepted"]
            before_fc = {n: c.request({"op": "forecast", "series": n, "horizon": 24}) for n in names}
        assert acked == 60 * len(names)
        dialect = "postgresql" if store_url and store_url.startswith("postgresql") else "sqlite"
        assert d.request({"op": "stats"})["store"]["dialect"] == dialect
        before = d.series()
        with d.client() as idle:  # an idle connection must not hold the shutdown up
            started = time.monotonic()
            rc, log = d.stop(signal.SIGTERM)
            assert rc == 0, log
            assert time.monotonic() - started < 5.0, "shutdown waited on an idle connection"
            assert not d.socket_path.exists(), "the socket file outlived the daemon"
            with pytest.raises((ClientError, ConnectionResetError, BrokenPipeError)):
                idle.request({"op": "ping"})

        with pytest.raises(ClientError, match="not running"):
            d.request({"op": "ping"})

        d.start()
        after = d.series()
        for name in names:
            assert after[name]["observations"] == before[name]["observations"] == 60
            assert (after[name]["first_ts"], after[name]["last_ts"]) == (before[name]["first_ts"],
                                                                        before[name]["last_ts"])
            assert d.forecast(name, 24) == before_fc[name]
        assert d.stop()[0] == 0
        for name in names:
            rows = stored_rows(store_url or f"sqlite:///{directory}/adaptd.db", name)
            assert [ts for ts, _ in rows] == [T0 + i * H for i in range(60)]
    finally:
        d.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_sigterm_exits_cleanly_and_a_restart_finds_every_acknowledged_record() -> None:
    restart_cycle(None)


@pytest.mark.postgres
def test_restart_cycle_on_postgresql(fresh_postgres_url: str) -> None:
    restart_cycle(fresh_postgres_url)


@pytest.mark.integration
def test_sigterm_with_a_learning_backlog_stops_promptly_and_relearns_after_restart(tmp_path: Path) -> None:
    """A long series still being learnt must not hold up a stop (systemd would kill the daemon)
    nor leave a half-learnt checkpoint: the rest is learnt after the restart."""
    url = f"sqlite:///{tmp_path}/adaptd.db"
    y = [10 + 3 * math.sin(i / 4) + 0.1 * (i % 7) for i in range(20_000)]
    with running_daemon(naive=False, store_url=url, sections={"daemon": {"shutdown_timeout": 10.0}}) as d:
        for start in range(0, len(y), 10_000):
            d.ingest(hourly("long", 10_000, start=T0 + start * H, values=y[start:start + 10_000]))
        time.sleep(1.0)   # learning has begun and is far from done
        started = time.monotonic()
        rc, log = d.stop()
        assert rc == 0 and time.monotonic() - started < 15, log
        assert "Traceback" not in log and "failed" not in log, log
        d.start()
        assert d.series()["long"]["observations"] == 20_000
        log = d.stop()[1]
        assert "Traceback" not in log and "ignoring its checkpoint" not in log, log
        relearn = re.search(r"restored 1 series from checkpoints; (\d+) stored records to learn", log)
        assert relearn and 0 < int(relearn.group(1)) < 20_000, log   # from where the checkpoint stopped


@pytest.mark.integration
def test_models_falling_behind_get_clients_overloaded_promptly_not_stuck(tmp_path: Path) -> None:
    """When learning cannot keep up, new ingests are refused within overload_wait (and whatever
    was acknowledged is stored): no request hangs waiting for the models."""
    url = f"sqlite:///{tmp_path}/adaptd.db"
    sections = {"model": {"learning_backlog": 1000}, "server": {"overload_wait": 0.2}}
    answers, slowest, acked = [], 0.0, 0
    with running_daemon(naive=False, store_url=url, sections=sections) as d:
        with d.client(timeout=30) as c:
            for k in range(30):
                records = hourly("busy", 1000, start=T0 + k * 1000 * H)
                started = time.monotonic()
                answer = c.request({"op": "ingest", "records": records})
                slowest = max(slowest, time.monotonic() - started)
                answers.append(answer["ok"] or answer["error"]["code"])
                acked += 1000 if answer["ok"] else 0
        stats = d.request({"op": "stats"})
    assert "overloaded" in answers and True in answers, answers
    assert set(answers) <= {True, "overloaded"}, answers
    assert slowest < 10, slowest               # refused or acknowledged, never stuck behind learning
    # Refused at 1,000 behind: at most the batch admitted just under it comes on top.
    assert stats["learning_backlog_records"] <= 1000 + 1000, stats["learning_backlog_records"]
    assert len(stored_rows(url, "busy")) == acked


@pytest.mark.integration
def test_a_batch_pipelined_behind_a_refused_one_is_refused_too_not_stored_ahead_of_it(tmp_path: Path) -> None:
    """A client that sends batches without waiting for each answer must not find a later batch
    stored ahead of one the daemon refused as overloaded (its records would be late to the
    models): the later one is refused at once."""
    url = f"sqlite:///{tmp_path}/adaptd.db"
    sections = {"model": {"learning_backlog": 1000}, "server": {"overload_wait": 1.0}}
    with running_daemon(naive=False, store_url=url, sections=sections) as d:
        with d.client(timeout=30) as c:
            k = 0
            for attempt in range(10):   # until the pair's first batch is refused too
                while c.request({"op": "ingest", "records": hourly("busy", 1000, start=T0 + k * 1000 * H)})["ok"]:
                    k += 1
                    assert k < 100, "the models never fell behind"
                refused, pipelined = (hourly("busy", 1000, start=T0 + (k + j) * 1000 * H) for j in (1, 2))
                c.send_raw(json.dumps({"op": "ingest", "records": refused}).encode() + b"\n"
                           + json.dumps({"op": "ingest", "records": pipelined}).encode() + b"\n")
                first = c.read_response()
                answered = time.monotonic()
                second = c.read_response()
                behind = time.monotonic() - answered
                if not first["ok"]:
                    break
                k += 3   # the models caught up in between: both were stored, fall behind again
            else:
                pytest.fail("the models caught up between the two requests every time: nothing was refused")
            # A client that read the refusal is served as usual, however soon it re-sends.
            again = c.request({"op": "ingest", "records": refused})
        stored = {row[0] for row in stored_rows(url, "busy")}
    assert "retry after a short pause" in first["error"]["message"], first     # waited overload_wait
    assert second["ok"] is False and second["error"]["code"] == "overloaded", second
    assert "sent before this connection's answer" in second["error"]["message"]
    assert behind < 0.5, behind                      # at once, not after overload_wait
    assert not stored & {r["ts"] for r in pipelined}
    assert again["ok"] or "sent before" not in again["error"]["message"], again


def test_sigterm_under_load_keeps_every_acknowledged_record() -> None:
    """Clients keep ingesting while SIGTERM arrives: whatever was acked is there after a restart."""
    directory = short_tempdir()
    d = DaemonProcess(write_config(directory))
    writers, per_batch = 4, 200
    acked_ts: dict[str, list[float]] = {}
    try:
        d.start()
        go = threading.Event()

        def writer(k: int) -> None:
            name, sent = f"load-{k}", 0
            acked_ts[name] = []
            try:
                with d.client(timeout=30) as c:
                    go.wait()
                    while True:
                        records = [{"series": name, "ts": T0 + (sent + i) * 60.0, "value": float(i)}
                                   for i in range(per_batch)]
                        answer = c.request({"op": "ingest", "records": records})
                        if not answer.get("ok"):
                            return  # e.g. refused while shutting down: not acked
                        assert answer["accepted"] == per_batch
                        acked_ts[name] += [r["ts"] for r in records]
                        sent += per_batch
            except (ClientError, OSError):
                return  # the daemon closed the connection: the request in flight was not acked

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
        for t in threads:
            t.start()
        go.set()
        deadline = time.monotonic() + 10
        while sum(len(v) for v in acked_ts.values()) < writers * per_batch * 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        rc, log = d.stop(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert rc == 0, log
        assert "Traceback" not in log, log
        assert all(acked_ts[f"load-{k}"] for k in range(writers)), {k: len(v) for k, v in acked_ts.items()}

        url = f"sqlite:///{directory}/adaptd.db"
        for name, acked in acked_ts.items():
            stored = {ts for ts, _ in stored_rows(url, name)}
            missing = set(acked) - stored
            assert not missing, f"{len(missing)} acknowledged records of {name} were lost"
        d.start()
        listing = d.series()
        for name, acked in acked_ts.items():
            assert listing[name]["observations"] >= len(acked)
        assert d.stop()[0] == 0
    finally:
        d.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_requests_pipelined_behind_a_shutdown_each_get_an_answer_and_nothing_acked_is_lost() -> None:
    """A client that sent many requests in one go when SIGTERM came: every request that reached
    the daemon gets exactly one answer, in order: served, or `overloaded` saying it was not
    (re-send it). After a restart, exactly the acknowledged batches are stored."""
    directory = short_tempdir()
    d = DaemonProcess(write_config(directory))
    batches = 100
    try:
        d.start()
        lines = [json.dumps({"op": "ingest", "id": k, "records": [
            {"series": "piped", "ts": T0 + (10 * k + i) * H, "value": float(i)} for i in range(10)]})
            for k in range(batches)]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(d.socket_path))
            sock.sendall("".join(line + "\n" for line in lines).encode())
            time.sleep(0.005)
            d.proc.send_signal(signal.SIGTERM)
            with sock.makefile("rb") as stream:
                answers = [json.loads(line) for line in stream]
        assert d.wait_exit(30) == 0, d.stderr
        assert [a["id"] for a in answers] == list(range(len(answers)))
        served = [a for a in answers if a["ok"]]
        refused = answers[len(served):]       # served ones first, then none: in order
        assert all(a["accepted"] == 10 for a in served)
        assert refused and all(a["error"]["code"] == "overloaded" and "shutting down" in a["error"]["message"]
                               for a in refused), answers[-3:]
        assert len(answers) == batches        # every request had reached it before it closed
        d.start()
        assert d.series().get("piped", {}).get("observations", 0) == 10 * len(served)
        assert d.stop()[0] == 0
    finally:
        d.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_default_engine_end_to_end_and_across_a_restart() -> None:
    """The engine a user gets without choosing one: forecasts, read-your-writes, restart."""
    directory = short_tempdir()
    d = DaemonProcess(write_config(directory, naive=False))
    horizon = 24
    try:
        d.start(timeout=60)
        values = [10 + 3 * math.sin(2 * math.pi * i / 24) + 0.01 * i for i in range(300)]
        with d.client(timeout=120) as c:
            for start in range(0, 300, 100):
                batch = hourly("default", 300, values=values)[start:start + 100]
                assert c.request({"op": "ingest", "records": batch})["accepted"] == 100
            fc = c.request({"op": "forecast", "series": "default", "horizon": horizon})
            assert fc["ok"] is True, fc
            assert fc["origin"] == T0 + 299 * H  # read-your-writes, even while the models still learn
            # The models learn behind the acks; once they caught up, the online model answers.
            d.wait_learnt()
            fc = c.request({"op": "forecast", "series": "default", "horizon": horizon})
            assert fc["model"]["kind"] == "online", fc["model"]
            assert fc["origin"] == T0 + 299 * H and fc["step"] == H and len(fc["points"]) == horizon
            assert [p["ts"] for p in fc["points"]] == [T0 + (299 + k) * H for k in range(1, horizon + 1)]
            for p in fc["points"]:
                assert all(math.isfinite(p[k]) for k in ("value", "lo", "hi")) and p["lo"] <= p["hi"]
                assert 0 < p["value"] < 20  # a sane forecast of a series living in [7, 16]
            assert set(fc["model"]) >= {"kind", "version", "init", "last_drift", "adaptations"}
            assert c.request({"op": "ingest", "records": [{"series": "default", "ts": T0 + 300 * H,
                                                           "value": 11.0}]})["accepted"] == 1
            now = c.request({"op": "forecast", "series": "default", "horizon": horizon})
            assert now["origin"] == T0 + 300 * H  # read-your-writes
            assert now["model"]["kind"] == "online"  # at once: from the record, learnt or not yet
            d.wait_learnt()   # the restart promise is about what the models learnt
            before = c.request({"op": "forecast", "series": "default", "horizon": horizon})
            assert "unlearnt" not in before["model"]
        rc, log = d.stop()
        assert rc == 0, log
        d.start(timeout=60)
        assert d.series()["default"]["observations"] == 301
        after = d.forecast("default", horizon)
        # READY=1 promises "answers forecasts as before the restart".
        assert after["origin"] == before["origin"] and after["model"]["kind"] == before["model"]["kind"]
        assert [p["ts"] for p in after["points"]] == [p["ts"] for p in before["points"]]
        for key in ("value", "lo", "hi"):
            assert [p[key] for p in after["points"]] == pytest.approx([p[key] for p in before["points"]],
                                                                      rel=1e-6, abs=1e-9)
        assert d.stop()[0] == 0
    finally:
        d.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_gap_in_a_series_is_filled_counted_and_forecast_on_the_right_hours() -> None:
    with running_daemon(naive=False, metrics=True) as d:
        records = hourly("gappy", 70, values=[10 + 3 * math.sin(2 * math.pi * i / 24) for i in range(70)])
        d.ingest(records[:60] + records[63:])   # hours 60-62 missing
        d.wait_learnt()
        fc = d.forecast("gappy", 3)
        assert fc["model"]["kind"] == "online"
        assert fc["origin"] == records[-1]["ts"]
        assert [p["ts"] for p in fc["points"]] == [fc["origin"] + k * H for k in (1, 2, 3)]
        engine = d.request({"op": "stats"})["engine"]
        assert (engine["gap_steps_filled"], engine["gaps_unfilled"]) == (3, 0)
        with urllib.request.urlopen(f"http://{d.settings.metrics.listen}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'adaptd_model_gaps_total{handling="filled"} 1.0' in text
        assert "adaptd_model_gap_steps_filled_total 3.0" in text


def test_duplicates_last_value_wins_and_late_records_are_stored() -> None:
    directory = short_tempdir()
    d = DaemonProcess(write_config(directory))
    try:
        d.start()
        d.ingest(hourly("dup", 6))
        assert d.ingest([{"series": "dup", "ts": T0 + 5 * H, "value": 99.0}])["accepted"] == 1
        assert d.ingest([{"series": "dup", "ts": T0 + 2 * H, "value": 42.0}])["accepted"] == 1
        assert d.forecast("dup", 1)["points"][0]["value"] == 99.0
        # Within one batch too: the later of two equal (series, ts) wins.
        d.ingest([{"series": "dup2", "ts": T0, "value": 1.0}, {"series": "dup2", "ts": T0 + H, "value": 2.0},
                  {"series": "dup2", "ts": T0 + H, "value": 7.0}])
        assert d.forecast("dup2", 1)["points"][0]["value"] == 7.0
        # Out of order, in separate batches and within one.
        for ts in (10, 5, 7):
            d.ingest([{"series": "ooo", "ts": T0 + ts * H, "value": float(ts)}])
        d.ingest([{"series": "ooo", "ts": T0 + ts * H, "value": float(ts)} for ts in (12, 1, 11)])
        # A batch is taken in time order: sent newest first, none of it is late.
        d.ingest([{"series": "desc", "ts": T0 + ts * H, "value": float(ts)} for ts in range(8, -1, -1)])
        listing = d.series()
        assert listing["desc"]["late"] == 0 and listing["desc"]["observations"] == 9
        assert d.forecast("desc", 1)["points"][0]["value"] == 8.0
        assert listing["dup"]["observations"] == 6 and listing["dup"]["overwritten"] == 2
        assert listing["dup2"]["observations"] == 2
        assert listing["ooo"]["observations"] == 6
        assert (listing["ooo"]["first_ts"], listing["ooo"]["last_ts"]) == (T0 + H, T0 + 12 * H)
        assert listing["ooo"]["late"] == 3  # 5, 7 and 1 each came after a newer record (11 after 10)
        fc = d.forecast("ooo", 1)
        assert fc["origin"] == T0 + 12 * H and fc["points"][0]["value"] == 12.0
        before = {s: d.forecast(s, 3) for s in ("dup", "dup2", "ooo")}
        assert d.stop()[0] == 0

        url = f"sqlite:///{directory}/adaptd.db"
        assert stored_rows(url, "dup") == [(T0 + i * H, v) for i, v in enumerate([0.5, 1.5, 42.0, 3.5, 4.5, 99.0])]
        assert stored_rows(url, "dup2") == [(T0, 1.0), (T0 + H, 7.0)]
        assert stored_rows(url, "ooo") == [(T0 + t * H, float(t)) for t in (1, 5, 7, 10, 11, 12)]

        d.start()
        listing = d.series()
        assert [listing[s]["observations"] for s in ("dup", "dup2", "ooo")] == [6, 2, 6]
        for s, fc in before.items():
            assert d.forecast(s, 3) == fc
        assert d.stop()[0] == 0
    finally:
        d.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_kill_9_leaves_a_stale_socket_that_a_restart_handles() -> None:
    directory = short_tempdir()
    d = DaemonProcess(write_config(directory))
    try:
        d.start()
        acked = sum(d.ingest(hourly("crash", 30)[i:i + 10])["accepted"] for i in range(0, 30, 10))
        d.kill()
        assert d.socket_path.is_socket(), "kill -9 should leave the socket file behind"
        with pytest.raises(ClientError, match="not running"):
            d.request({"op": "ping"})
        d.start()
        assert "stale" in d.stderr
        assert d.series()["crash"]["observations"] == acked == 30  # an ack survives a crash
        assert d.forecast("crash", 1)["origin"] == T0 + 29 * H
        rc, log = d.stop()
        assert rc == 0, log
        assert not d.socket_path.exists()
    finally:
        d.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_second_daemon_on_the_same_socket_refuses_to_start() -> None:
    first_dir, second_dir = short_tempdir(), short_tempdir()
    try:
        with running_daemon(first_dir) as first:
            first.ingest(hourly("first", 3))
            config = write_config(second_dir)
            text = config.read_text().replace(str(second_dir / "adaptd.sock"), str(first.socket_path))
            config.write_text(text)
            second = DaemonProcess(config).start(wait=False)
            rc = second.wait_exit()
            assert rc != 0
            assert "already serving" in second.stderr and str(first.socket_path) in second.stderr, second.stderr
            assert "Traceback" not in second.stderr
            assert first.socket_path.is_socket()
            assert first.request({"op": "ping"})["ok"] is True
            assert first.series()["first"]["observations"] == 3
            rc, log = first.stop()
            assert rc == 0, log
    finally:
        shutil.rmtree(first_dir, ignore_errors=True)
        shutil.rmtree(second_dir, ignore_errors=True)


def test_a_second_daemon_with_the_same_config_touches_nothing_of_the_first() -> None:
    """Started twice with one config (same store, socket and metrics port), the second says the
    socket is served, not that the port is taken, and exits before restoring, learning or
    checkpointing the first one's series."""
    directory = short_tempdir()
    try:
        with running_daemon(directory, metrics=True, naive=False) as first:
            first.ingest(hourly("first", 80))
            second = DaemonProcess(first.config).start(wait=False)
            rc = second.wait_exit()
            assert rc != 0
            assert "already serving" in second.stderr, second.stderr
            assert "metrics.listen" not in second.stderr and "Traceback" not in second.stderr
            for later_step in ("restored", "checkpoint", "waiting for the store"):
                assert later_step not in second.stderr, second.stderr
            assert first.series()["first"]["observations"] == 80
            rc, log = first.stop()
            assert rc == 0, log
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_two_daemons_started_together_on_one_socket_one_serves_the_other_touches_nothing() -> None:
    """The socket's lock file settles a simultaneous start before either opens the store."""
    directory = short_tempdir()
    try:
        config = write_config(directory, naive=False)
        pair = [DaemonProcess(config).start(wait=False) for _ in range(2)]
        deadline = time.monotonic() + 60
        while all(d.proc is not None and d.proc.poll() is None for d in pair):
            assert time.monotonic() < deadline, "neither exited"
            time.sleep(0.05)
        loser = next(d for d in pair if d.proc is not None and d.proc.poll() is not None)
        winner = next(d for d in pair if d is not loser)
        assert loser.wait_exit() != 0
        assert "already serving" in loser.stderr and "Traceback" not in loser.stderr, loser.stderr
        assert "restored" not in loser.stderr and "learn" not in loser.stderr, loser.stderr
        winner.wait_ready()
        assert winner.request({"op": "ping"})["ok"]
        assert winner.stop()[0] == 0
    finally:
        for d in pair:
            d.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_second_daemon_on_the_same_sqlite_file_is_refused_before_reading_it() -> None:
    """Two sockets, one database file: both would learn and checkpoint every series."""
    first_dir, second_dir = short_tempdir(), short_tempdir()
    try:
        with running_daemon(first_dir) as first:
            first.ingest(hourly("first", 3))
            second = DaemonProcess(write_config(second_dir, f"sqlite:///{first_dir}/adaptd.db")).start(wait=False)
            assert second.wait_exit() == 2
            assert "already serves the database" in second.stderr and "Traceback" not in second.stderr, second.stderr
            assert "restored" not in second.stderr
            assert first.series()["first"]["observations"] == 3
    finally:
        shutil.rmtree(first_dir, ignore_errors=True)
        shutil.rmtree(second_dir, ignore_errors=True)


def test_a_file_in_the_socket_place_is_not_removed() -> None:
    directory = short_tempdir()
    try:
        config = write_config(directory)
        (directory / "adaptd.sock").write_text("precious")
        d = DaemonProcess(config).start(wait=False)
        assert d.wait_exit() == 2
        assert "not a socket" in d.stderr, d.stderr
        # The operator's log does not claim a clean stop after the failure.
        assert "stopped cleanly" not in d.stderr and "stopped after an error" in d.stderr, d.stderr
        assert (directory / "adaptd.sock").read_text() == "precious"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_sigint_stops_cleanly_and_socket_mode_follows_config() -> None:
    with running_daemon(sections={"server": {"socket_mode": "0600"}}) as d:
        assert stat.S_IMODE(os.stat(d.socket_path).st_mode) == 0o600
        rc, log = d.stop(signal.SIGINT)
        assert rc == 0 and "stopped cleanly" in log, log
        assert not d.socket_path.exists()


def test_metrics_endpoint_counts_what_was_ingested() -> None:
    import urllib.request

    with running_daemon(metrics=True) as d:
        d.ingest(hourly("m", 7) + [{"series": "m", "ts": "bad", "value": 1}])
        d.forecast("m", 2)
        with urllib.request.urlopen(f"http://{d.settings.metrics.listen}/metrics", timeout=10) as response:
            text = response.read().decode()
        samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                   for line in text.splitlines() if line and not line.startswith("#")}
        assert samples["adaptd_records_ingested_total"] == 7
        assert samples['adaptd_records_rejected_total{reason="ts"}'] == 1
        assert samples['adaptd_requests_total{op="forecast",outcome="ok"}'] == 1
        answers = {k: v for k, v in samples.items() if k.startswith("adaptd_forecast_answers_total")}
        assert len(answers) == 3 and sum(answers.values()) == 1, answers   # one answer, by models or fallback
        assert samples["adaptd_series"] == 1


@pytest.mark.integration
def test_exported_series_metrics_and_stored_forecasts_match_the_socket(tmp_path: Path) -> None:
    """Per-series export and the SQL forecasts Grafana plots agree with what clients are told."""
    url = f"sqlite:///{tmp_path}/adaptd.db"
    sections = {"metrics": {"series": ["m", "absent"]},
                "model": {"max_horizon": 6, "window": 16, "patch": 4, "rls_lags": 8},
                "server": {"forecast_wait": 30.0}}
    y = [10 + 3 * math.sin(i / 4) for i in range(80)]
    with running_daemon(metrics=True, naive=False, store_url=url, sections=sections) as d:
        d.ingest(hourly("m", 80, values=y) + hourly("other", 80, values=y))
        d.wait_learnt()   # what is stored is what the models learnt
        answer = d.forecast("m", 6)
        assert answer["model"]["kind"] == "online", d.stderr
        with urllib.request.urlopen(f"http://{d.settings.metrics.listen}/metrics", timeout=10) as response:
            text = response.read().decode()
        d.stop()   # the shutdown checkpoint stores the exported series' forecasts
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples['adaptd_series_value{series="m"}'] == y[-1]
    assert (samples['adaptd_series_forecast_lower{series="m"}'] <= samples['adaptd_series_forecast{series="m"}']
            <= samples['adaptd_series_forecast_upper{series="m"}'])
    assert not any('series="other"' in key or 'series="absent"' in key for key in samples)
    assert samples["adaptd_series_warm"] == 2
    assert samples['adaptd_initializer_info{kind="random",version="0"}'] == 1
    from adaptd.store import Store

    store = Store.open(url)
    try:
        stored = store.stored_forecasts("m")
        assert store.stored_forecasts("other") == []
    finally:
        store.close()
    assert [(step, target, value, lo, hi) for step, target, value, lo, hi in stored] == [
        (i + 1, p["ts"], p["value"], p["lo"], p["hi"]) for i, p in enumerate(answer["points"])]


def test_connections_past_max_connections_are_told_overloaded_and_others_carry_on() -> None:
    with running_daemon(sections={"server": {"max_connections": 2}}) as d:
        with d.client() as first, d.client() as second:
            time.sleep(0.2)   # both are registered
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as third:
                third.settimeout(10)
                third.connect(str(d.socket_path))
                answer = json.loads(third.recv(65536).split(b"\n")[0])
                assert answer["ok"] is False and answer["error"]["code"] == "overloaded", answer
                assert "max_connections" in answer["error"]["message"]
                assert third.recv(65536) == b""          # then closed
            assert first.request({"op": "ping"})["ok"] and second.request({"op": "ping"})["ok"]
        deadline = time.monotonic() + 10
        while d.request({"op": "ping"}).get("ok") is not True:   # room again once they closed
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_metrics_port_in_use_fails_startup_naming_the_key() -> None:
    directory = short_tempdir()
    try:
        config = write_config(directory, metrics=True)
        d = DaemonProcess(config)
        host, port = d.settings.metrics.listen.rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
            holder.bind((host, int(port)))
            holder.listen()
            d.start(wait=False)
            assert d.wait_exit() == 2
        assert "metrics.listen" in d.stderr, d.stderr
        assert not d.socket_path.exists()
        assert "no checkpoint written" in d.stderr, d.stderr   # it never served: the store is left as it was
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_unknown_socket_group_fails_startup_naming_the_key() -> None:
    directory = short_tempdir()
    try:
        d = DaemonProcess(write_config(directory, sections={"server": {"socket_group": "no-such-group-xyz"}}))
        d.start(wait=False)
        assert d.wait_exit() == 2
        assert "server.socket_group" in d.stderr and "no-such-group-xyz" in d.stderr, d.stderr
        assert "Traceback" not in d.stderr
        assert not d.socket_path.exists()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
