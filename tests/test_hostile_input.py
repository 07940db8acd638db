"""Hostile input against the real daemon, property-based (issue #6).

One daemon (naive engine) serves the whole module; every example speaks to it over raw
AF_UNIX sockets, so any bytes at all can be sent. tests/test_daemon.py holds the hand-picked
cases; here hypothesis generates them, and an oracle written from the documented contract
(README "Socket protocol v1", DESIGN.md §2) says what each request line must get:

- exactly one response line per non-blank request line, in order, each a JSON object with
  `ok: true`, or `ok: false` and a documented error code;
- the request's `id` echoed whenever it can be (and a bad_request without it when it cannot);
- ingest: the accepted count and the indexes of the rejected records, and afterwards exactly
  those records in the store (read straight from the SQLite file) and in the `series` op;
- after every example the daemon is alive, and a client that stayed connected throughout
  (the bystander) still gets its answers.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import socket
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import adaptd
from adaptd.client import Client, ClientError
from adaptd.protocol import CODES

from daemon_harness import DaemonProcess, hourly, run_cli, running_daemon

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0
H = 3600.0
DAY = 86_400.0
MAX_BATCH = 100_000        # [server] max_batch_records of this module's daemon
MAX_HORIZON = 48           # the default [model] max_horizon
MAX_SERIES_NAME = 200
MIN_TS, MAX_TS = -62_135_596_800.0, 253_402_300_799.0  # years 1..9999
# 100,000 records need >= 3.3 MB even with one-letter names: this daemon allows 8 MiB lines
# (the defaults, 1 MiB and 10,000 records, fit each other).
LINE_LIMIT = 8 << 20
KNOWN = "hostile-known"    # a series with 10 hourly observations, ingested at start
# asyncio buffers up to 2 x max_line_bytes of requests per connection whose answers are not
# being read (then it stops reading it); beyond that nothing may grow.
PER_STALLED_CONNECTION = 2 * LINE_LIMIT + (2 << 20)
PING_LATENCY_BOUND = 1.0   # seconds, for a bystander while another client misbehaves

HYPOTHESIS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                        HealthCheck.too_slow, HealthCheck.data_too_large])

_unique = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_unique)}-{time.monotonic_ns() % 10**6}"


def documented_codes() -> set[str]:
    """The error codes README and DESIGN.md promise ("C one of `a`, `b`, ...")."""
    found = []
    for doc in (ROOT / "README.md", ROOT.parent / "shared" / "DESIGN.md"):
        if not doc.exists():
            continue
        text = doc.read_text(encoding="utf-8")
        match = re.search(r"C`?\s+one of\s+(.*?)\.", text, re.S)
        assert match, f"{doc} no longer lists the error codes"
        found.append(set(re.findall(r"`([a-z_]+)`", match.group(1))))
    assert found, "neither README.md nor DESIGN.md found"
    codes = set.union(*found)
    assert all(f == codes for f in found), f"README and DESIGN.md disagree on the error codes: {found}"
    return codes


DOCUMENTED = documented_codes()


def test_documented_codes_are_the_codes_the_daemon_can_send() -> None:
    assert DOCUMENTED == set(CODES)


# -- a raw connection ----------------------------------------------------------------------------

class Conn:
    """A raw AF_UNIX connection: bytes out, response lines in."""

    def __init__(self, path: Path, timeout: float = 30.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError(f"the daemon closed the connection (unterminated: {self.buf[:80]!r})")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def response(self) -> dict[str, Any]:
        line = self.line()
        answer = json.loads(line.decode("utf-8"))  # every response is UTF-8 JSON
        assert isinstance(answer, dict) and isinstance(answer.get("ok"), bool), line[:200]
        return answer

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.send(json.dumps(payload, allow_nan=False).encode() + b"\n")
        return self.response()


# -- the oracle: what a request line must get, from the documented contract ----------------------

NO_ID = object()


class Expect:
    """What one request line must be answered with."""

    def __init__(self, code: str | None = None, codes: set[str] | None = None, request_id: Any = NO_ID,
                 accepted: int | None = None, rejected: list[int] | None = None):
        self.codes = codes if codes is not None else ({code} if code else {"ok"})
        self.request_id = request_id
        self.accepted = accepted
        self.rejected = rejected

    def check(self, answer: dict[str, Any], line: bytes) -> None:
        where = f"request {line[:300]!r}\nanswer {str(answer)[:600]}"
        if answer["ok"]:
            assert "ok" in self.codes, where
        else:
            assert set(answer) <= {"ok", "error", "id"}, where
            err = answer["error"]
            assert set(err) == {"code", "message"} and isinstance(err["message"], str) and err["message"], where
            assert err["code"] in DOCUMENTED, where
            assert err["code"] in self.codes, where
        if self.request_id is NO_ID:
            assert "id" not in answer, where
        else:   # echoed whenever the request carried the key, "id": null included
            assert "id" in answer and canonical(answer["id"]) == canonical(self.request_id), where
        if answer["ok"] and self.accepted is not None:
            assert answer["accepted"] == self.accepted, where
            listed = [r["index"] for r in answer["rejected"]]
            assert listed == self.rejected, where
            assert all(r["code"] in DOCUMENTED and r["message"] for r in answer["rejected"]), where


def canonical(value: Any) -> str:
    """Equality that tells 1 from 1.0 and True from 1 (and compares lone surrogates exactly)."""
    return json.dumps(value, allow_nan=False)


def is_blank(line: bytes) -> bool:
    return not line.strip()  # the server skips lines of ASCII whitespace


def valid_series(name: Any) -> bool:
    return isinstance(name, str) and 1 <= len(name) <= MAX_SERIES_NAME and name.isprintable()


def valid_number(raw: Any) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    try:
        number = float(raw)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def valid_ts(raw: Any) -> float | None:
    if isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw.strip())
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        ts: float | None = moment.timestamp()
    else:
        ts = valid_number(raw)
    return ts if ts is not None and MIN_TS <= ts <= MAX_TS else None


def record_ok(raw: Any) -> bool:
    return (isinstance(raw, dict) and all(k in raw for k in ("series", "ts", "value"))
            and valid_series(raw["series"]) and valid_ts(raw["ts"]) is not None
            and valid_number(raw["value"]) is not None)


def expect_for(line: bytes, known: set[str] = frozenset({KNOWN})) -> Expect:
    """The documented answer to one (non-blank) request line."""
    try:
        request = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return Expect("bad_request")
    if not isinstance(request, dict):
        return Expect("bad_request")
    request_id = request.get("id", NO_ID)
    if request_id is not NO_ID and request_id is not None:
        try:
            json.dumps(request_id, allow_nan=False)
        except (ValueError, RecursionError):
            return Expect("bad_request")  # an id that cannot be echoed: refused, without the id
    op = request.get("op")
    if not isinstance(op, str):
        return Expect("bad_request", request_id=request_id)
    if op in ("ping", "series", "stats"):
        return Expect(request_id=request_id)
    if op == "ingest":
        records = request.get("records")
        if not isinstance(records, list):
            return Expect("bad_request", request_id=request_id)
        if len(records) > MAX_BATCH:
            return Expect("too_large", request_id=request_id)
        oks = [record_ok(r) for r in records]
        return Expect(request_id=request_id, accepted=sum(oks), rejected=[i for i, ok in enumerate(oks) if not ok])
    if op == "forecast":
        series, horizon = request.get("series"), request.get("horizon")
        if not valid_series(series):
            return Expect("bad_request", request_id=request_id)
        if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= MAX_HORIZON:
            return Expect("bad_request", request_id=request_id)
        if series in known:
            return Expect(request_id=request_id)
        # A name some other example may have stored: any of the three is right.
        return Expect(codes={"ok", "unknown_series", "not_ready"}, request_id=request_id)
    if op == "forget":
        series = request.get("series")
        if not valid_series(series):
            return Expect("bad_request", request_id=request_id)
        assert series not in known, "the examples never remove the series the others rely on"
        return Expect(codes={"ok", "unknown_series", "not_ready"}, request_id=request_id)
    return Expect("unknown_op", request_id=request_id)


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with running_daemon(sections={"server": {"max_line_bytes": LINE_LIMIT, "max_batch_records": MAX_BATCH}}) as d:
        d.ingest(hourly(KNOWN, 10))
        yield d
        assert d.running, d.stderr
        rc, log = d.stop()
        assert rc == 0, log
        unexpected = [entry for entry in log_errors(log) if not is_known_bug(entry)]
        assert not unexpected, "\n".join(unexpected)  # no input may reach an unhandled exception


# Daemon errors a test may tolerate in the log (none known).
KNOWN_BUGS: list[tuple[str, str]] = []


def log_errors(log: str) -> list[str]:
    """The daemon's ERROR/CRITICAL entries, each with its traceback, and any stray traceback."""
    entries: list[str] = []
    for line in log.splitlines():
        if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) or not entries:
            entries.append(line)
        else:
            entries[-1] += "\n" + line
    return [e for e in entries if " ERROR " in e or " CRITICAL " in e or "Traceback" in e]


