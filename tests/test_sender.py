"""One connection's share of `adaptd ingest` (adaptd/sender.py), against a scripted daemon."""

from __future__ import annotations

from typing import Any

import pytest

from adaptd import sender as sender_module
from adaptd.client import ClientError
from adaptd.sender import IN_FLIGHT, Halt, Sender, Tally
from adaptd.upload import UploadReport


class ScriptedDaemon:
    """The daemon's side of one connection, as `adaptd ingest` sees it: answers in request order,
    `overloaded` for the sends listed (counted from 1), another error for those in `fail`, and
    gone (the connection closed) from answer `gone_at` on. Stands in for timing a real daemon's
    overload cannot be made to hit exactly (test_daemon_cli.py overloads a real one)."""

    def __init__(self, refuse: set[int] = frozenset(), fail: set[int] = frozenset(), gone_at: int = 0):
        self.refuse, self.fail, self.gone_at = refuse, fail, gone_at
        self.sent: list[float] = []
        self.unanswered: list[list[dict[str, Any]]] = []
        self.reads = 0

    def request_nowait(self, payload: dict) -> None:
        self.sent.append(payload["records"][0]["ts"])
        self.unanswered.append(payload["records"])

    def read_response(self) -> dict:
        self.reads += 1
        if self.gone_at and self.reads >= self.gone_at:
            raise ClientError("the daemon closed the connection")
        records = self.unanswered.pop(0)
        answered = len(self.sent) - len(self.unanswered)
        if answered in self.refuse:
            return {"ok": False, "error": {"code": "overloaded", "message": "busy"}}
        if answered in self.fail:
            return {"ok": False, "error": {"code": "internal", "message": "see the log"}}
        return {"ok": True, "accepted": len(records), "rejected": []}


def batch(first: int, n: int = 10) -> list[dict[str, Any]]:
    return [{"series": "s", "ts": first + i, "value": 1.0} for i in range(n)]


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sender_module.time, "sleep", lambda _s: None)


def test_a_refused_batch_is_resent_before_anything_else_then_one_at_a_time() -> None:
    daemon = ScriptedDaemon(refuse={1, 3, 6})   # batches 0 and 2 pipelined, then 2 again once re-sent
    report = UploadReport()
    sender = Sender(daemon, report.members[0], report.reason)  # type: ignore[arg-type]
    for k in range(6):
        sender.send(batch(k * 10), list(range(10)))
    sender.finish()
    # Batches 0-3 in flight; 0 and 2 refused, 1 and 3 stored anyway (ahead of them: an older daemon), then 0 and
    # 2 again in file order (2 refused once more and retried at once), then 4 and 5 one at a time.
    assert daemon.sent == [0, 10, 20, 30, 0, 20, 20, 40, 50]
    assert report.accepted == 60 and report.resent == 3 and report.out_of_order == 20
    assert "3 batches re-sent after `overloaded`" in report.summary()
    assert "20 records were stored after later lines" in report.summary()
    # One at a time until 8 in a row are acknowledged, then 4 in flight again.
    assert sender.in_flight == 1
    for k in range(6, 15):
        sender.send(batch(k * 10, 1), [0])
    assert sender.in_flight == IN_FLIGHT and len(sender.waiting) > 1


def test_a_refused_batch_halts_it_after_counting_what_was_acknowledged_behind_it() -> None:
    daemon = ScriptedDaemon(fail={1})
    tally = Tally()
    sender = Sender(daemon, tally, lambda line, why: None, label="member 1 (b.sock): ")  # type: ignore[arg-type]
    with pytest.raises(Halt) as info:
        for k in range(4):
            sender.send(batch(k * 10), list(range(2 + k * 10, 12 + k * 10)))
    assert str(info.value) == ("member 1 (b.sock): the daemon refused a batch (internal: see the log) "
                               "holding lines 2-11")
    assert info.value.lost == 10 and tally.accepted == 30 and not sender.waiting


def test_abandon_counts_the_answers_in_flight_and_reads_nothing_from_a_closed_connection() -> None:
    daemon = ScriptedDaemon(gone_at=2)
    tally = Tally()
    sender = Sender(daemon, tally, lambda line, why: None)  # type: ignore[arg-type]
    for k in range(3):
        sender.send(batch(k * 10), list(range(10)))
    assert sender.abandon() == 20 and tally.accepted == 10
    assert daemon.reads == 2 and not sender.waiting and sender.abandon() == 0


def test_rejections_reach_the_report_by_line_and_hidden_ones_are_counted() -> None:
    class Rejecting(ScriptedDaemon):
        def read_response(self) -> dict:
            records = self.unanswered.pop(0)
            return {"ok": True, "accepted": len(records) - 3, "rejected_total": 3,
                    "rejected": [{"index": 4, "code": "bad_request", "message": "why"}]}

    report = UploadReport()
    sender = Sender(Rejecting(), report.members[0], report.reason)  # type: ignore[arg-type]
    sender.send(batch(0), list(range(100, 110)))
    sender.finish()
    assert (report.accepted, report.rejected, report.reasons) == (7, 3, [(104, "why")])
