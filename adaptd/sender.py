"""One connection's share of `adaptd ingest`: batches kept in flight, `overloaded` batches re-sent
in file order, what the daemon answered counted in a `Tally`.

`adaptd ingest` runs one `Sender` per daemon it sends to: the one daemon, or each cluster member.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

from .client import Client, ClientError

IN_FLIGHT = 4          # batches sent ahead of their answers, to keep the daemon busy
CLEAN_ACKS = 8         # after an `overloaded`, batches acknowledged one at a time before IN_FLIGHT again
OVERLOAD_RETRIES = 50

Batch = tuple[list[dict[str, Any]], list[int], int]   # records, their lines in the file, attempts so far


@dataclass
class Tally:
    """What one daemon answered to the batches sent to it."""

    socket: str = ""
    accepted: int = 0
    rejected: int = 0
    resent: int = 0           # batches re-sent after the daemon answered `overloaded`
    out_of_order: int = 0     # acknowledged after records that follow them in the file


class Halt(Exception):
    """A sender stopped: the daemon refused a batch, or went away. The answers to the batches sent
    before were read and counted; `lost` records were sent and not acknowledged."""

    def __init__(self, reason: str, lost: int):
        super().__init__(reason)
        self.lost = lost


class Sender:
    """Keeps up to IN_FLIGHT batches outstanding; maps rejected indices back to line numbers.

    Answers come back in request order. A batch refused as `overloaded` is re-sent, after a
    pause, before anything else: the batches already sent behind it are answered first (the
    daemon refuses those too, protocol.Conversation; any it stored anyway is counted in the
    tally as out of order), then one batch at a time is in flight until CLEAN_ACKS in a row
    are acknowledged. `reject(line, message)` hears of every record the daemon rejected;
    `label` starts the reason of a `Halt` (which daemon stopped, when there are several).
    """

    def __init__(self, client: Client, tally: Tally, reject: Callable[[int, str], None], label: str = ""):
        self.client = client
        self.tally = tally
        self.reject = reject
        self.label = label
        self.in_flight = IN_FLIGHT
        self.clean = 0       # acknowledgements in a row since the last `overloaded`
        self.held_back = 0   # records of refused batches waiting to be re-sent
        self.waiting: deque[Batch] = deque()

    def send(self, records: list[dict[str, Any]], lines: list[int]) -> None:
        self._request(records, lines, 0)
        while len(self.waiting) >= self.in_flight:
            self.collect_one()

    def _request(self, records: list[dict[str, Any]], lines: list[int], attempt: int) -> None:
        try:
            self.client.request_nowait({"op": "ingest", "records": records})
        except ClientError as exc:   # it went away: answers it sent before still count
            self._stop(str(exc), len(records))
        self.waiting.append((records, lines, attempt))

    def finish(self) -> None:
        while self.waiting:
            self.collect_one()

    def collect_one(self) -> None:
        records, lines, attempt = self.waiting.popleft()
        try:
            answer = self.client.read_response()
        except ClientError as exc:
            self._stop(str(exc), len(records))
        if self._overloaded(answer, attempt):
            self._resend_in_order([(records, lines, attempt)])
            return
        self._accept(answer, records, lines)

    def abandon(self) -> int:
        """Send nothing more: read the answers to the batches in flight and count those
        acknowledged. Returns how many records were sent and not acknowledged."""
        lost, self.held_back = self.held_back, 0
        broken = False
        while self.waiting:
            records, lines, _attempt = self.waiting.popleft()
            reply: dict[str, Any] = {}
            if not broken:
                try:
                    reply = self.client.read_response()
                except ClientError:   # gone: no later answer will come either
                    broken = True
            if reply.get("ok"):
                self._count(reply, lines)
            else:
                lost += len(records)
        return lost

    def _overloaded(self, answer: dict[str, Any], attempt: int) -> bool:
        return (not answer.get("ok") and answer.get("error", {}).get("code") == "overloaded"
                and attempt < OVERLOAD_RETRIES)

    def _accept(self, answer: dict[str, Any], records: list[dict[str, Any]], lines: list[int],
                unsent: int = 0) -> None:
        if not answer.get("ok"):
            error = answer.get("error", {})
            self._stop(f"the daemon refused a batch ({error.get('code')}: {error.get('message')}) "
                       f"holding lines {lines[0]}-{lines[-1]}", len(records) + unsent)
        self._count(answer, lines)
        self.clean += 1
        if self.clean >= CLEAN_ACKS:
            self.in_flight = IN_FLIGHT

    def _resend_in_order(self, refused: list[Batch]) -> None:
        """Re-send refused batches in file order, one at a time, after the answers to every batch
        sent behind them."""
        self.in_flight, self.clean = 1, 0
        overtaken = 0   # how many of `refused` a stored later batch went ahead of
        while self.waiting:
            records, lines, attempt = self.waiting.popleft()
            unsent = sum(len(r) for r, _, _ in refused)
            try:
                answer = self.client.read_response()
            except ClientError as exc:
                self._stop(str(exc), len(records) + unsent)
            if self._overloaded(answer, attempt):
                refused.append((records, lines, attempt))
                continue
            self._accept(answer, records, lines, unsent)
            overtaken = len(refused)
        self.tally.out_of_order += sum(len(r) for r, _, _ in refused[:overtaken])
        outer = self.held_back   # a re-sent batch refused again comes back here, nested
        for k, (records, lines, attempt) in enumerate(refused):
            self.held_back = outer + sum(len(r) for r, _, _ in refused[k + 1:])
            time.sleep(min(2.0, 0.05 * 2 ** attempt))  # back off, then re-send
            self.tally.resent += 1
            self._request(records, lines, attempt + 1)
            self.collect_one()
        self.held_back = outer

    def _stop(self, reason: str, lost: int) -> NoReturn:
        """Stop sending: batches sent before may have been committed, so count the answers that
        came back for them first."""
        raise Halt(self.label + reason, lost + self.abandon())

    def _count(self, answer: dict[str, Any], lines: list[int]) -> None:
        self.tally.accepted += answer["accepted"]
        self.tally.rejected += len(answer["rejected"])
        for item in answer["rejected"]:
            self.reject(lines[item["index"]], item["message"])
        hidden = answer.get("rejected_total", 0) - len(answer["rejected"])
        self.tally.rejected += max(0, hidden)