def is_known_bug(entry: str) -> bool:
    return any(all(part in entry for part in bug) for bug in KNOWN_BUGS)


@pytest.fixture(scope="module")
def bystander(daemon: DaemonProcess) -> Iterator[Conn]:
    """A client connected for the whole module, checked after every example."""
    with Conn(daemon.socket_path) as conn:
        yield conn


_checks = itertools.count()


def assert_unaffected(daemon: DaemonProcess, bystander: Conn) -> None:
    """The daemon lives; the long-standing connection and a new one get their answers."""
    assert daemon.running, daemon.stderr
    n = next(_checks)
    bystander.send(json.dumps({"op": "ping", "id": n}).encode() + b"\n"
                   + json.dumps({"op": "forecast", "series": KNOWN, "horizon": 2, "id": -n}).encode() + b"\n")
    assert bystander.response() == {"ok": True, "version": adaptd.__version__, "id": n}
    fc = bystander.response()
    assert fc["ok"] and fc["id"] == -n and fc["origin"] == T0 + 9 * H, fc
    with Conn(daemon.socket_path, timeout=10) as fresh:
        assert fresh.request({"op": "ping"})["ok"] is True


def send_lines(daemon: DaemonProcess, lines: list[bytes], known: set[str] = frozenset({KNOWN})
               ) -> list[dict[str, Any]]:
    """Pipeline `lines` on one new connection; check every answer against the oracle, and that
    there is exactly one answer per non-blank line (a trailing ping must be the next answer)."""
    answered = [line for line in lines if not is_blank(line + b"\n")]
    with Conn(daemon.socket_path) as conn:
        conn.send(b"".join(line + b"\n" for line in lines) + b'{"op":"ping","id":"end-of-batch"}\n')
        answers = [conn.response() for _ in answered]
        for line, answer in zip(answered, answers):
            expect_for(line + b"\n", known).check(answer, line)
        assert conn.response() == {"ok": True, "version": adaptd.__version__, "id": "end-of-batch"}
    return answers


def stored(daemon: DaemonProcess, series: str) -> dict[float, float]:
    """ts -> value of one series, read from the SQLite file itself (read-only; WAL allows it)."""
    db = daemon.directory / "adaptd.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        rows = conn.execute("SELECT o.ts, o.value FROM observations o JOIN series s ON s.id = o.series_id "
                            "WHERE s.name = ?", (series,)).fetchall()
    conn.close()
    return {float(ts): float(value) for ts, value in rows}


