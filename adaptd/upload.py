"""`adaptd ingest`: stream a data file to the daemon in batches, with progress and a report."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NoReturn

from .client import Client, ClientError
from .config import Settings
from .datafile import DataReader
from .records import Rejected, validate_record

IN_FLIGHT = 4          # batches sent ahead of their answers, to keep the daemon busy
CLEAN_ACKS = 8         # after an `overloaded`, batches acknowledged one at a time before IN_FLIGHT again
SHOWN_REASONS = 5
OVERLOAD_RETRIES = 50


class NotText(ValueError):
    """The file stops being UTF-8 text part way; the message says where."""


class Stopped(Exception):
    """The upload stopped part way (bytes that are not text, a batch the daemon refused); the
    message says why and what was stored, `report` what was acknowledged and rejected until then."""

    def __init__(self, message: str, report: "UploadReport", exit_code: int):
        super().__init__(message)
        self.report = report
        self.exit_code = exit_code


@dataclass
class UploadReport:
    format: str = "unknown"
    accepted: int = 0
    rejected: int = 0
    skipped: int = 0
    resent: int = 0           # batches re-sent after the daemon answered `overloaded`
    out_of_order: int = 0     # acknowledged after records that follow them in the file
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.rejected == 0

    def reject(self, line: int, message: str) -> None:
        self.rejected += 1
        if len(self.reasons) < SHOWN_REASONS:
            self.reasons.append(f"line {line}: {message}")

    def summary(self) -> str:
        rate = self.accepted / self.seconds if self.seconds > 0 else 0.0
        text = f"accepted {self.accepted} records, rejected {self.rejected} ({self.format} input, " \
               f"{self.seconds:.1f}s, {rate:,.0f} records/s)"
        if self.skipped:
            text += f"; {self.skipped} empty cells skipped"
        if self.resent:
            text += f"; {self.resent} batches re-sent after `overloaded`"
        if self.out_of_order:
            text += (f"\nnote: {self.out_of_order} records were stored after later lines of the file (the daemon "
                     "refused their batch as overloaded while the next ones were already sent); the models skip "
                     "a series' records older than its newest learnt one (they stay stored: "
                     "adaptd_records_late_total)")
        if self.reasons:
            more = self.rejected - len(self.reasons)
            text += "\nfirst reasons:\n  " + "\n  ".join(self.reasons)
            if more > 0:
                text += f"\n  ... and {more} more"
        return text


def _open(path: str, progress: bool) -> tuple[BinaryIO, Any]:
    if path == "-":
        return sys.stdin.buffer, None
    raw: BinaryIO = open(path, "rb")
    if not progress:
        return raw, None
    from tqdm import tqdm

    bar = tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc=os.path.basename(path),
               disable=None, leave=False)
    return raw, bar


class _Utf8Lines:
    """Text lines of a byte stream, decoded one line at a time: a line that is not UTF-8 is
    named exactly (a decoder reading ahead in blocks fails up to a block before it)."""

    def __init__(self, raw: BinaryIO, on_read: Any = None):
        self.raw, self.on_read, self.line = raw, on_read, 0

    def readline(self) -> str:
        data = self.raw.readline()
        if self.on_read is not None:
            self.on_read(len(data))
        if not data:
            return ""
        self.line += 1
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise NotText(f"line {self.line} is not UTF-8 text") from None

    def __iter__(self) -> "_Utf8Lines":
        return self

    def __next__(self) -> str:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class _Sender:
    """Keeps up to IN_FLIGHT batches outstanding; maps rejected indices back to line numbers.

    Answers come back in request order. A batch refused as `overloaded` is re-sent, after a
    pause, before anything else: the batches already sent behind it are answered first (the
    daemon refuses those too, protocol.Conversation; any it stored anyway is counted in the
    report as out of order), then one batch at a time is in flight until CLEAN_ACKS in a row
    are acknowledged.
    """

    def __init__(self, client: Client, report: UploadReport):
        self.client = client
        self.report = report
        self.in_flight = IN_FLIGHT
        self.clean = 0       # acknowledgements in a row since the last `overloaded`
        self.held_back = 0   # records of refused batches waiting to be re-sent
        self.waiting: deque[tuple[list[dict[str, Any]], list[int], int]] = deque()

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

    def _resend_in_order(self, refused: list[tuple[list[dict[str, Any]], list[int], int]]) -> None:
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
        self.report.out_of_order += sum(len(r) for r, _, _ in refused[:overtaken])
        outer = self.held_back   # a re-sent batch refused again comes back here, nested
        for k, (records, lines, attempt) in enumerate(refused):
            self.held_back = outer + sum(len(r) for r, _, _ in refused[k + 1:])
            time.sleep(min(2.0, 0.05 * 2 ** attempt))  # back off, then re-send
            self.report.resent += 1
            self._request(records, lines, attempt + 1)
            self.collect_one()
        self.held_back = outer

    def _stop(self, reason: str, lost: int) -> NoReturn:
        """Stop the upload: batches sent before may have been committed, so count the answers
        that came back for them first."""
        lost += self.held_back
        while self.waiting:
            later, lines, _attempt = self.waiting.popleft()
            try:
                reply = self.client.read_response()
            except ClientError:
                reply = {}
            if reply.get("ok"):
                self._count(reply, lines)
            else:
                lost += len(later)
        raise ClientError(f"{reason}; stopped there. {self.report.accepted} records were acknowledged, "
                          f"{lost} sent were not")

    def _count(self, answer: dict[str, Any], lines: list[int]) -> None:
        self.report.accepted += answer["accepted"]
        for item in answer["rejected"]:
            self.report.reject(lines[item["index"]], item["message"])
        hidden = answer.get("rejected_total", 0) - len(answer["rejected"])
        self.report.rejected += max(0, hidden)


def upload(settings: Settings, path: str, batch: int = 1000, progress: bool = True) -> UploadReport:
    report = UploadReport()
    started = time.perf_counter()
    raw, bar = _open(path, progress)
    reader = DataReader(_Utf8Lines(raw, bar.update if bar is not None else None))  # type: ignore[arg-type]
    try:
        with Client(settings.socket_path()) as client:
            try:
                _send_all(reader, _Sender(client, report), batch)
            except ClientError as exc:   # a refused batch, or the daemon went away part way
                raise Stopped(str(exc), report, 1) from None
    finally:
        if bar is not None:
            bar.close()
        if path != "-":
            raw.close()
        report.format = reader.format
        report.skipped = reader.skipped
        report.seconds = time.perf_counter() - started
    return report


def _send_all(reader: DataReader, sender: _Sender, batch: int) -> None:
    report = sender.report
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    try:
        for line, item in reader:
            if isinstance(item, str):
                report.reject(line, item)
                continue
            # The daemon's own check, here: a JSON-lines NaN/Infinity could not even be sent
            # (protocol JSON has none), and reasons stay in line order.
            try:
                validate_record(item)
            except Rejected as exc:
                report.reject(line, str(exc))
                continue
            records.append({key: item[key] for key in ("series", "ts", "value")})
            lines.append(line)
            if len(records) >= batch:
                sender.send(records, lines)
                records, lines = [], []
    except NotText as exc:
        # The lines before it are sent and acknowledged; nothing from it on.
        if records:
            sender.send(records, lines)
        sender.finish()
        raise Stopped(f"{exc}: stopped there; the {report.accepted} records before it were "
                      "acknowledged", report, 2) from None
    if records:
        sender.send(records, lines)
    sender.finish()