def listed(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    with Conn(daemon.socket_path) as conn:
        answer = conn.request({"op": "series"})
    assert answer["ok"] is True
    return {item["series"]: item for item in answer["series"]}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/<pid>/status")


def open_connections(daemon: DaemonProcess) -> int:
    with Conn(daemon.socket_path) as conn:
        return int(conn.request({"op": "stats"})["connections"]) - 1  # not counting this one


def wait_for_connections(daemon: DaemonProcess, expected: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (now := open_connections(daemon)) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert now == expected, f"{now} connections open on the daemon, expected {expected}"


# -- strategies ----------------------------------------------------------------------------------

# Numbers at and past the edges of what JSON, Python's parser and a double can hold.
HUGE_AND_TINY = [
    "1e400", "-1e400", "1E+400", "1e-400", "-1e-400", "-0", "-0.0", "0e0", "-0e-0", "4.9e-324",
    "2.2250738585072014e-308", "1.7976931348623157e308", "1.7976931348623159e308", "1" + "0" * 400,
    "-" + "9" * 400, "9" * 4300, "1" + "0" * 4300, "-" + "7" * 5000, "0." + "0" * 5000 + "1",
    "1" + "0" * 308 + ".5", "253402300799", "253402300800", "-62135596800", "-62135596801",
]
NON_FINITE = ["NaN", "Infinity", "-Infinity", "-NaN", "nan", "inf", "+1", "01", ".5", "1.", "0x10"]
SPECIAL = HUGE_AND_TINY + NON_FINITE + ["true", "false", "null", "[]", "{}", '""', '" "', '"\\u0000"',
                                        '"\\ud800"', '"\\udfff\\ud800"', '"2024-01-01T00:00:00"', "[null]"]


def dumps_any(value: Any) -> str:
    return json.dumps(value)  # floats become NaN / Infinity / -Infinity literals too


scalar_texts = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers().map(str),
    st.integers(min_value=-(10**500), max_value=10**500).map(str),
    st.floats().map(dumps_any),
    st.text(max_size=30).map(json.dumps),
    st.text(max_size=30).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.datetimes().map(lambda d: json.dumps(d.isoformat())),
)

json_texts = st.recursive(
    scalar_texts,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(st.text(max_size=8), children), max_size=4).map(
            lambda kvs: "{" + ",".join(json.dumps(k) + ":" + v for k, v in kvs) + "}"),
    ),
    max_leaves=12,
)


def obj(fields: list[tuple[str, str]]) -> str:
    return "{" + ",".join(json.dumps(k) + ":" + v for k, v in fields) + "}"


def valid_request_fields(op: str, series: str) -> list[tuple[str, str]]:
    """A valid request of `op` as (key, JSON text) pairs; an ingest stores `series`."""
    fields = [("op", json.dumps(op))]
    if op == "ingest":
        fields.append(("records", "[" + ",".join(json.dumps(r) for r in hourly(series, 2)) + "]"))
    elif op == "forecast":
        fields += [("series", json.dumps(KNOWN)), ("horizon", "3")]
    elif op == "forget":   # the example's own series, never one the others rely on
        fields.append(("series", json.dumps(series)))
    return fields


# Every field of every op, and the fields inside an ingest's first record.
FIELDS = {
    "ping": ["op", "id", "<extra>"],
    "series": ["op", "id", "<extra>"],
    "stats": ["op", "id", "<extra>"],
    "ingest": ["op", "id", "<extra>", "records", "records[0]", "records[0].series", "records[0].ts",
               "records[0].value", "records[0].<extra>"],
    "forecast": ["op", "id", "<extra>", "series", "horizon"],
    "forget": ["op", "id", "<extra>", "series"],
}
TARGETS = [(op, field) for op, fields in FIELDS.items() for field in fields]


def mutated_request(op: str, field: str, text: str | None, series: str, extra_key: str = "x") -> bytes:
    """A valid `op` request whose `field` is replaced by the JSON `text` (None: removed)."""
    fields = valid_request_fields(op, series)
    if field.startswith("records[0]"):
        records = hourly(series, 2)
        first = [(k, json.dumps(v)) for k, v in records[0].items()]
        sub = field.split(".", 1)[1] if "." in field else None
        if sub is None:
            first_text = text
        else:
            if sub == "<extra>":
                first.append((extra_key, text or "null"))
            else:
                first = [(k, v) for k, v in first if k != sub] + ([(sub, text)] if text is not None else [])
            first_text = obj(first)
        items = ([first_text] if first_text is not None else []) + [json.dumps(records[1])]
        fields = [(k, v) if k != "records" else (k, "[" + ",".join(items) + "]") for k, v in fields]
    elif field == "<extra>":
        fields.append((extra_key, text or "null"))
    else:
        fields = [(k, v) for k, v in fields if k != field] + ([(field, text)] if text is not None else [])
    return obj(fields).encode("utf-8")


# -- properties ----------------------------------------------------------------------------------

@settings(max_examples=150, **HYPOTHESIS)
@given(target=st.sampled_from(TARGETS), text=st.one_of(st.none(), json_texts), extra_key=st.text(max_size=6))
# Regressions: integer literals over Python's 4300-digit limit raised a plain ValueError in the
# parser, answered `internal` (with a traceback in the log) instead of `bad_request`.
@example(target=("forecast", "horizon"), text="1" + "0" * 4300, extra_key="x")
@example(target=("ingest", "records[0].value"), text="-" + "7" * 5000, extra_key="x")
@example(target=("ping", "id"), text="[" + "9" * 4301 + "]", extra_key="x")
# Edge cases worth keeping: non-finite and huge literals where a number is expected.
@example(target=("ingest", "records[0].value"), text="NaN", extra_key="x")
@example(target=("ingest", "records[0].ts"), text="1e400", extra_key="x")
@example(target=("ingest", "records[0].ts"), text="-0", extra_key="x")
@example(target=("forecast", "horizon"), text="Infinity", extra_key="x")
@example(target=("ping", "id"), text="-Infinity", extra_key="x")
@example(target=("ping", "<extra>"), text="NaN", extra_key="op")  # a duplicate "op": the last wins
def test_wrong_types_in_every_field_of_every_op(daemon: DaemonProcess, bystander: Conn,
                                                target: tuple[str, str], text: str | None, extra_key: str) -> None:
    op, field = target
    series = unique("wt")
    line = mutated_request(op, field, text, series, extra_key)
    [answer] = send_lines(daemon, [line])
    if op == "ingest":
        # Exactly what was acknowledged is stored, under the example's own series name.
        expected = {}
        request = None
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            pass
        if answer["ok"] and isinstance(request, dict):
            for record in request["records"]:
                if record_ok(record) and record["series"] == series:
                    expected[valid_ts(record["ts"])] = float(record["value"])
        assert stored(daemon, series) == expected, (line[:300], answer)
    assert_unaffected(daemon, bystander)


@settings(max_examples=60, **HYPOTHESIS)
@given(lines=st.lists(st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=40).map(lambda b: b'{"op":"ping","id":"' + b + b'"}'),
    st.binary(max_size=40).map(lambda b: b'{"op":"ingest","records":[{"series":"' + b + b'","ts":1,"value":1}]}'),
    st.sampled_from([b"\r", b"\x0b", b"\x0c", b" \t ", b"\x00", b"\xef\xbb\xbf{}", b"\xff", b"{\"op\":\"ping\"}\r"]),
), min_size=1, max_size=8))
@example(lines=[b"\x00" * 200, b"\xed\xa0\x80", b"}" * 100, b"\x1b[2J"])
def test_random_byte_lines_each_get_exactly_one_answer(daemon: DaemonProcess, bystander: Conn,
                                                      lines: list[bytes]) -> None:
    lines = [line.replace(b"\n", b"") for line in lines]
    send_lines(daemon, lines, known={KNOWN})
    assert_unaffected(daemon, bystander)


def _valid_requests(series: str) -> list[bytes]:
    return [
        json.dumps({"op": "ping", "id": "pïng"}, ensure_ascii=False).encode(),
        json.dumps({"op": "stats", "id": [1, {"a": None}]}).encode(),
        json.dumps({"op": "series"}).encode(),
        json.dumps({"op": "forecast", "series": KNOWN, "horizon": 5, "id": 3.5}).encode(),
        json.dumps({"id": "ingest", "op": "ingest", "records": hourly(series, 3)}).encode(),
        json.dumps({"op": "ingest", "records": [{"series": series, "ts": "2024-01-01T00:00:00Z", "value": -0.0}]},
                   ensure_ascii=False).encode(),
    ]


@settings(max_examples=80, **HYPOTHESIS)
@given(which=st.integers(0, 5), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_json_is_a_bad_request_and_stores_nothing(daemon: DaemonProcess, bystander: Conn,
                                                           which: int, cut: float) -> None:
    series = unique("trunc")
    request = _valid_requests(series)[which]
    prefix = request[: int(cut * len(request))]
    # Cut inside a multi-byte character too: that must be a bad_request as well (not UTF-8).
    answers = send_lines(daemon, [prefix])
    assert all(a["ok"] is False and a["error"]["code"] == "bad_request" for a in answers), answers
    assert stored(daemon, series) == {}
    assert series not in listed(daemon)
    assert_unaffected(daemon, bystander)


def test_error_messages_point_at_the_fault_in_the_clients_terms(daemon: DaemonProcess, bystander: Conn) -> None:
    """A message a programmer reads: where the JSON broke (not "line 2 column 1" for a missing
    brace), JSON's type names (not Python's), which character of a name is not printable, and
    never a huge bad value echoed back."""
    series = unique("msg")
    cut, inside, none, control, huge = send_lines(daemon, [
        b'{"op":"ping"',
        b'{"op":"ping",,"id":1}',
        json.dumps({"op": "ingest", "records": [{"series": series, "ts": None, "value": 1}]}).encode(),
        json.dumps({"op": "ingest", "records": [{"series": "ab\x07c", "ts": T0, "value": 1}]}).encode(),
        json.dumps({"op": "forecast", "series": KNOWN, "horizon": list(range(50_000))}).encode()])
    assert cut["error"]["message"] == "request is not valid JSON: Expecting ',' delimiter at the end of the line"
    assert inside["error"]["message"] == "request is not valid JSON: Expecting property name enclosed in double " \
                                         "quotes at character 14"
    assert none["rejected"][0]["message"] == "ts must be epoch seconds or an ISO-8601 string, got null"
    assert "got U+0007 at character 3" in control["rejected"][0]["message"]
    assert huge["error"]["message"] == "horizon must be an integer from 1 to 48, got an array"
    assert_unaffected(daemon, bystander)


NESTING = {
    "list": (b"[", b"]"),
    "object": (b'{"k":', b"}"),
    "mixed": (b'[{"k":', b"}]"),
}


@settings(max_examples=40, **HYPOTHESIS)
@given(kind=st.sampled_from(sorted(NESTING)),
       depth=st.one_of(st.integers(1, 250), st.integers(3_000, 100_000)),
       closed=st.booleans(),
       where=st.sampled_from(["line", "id", "records", "record", "series", "value", "horizon", "extra"]))
@example(kind="list", depth=100_000, closed=False, where="line")
@example(kind="list", depth=100_000, closed=True, where="id")
@example(kind="object", depth=100_000, closed=True, where="records")
def test_deep_nesting_anywhere_is_answered(daemon: DaemonProcess, bystander: Conn, kind: str, depth: int,
                                           closed: bool, where: str) -> None:
    opening, closing = NESTING[kind]
    nested = opening * depth + (b"1" + closing * depth if closed else b"")
    series = unique("deep")
    record = b'{"series":' + json.dumps(series).encode() + b',"ts":1,"value":1}'
    lines = {
        "line": nested,
        "id": b'{"op":"ping","id":' + nested + b"}",
        "records": b'{"op":"ingest","records":' + nested + b"}",
        "record": b'{"op":"ingest","records":[' + record + b"," + nested + b"]}",
        "series": b'{"op":"forecast","horizon":1,"series":' + nested + b"}",
        "value": b'{"op":"ingest","records":[{"series":' + json.dumps(series).encode()
                 + b',"ts":1,"value":' + nested + b"}]}",
        "horizon": b'{"op":"forecast","series":"' + KNOWN.encode() + b'","horizon":' + nested + b"}",
        "extra": b'{"op":"ping","deep":' + nested + b"}",
    }
    [answer] = send_lines(daemon, [lines[where]])
    if depth >= 3_000:
        assert answer["ok"] is False and answer["error"]["code"] == "bad_request", answer
        assert stored(daemon, series) == {}
    assert_unaffected(daemon, bystander)


def test_every_huge_tiny_and_non_finite_literal_in_every_field(daemon: DaemonProcess, bystander: Conn) -> None:
    """Not sampled: the whole product of edge literals and fields, pipelined on one connection."""
    lines, ingests = [], []
    for literal in HUGE_AND_TINY + NON_FINITE:
        for op, field in TARGETS:
            if field in ("op", "<extra>", "records[0].<extra>"):
                continue
            series = unique("lit")
            lines.append(mutated_request(op, field, literal, series))
            if op == "ingest":
                ingests.append((lines[-1], series))
        lines.append(literal.encode())  # as the whole line
    send_lines(daemon, lines)
    # A record with a huge or non-finite value or ts is refused per record and the valid one
    # beside it is stored; a line refused as a whole (an unreadable number, an id that cannot be
    # echoed, records that are not a list) stores nothing.
    for line, series in ingests:
        expected = {}
        if expect_for(line + b"\n").accepted is not None:
            expected = {valid_ts(r["ts"]): float(r["value"]) for r in json.loads(line)["records"]
                        if record_ok(r) and r["series"] == series}
        assert stored(daemon, series) == expected, line[:200]
    assert_unaffected(daemon, bystander)


# Series names: any unicode (no lone surrogates), control characters, bidi controls, emoji, long.
NAME_PARTS = ["\u202e", "\u200f", "\u2066", "\u00ad", "\u200b", "\ufeff", "\u2028", "\x85", "\x7f", "\x1b",
              "😀", "👩‍👩‍👧", "🇫🇷", "ﷺ", "עברית", "عربى", "e\u0301", "é", "\U0010fffd", "\uffff", " ", "\\", '"']
names = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), min_size=190, max_size=230),
    st.lists(st.sampled_from(NAME_PARTS), min_size=1, max_size=8).map("".join),
    st.text(st.characters(max_codepoint=0x9f), max_size=10),  # ASCII + C0/C1 controls
)


@settings(max_examples=120, **HYPOTHESIS)
@given(name=names)
@example(name="x" * 200)
@example(name="y" * 201)
@example(name="😀" * 200)  # 200 characters, 800 bytes
@example(name="\u202eevil")
@example(name="e\u0301")  # not the same series as "é": names are stored exactly, not normalised
@example(name="é")
def test_unicode_series_names_are_stored_exactly_or_refused(daemon: DaemonProcess, bystander: Conn,
                                                            name: str) -> None:
    ts = T0 + H * next(_unique)  # a new timestamp every example: each accepted record is one more
    before = listed(daemon).get(name, {}).get("observations", 0)
    with Conn(daemon.socket_path) as conn:
        for ensure_ascii in (True, False):  # escaped and raw UTF-8 forms of the same name
            line = json.dumps({"op": "ingest", "id": name[:50], "records": [{"series": name, "ts": ts, "value": 1.5}]},
                              ensure_ascii=ensure_ascii).encode()
            conn.send(line + b"\n")
            answer = conn.response()
            expect_for(line + b"\n").check(answer, line)
        fc = conn.request({"op": "forecast", "series": name, "horizon": 1})
    after = listed(daemon)
    if valid_series(name):
        assert answer["accepted"] == 1
        assert after[name]["observations"] == before + 1, name
        assert stored(daemon, name)[ts] == 1.5
        if fc["ok"]:
            assert fc["series"] == name
        else:
            assert fc["error"]["code"] == "not_ready", fc
    else:
        assert answer["accepted"] == 0 and len(answer["rejected"]) == 1
        assert "series" in answer["rejected"][0]["message"]
        assert name not in after and stored(daemon, name) == {}
        assert fc["ok"] is False and fc["error"]["code"] == "bad_request", fc
    assert_unaffected(daemon, bystander)


bad_records = st.one_of(
    json_texts.map(lambda t: ("raw", t)),
    st.fixed_dictionaries({"series": st.sampled_from(["", "z" * 201, "tab\t", "\x00", "\u2028"]),
                           "ts": st.just(T0), "value": st.just(1.0)}).map(lambda r: ("raw", json.dumps(r))),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", '"1"', "null", "true", "[1]"]).map(
        lambda v: ("value", v)),
    st.sampled_from(["NaN", "1e400", "1e20", "-1e20", '"yesterday"', '"2024-13-01"', "true", "null", "[0]",
                     "253402300800", '"1704067200"']).map(lambda t: ("ts", t)),
    st.sampled_from(["series", "ts", "value"]).map(lambda k: ("missing", k)),
)


@settings(max_examples=80, **HYPOTHESIS)
@given(items=st.lists(st.one_of(
    st.tuples(st.just("good"), st.integers(0, 30), st.floats(allow_nan=False, allow_infinity=False)),
    bad_records,
), max_size=40))
@example(items=[])  # an empty batch is an ack of nothing
@example(items=[("good", 0, 1.0), ("good", 0, -0.0), ("value", "NaN"), ("good", 0, 2.5)])  # the last value wins
def test_valid_records_mixed_with_bad_ones_are_stored_exactly(daemon: DaemonProcess, bystander: Conn,
                                                             items: list[tuple[Any, ...]]) -> None:
    series = unique("mix")
    texts, expected_store, expected_rejected = [], {}, []
    for index, item in enumerate(items):
        kind = item[0]
        if kind == "good":
            _, step, value = item
            ts = T0 + step * H
            texts.append(json.dumps({"series": series, "ts": ts, "value": value}))
            expected_store[ts] = value
            continue
        if kind == "raw":
            texts.append(item[1])
        elif kind == "missing":
            texts.append(json.dumps({k: v for k, v in {"series": series, "ts": T0, "value": 1}.items()
                                     if k != item[1]}))
        else:
            field, literal = item
            fields = {"series": json.dumps(series), "ts": json.dumps(T0 + index * H), "value": "1"}
            fields[field] = literal
            texts.append(obj(list(fields.items())))
        expected_rejected.append(index)
    line = ('{"op":"ingest","id":"mix","records":[' + ",".join(texts) + "]}").encode()
    try:
        parsed = json.loads(line)
    except (ValueError, RecursionError):
        parsed = None  # e.g. a 5000-digit literal: the whole line is refused
    [answer] = send_lines(daemon, [line])
    if parsed is None:
        assert answer["ok"] is False and answer["error"]["code"] == "bad_request"
        assert stored(daemon, series) == {}
    else:
        # A random "raw" record may happen to be a valid record of another series: use the oracle.
        expected_rejected = [i for i, r in enumerate(parsed["records"]) if not record_ok(r)]
        assert answer["ok"] is True and answer["id"] == "mix", answer
        assert answer["accepted"] == len(items) - len(expected_rejected)
        assert [r["index"] for r in answer["rejected"]] == expected_rejected
        assert {r["code"] for r in answer["rejected"]} <= {"bad_request"}
        assert stored(daemon, series) == expected_store
        info = listed(daemon).get(series)
        if not expected_store:
            assert info is None
        else:
            assert info["observations"] == len(expected_store)
            assert (info["first_ts"], info["last_ts"]) == (min(expected_store), max(expected_store))
            with Conn(daemon.socket_path) as conn:
                fc = conn.request({"op": "forecast", "series": series, "horizon": 1})
            if len(expected_store) >= 2:  # few points: the naive engine forecasts the newest value
                assert fc["ok"] and fc["origin"] == max(expected_store), fc
                assert fc["points"][0]["value"] == expected_store[max(expected_store)], fc
            else:
                assert fc["error"]["code"] == "not_ready", fc
    assert_unaffected(daemon, bystander)


FLOAT_MAX = 1.7976931348623157e308


@settings(max_examples=60, **HYPOTHESIS)
@given(points=st.lists(st.tuples(st.one_of(st.floats(MIN_TS, MAX_TS), st.sampled_from([MIN_TS, MAX_TS, 0.0, -0.0])),
                                 st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                                           st.sampled_from([FLOAT_MAX, -FLOAT_MAX, 5e-324, -0.0]))),
                       min_size=1, max_size=25),
       horizon=st.integers(1, MAX_HORIZON))
@example(points=[(MAX_TS - H, 1.0), (MAX_TS, 2.0)], horizon=MAX_HORIZON)  # targets past year 9999
@example(points=[(MIN_TS, -FLOAT_MAX), (MAX_TS, FLOAT_MAX)], horizon=MAX_HORIZON)
@example(points=[(0.0, 1.0), (5e-324, 2.0)], horizon=3)  # the smallest step there is
def test_any_finite_numbers_give_a_finite_forecast(daemon: DaemonProcess, bystander: Conn,
                                                  points: list[tuple[float, float]], horizon: int) -> None:
    series = unique("num")
    with Conn(daemon.socket_path) as conn:
        answer = conn.request({"op": "ingest", "records": [{"series": series, "ts": t, "value": v} for t, v in points]})
        assert answer == {"ok": True, "accepted": len(points), "rejected": []}
        fc = conn.request({"op": "forecast", "series": series, "horizon": horizon})
    expected = {}
    for t, v in points:
        expected[t] = v  # the last value of a (series, ts) wins; -0.0 and 0.0 are one timestamp
    assert stored(daemon, series) == expected
    if len(expected) < 2:
        assert fc["ok"] is False and fc["error"]["code"] == "not_ready", fc
    else:
        assert fc["ok"] is True, fc
        assert fc["origin"] == max(expected) and fc["step"] > 0 and len(fc["points"]) == horizon, fc
        previous = fc["origin"]
        for p in fc["points"]:
            assert all(isinstance(p[k], float) and math.isfinite(p[k]) for k in ("ts", "value", "lo", "hi")), fc
            assert p["lo"] <= p["value"] <= p["hi"] and p["ts"] >= previous, fc
            previous = p["ts"]
    assert_unaffected(daemon, bystander)


def naive_step(stored_points: dict[float, float]) -> float:
    """The naive engine's step: the median positive gap of the newest timestamps."""
    ts = sorted(stored_points)[-65:]
    gaps = [b - a for a, b in zip(ts, ts[1:]) if b > a]
    return float(np.median(gaps)) if gaps else math.inf


def test_a_series_with_a_subnormal_step_gets_a_forecast(daemon: DaemonProcess, bystander: Conn) -> None:
    series = unique("subnormal")
    daemon.ingest([{"series": series, "ts": 0.0, "value": 1.0}, {"series": series, "ts": 5e-324, "value": 2.0}])
    fc = daemon.forecast(series, 3)
    assert_unaffected(daemon, bystander)
    assert fc["ok"] is True, fc


def test_a_forecast_past_year_9999_renders_in_the_cli(daemon: DaemonProcess) -> None:
    # Regression: `adaptd forecast` crashed (ValueError: year 10000 is out of range) formatting
    # forecast targets beyond datetime's range; stored timestamps stop at 9999-12-31T23:59:59.
    daemon.ingest([{"series": "end-of-time", "ts": MAX_TS - H, "value": 1.0},
                   {"series": "end-of-time", "ts": MAX_TS, "value": 2.0}])
    result = run_cli("forecast", "end-of-time", "-H", "2", config=daemon.config)
    assert result.returncode == 0, result.stderr
    assert "9999-12-31T23:59:59Z" in result.stdout and str(int(MAX_TS + H)) in result.stdout, result.stdout


@settings(max_examples=40, **HYPOTHESIS)
@given(which=st.integers(0, 5), cut=st.floats(0, 1, exclude_min=True, exclude_max=True),
       complete_before=st.integers(0, 3), reset=st.booleans())
def test_clients_that_disconnect_mid_line(daemon: DaemonProcess, bystander: Conn, which: int, cut: float,
                                          complete_before: int, reset: bool) -> None:
    series = unique("gone")
    request = _valid_requests(series)[which]
    conn = Conn(daemon.socket_path)
    try:
        conn.send(b'{"op":"ping"}\n' * complete_before + request[: max(1, int(cut * len(request)))])
        if reset:  # an abortive close (RST) instead of a FIN
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    finally:
        conn.close()
    assert_unaffected(daemon, bystander)
    assert stored(daemon, series) == {}  # half a request is never acted on


def test_disconnected_clients_leave_no_connection_behind(daemon: DaemonProcess, bystander: Conn) -> None:
    # Runs after the mid-line test: every connection of the module except the bystander is gone.
    wait_for_connections(daemon, 1)


def test_a_maximal_batch_is_accepted_and_one_more_record_is_too_large(daemon: DaemonProcess,
                                                                     bystander: Conn) -> None:
    series = unique("max")
    records = [{"series": series, "ts": i, "value": i % 7} for i in range(MAX_BATCH)]
    line = json.dumps({"op": "ingest", "id": "max", "records": records}, separators=(",", ":")).encode()
    assert len(line) < LINE_LIMIT
    over = json.dumps({"op": "ingest", "id": "over", "records": records + [{"series": series + "+", "ts": 0,
                                                                            "value": 0}]}).encode()
    with Conn(daemon.socket_path, timeout=60) as conn:
        conn.send(over + b"\n")
        answer = conn.response()
        assert answer["ok"] is False and answer["error"]["code"] == "too_large" and answer["id"] == "over"
        assert str(MAX_BATCH) in answer["error"]["message"]
        # The connection stays open, and nothing of the refused batch was stored.
        assert conn.request({"op": "ping", "id": 1})["id"] == 1
        assert series not in listed(daemon) and series + "+" not in listed(daemon)
        started = time.monotonic()
        conn.send(line + b"\n")
        answer = conn.response()
        good_seconds = time.monotonic() - started
        assert answer == {"ok": True, "accepted": MAX_BATCH, "rejected": [], "id": "max"}
        # 100,000 rejections: the first 1000 are listed and rejected_total counts them all.
        bad = json.dumps({"op": "ingest", "records": [{"series": series, "ts": "x", "value": 1}] * MAX_BATCH}).encode()
        started = time.monotonic()
        conn.send(bad + b"\n")
        answer = conn.response()
        bad_seconds = time.monotonic() - started
        assert answer["ok"] and answer["accepted"] == 0 and answer["rejected_total"] == MAX_BATCH
        assert [r["index"] for r in answer["rejected"]] == list(range(1000))
        # Regression: every rejection kept its traceback alive, and the garbage collector's passes
        # over them made a batch of bad records take ~5x as long as a good one that is committed
        # (seconds on the event loop, during which no other client got an answer).
        assert bad_seconds < 2.5 * good_seconds + 0.5, (bad_seconds, good_seconds)
    info = listed(daemon)[series]
    assert info["observations"] == MAX_BATCH and (info["first_ts"], info["last_ts"]) == (0, MAX_BATCH - 1)
    assert len(stored(daemon, series)) == MAX_BATCH
    assert_unaffected(daemon, bystander)


@pytest.mark.parametrize("terminated", [True, False], ids=["newline-after-limit", "never-ending-line"])
def test_a_line_over_max_line_bytes_is_too_large_then_closed(daemon: DaemonProcess, bystander: Conn,
                                                            terminated: bool) -> None:
    series = unique("huge")
    head = json.dumps({"op": "ingest", "id": "huge", "records": hourly(series, 1)})[:-1].encode() + b',"pad":"'
    line = head + b"p" * (LINE_LIMIT + 1 - len(head)) + (b'"}\n' if terminated else b"")
    with Conn(daemon.socket_path) as conn:
        try:
            conn.send(line)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may hang up before it read everything
        answer = json.loads(conn.line())
        assert answer["ok"] is False and answer["error"]["code"] == "too_large", answer
        assert "id" not in answer  # the line was never parsed
        with pytest.raises((EOFError, BrokenPipeError, ConnectionResetError)):
            conn.send(b'{"op":"ping"}\n')
            conn.line()
    assert stored(daemon, series) == {}
    assert_unaffected(daemon, bystander)


def test_the_client_says_why_the_daemon_hung_up(daemon: DaemonProcess, bystander: Conn) -> None:
    # Regression: a client still sending when the daemon closed the connection after `too_large`
    # got a bare BrokenPipeError, which `adaptd ingest` turned into a silent exit 1.
    with daemon.client() as client:
        with pytest.raises(ClientError, match="too_large"):
            client.request_nowait({"op": "ping", "id": "x" * (3 * LINE_LIMIT)})
    assert_unaffected(daemon, bystander)


def test_client_lines_for_a_batch_of_long_non_ascii_names_fit_the_default_line_limit() -> None:
    # Regression: the client wrote every non-ASCII character as a \\uXXXX escape (12 bytes for an
    # emoji), so `adaptd ingest`'s 1000-record batches of 200-character names were over the
    # default max_line_bytes (1 MiB): too_large, connection closed, nothing stored.
    default_limit = 1 << 20
    records = [{"series": name, "ts": "2024-01-01T00:00:00.000001+05:30", "value": -1.2345678901234567e-300}
               for name in ("😀" * 200, "é" * 200, '"\\' * 100, "\ud800" * 200) for _ in range(250)]
    a, b = socket.socketpair()
    with a, b:
        client = Client("unused")
        client._sock = a
        threading.Thread(target=client.request_nowait, args=({"op": "ingest", "records": records},),
                         daemon=True).start()
        received = b""
        while not received.endswith(b"\n"):
            received += b.recv(1 << 20)
    assert len(received) <= default_limit
    assert json.loads(received)["records"] == records  # the same request, lone surrogates included


@settings(max_examples=20, **HYPOTHESIS)
@given(lines=st.lists(st.one_of(st.binary(max_size=200), json_texts.map(str.encode)), min_size=1, max_size=10),
       split=st.floats(0.05, 0.95))
def test_a_half_sent_request_on_another_connection_survives_hostile_traffic(
        daemon: DaemonProcess, bystander: Conn, lines: list[bytes], split: float) -> None:
    request = json.dumps({"op": "forecast", "series": KNOWN, "horizon": 4, "id": "patient"}).encode() + b"\n"
    cut = int(split * len(request))
    with Conn(daemon.socket_path) as patient:
        patient.send(request[:cut])
        send_lines(daemon, [line.replace(b"\n", b"") for line in lines])
        patient.send(request[cut:])
        answer = patient.response()
        assert answer["ok"] and answer["id"] == "patient" and len(answer["points"]) == 4, answer
    assert_unaffected(daemon, bystander)


def _flood(path: Path, payload: bytes, seconds: float, sent: list[int], stop: threading.Event,
           socks: list[socket.socket]) -> None:
    """Send `payload` over and over for `seconds`, never reading a byte of the answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    socks.append(sock)
    sock.connect(str(path))
    sock.setblocking(False)
    chunk = payload * max(1, (1 << 16) // len(payload))
    deadline = time.monotonic() + seconds
    pending = b""
    while time.monotonic() < deadline and not stop.is_set():
        pending = pending or chunk
        try:
            n = sock.send(pending)
        except BlockingIOError:
            time.sleep(0.01)  # the daemon is not reading: that is the back-pressure we want
            continue
        except OSError:
            break
        sent[0] += n
        pending = pending[n:]


@pytest.mark.slow
def test_clients_that_never_read_answers_neither_grow_the_daemon_nor_block_others(
        daemon: DaemonProcess, bystander: Conn) -> None:
    series = unique("flood")
    daemon.ingest(hourly(series, 5))
    assert_unaffected(daemon, bystander)
    baseline = rss_kb(daemon.pid)
    pad = "p" * 1000
    payloads = [  # answers far larger than requests, and requests that make the daemon work
        json.dumps({"op": "ping", "id": pad}).encode() + b"\n",
        json.dumps({"op": "forecast", "series": KNOWN, "horizon": MAX_HORIZON}).encode() + b"\n",
        json.dumps({"op": "ingest", "records": hourly(series, 5)}).encode() + b"\n",
    ]
    bound_kb = (len(payloads) * PER_STALLED_CONNECTION + (32 << 20)) // 1024
    stop, socks, sent = threading.Event(), [], [[0] for _ in payloads]
    floods = [threading.Thread(target=_flood, args=(daemon.socket_path, p, 4.0, s, stop, socks), daemon=True)
              for p, s in zip(payloads, sent)]
    try:
        for t in floods:
            t.start()
        peak, slowest = baseline, 0.0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert_unaffected(daemon, bystander)  # ping + forecast on a standing and a new connection
            slowest = max(slowest, time.monotonic() - started)
            peak = max(peak, rss_kb(daemon.pid))
            time.sleep(0.05)
        for t in floods:
            t.join(10)
        # While nobody read them, the daemon stopped reading too: a few MB each, not 4 s of flooding.
        for s in sent:
            assert s[0] < PER_STALLED_CONNECTION + (2 << 20), f"{s[0]} bytes went into a daemon that could not answer"
        assert peak - baseline < bound_kb, f"RSS grew from {baseline} kB to {peak} kB (bound {bound_kb} kB)"
        assert slowest < PING_LATENCY_BOUND, f"a bystander waited {slowest:.2f}s"
    finally:
        stop.set()
        for t in floods:
            t.join(10)
        for sock in socks:
            sock.close()
    wait_for_connections(daemon, 1)
    assert rss_kb(daemon.pid) - baseline < bound_kb
    assert_unaffected(daemon, bystander)
