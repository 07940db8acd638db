"""`adaptd ingest`: stream a data file to the daemon in batches, with progress and a report.

With `[cluster] sockets`, every record goes to the member that owns its series, each member's
records in file order over a connection of their own (route.py; sender.py keeps a connection's
batches in flight); the progress bar and the report cover the whole file.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from .client import Client
from .config import Settings
from .datafile import DataReader
from .records import Rejected, validate_record
from .route import Batches, ClusterMismatch, Route
from .sender import Halt, Sender, Tally

SHOWN_REASONS = 5
CLUSTER_REFUSAL = "belongs to cluster member"   # in the daemon's reason for another member's record


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
    members: list[Tally] = field(default_factory=lambda: [Tally()])   # what each daemon answered
    refused: int = 0          # records rejected here, before sending (unreadable, invalid)
    skipped: int = 0
    reasons: list[tuple[int, str]] = field(default_factory=list)   # the first SHOWN_REASONS, by line
    seconds: float = 0.0

    @property
    def accepted(self) -> int:
        return sum(t.accepted for t in self.members)

    @property
    def rejected(self) -> int:
        return self.refused + sum(t.rejected for t in self.members)

    @property
    def resent(self) -> int:
        return sum(t.resent for t in self.members)

    @property
    def out_of_order(self) -> int:
        return sum(t.out_of_order for t in self.members)

    @property
    def ok(self) -> bool:
        return self.rejected == 0

    def reject(self, line: int, message: str) -> None:
        """A record rejected here, before sending."""
        self.refused += 1
        self.reason(line, message)

    def reason(self, line: int, message: str) -> None:
        """Keep why `line` was rejected if it is among the first lines rejected (daemons answer
        out of file order when there are several)."""
        if len(self.reasons) < SHOWN_REASONS or line < self.reasons[-1][0]:
            bisect.insort(self.reasons, (line, message), key=lambda reason: reason[0])
            del self.reasons[SHOWN_REASONS:]

    def summary(self) -> str:
        rate = self.accepted / self.seconds if self.seconds > 0 else 0.0
        text = f"accepted {self.accepted} records, rejected {self.rejected} ({self.format} input, " \
               f"{self.seconds:.1f}s, {rate:,.0f} records/s)"
        if self.skipped:
            text += f"; {self.skipped} empty cells skipped"
        if self.resent:
            text += f"; {self.resent} batches re-sent after `overloaded`"
        if len(self.members) > 1:
            text += "".join(f"\n  member {k} ({t.socket}): {_tally_text(t)}" for k, t in enumerate(self.members))
        if self.out_of_order:
            text += (f"\nnote: {self.out_of_order} records were stored after later lines of the file (the daemon "
                     "refused their batch as overloaded while the next ones were already sent); the models skip "
                     "a series' records older than its newest learnt one (they stay stored: "
                     "adaptd_records_late_total)")
        if len(self.members) == 1 and any(CLUSTER_REFUSAL in message for _, message in self.reasons):
            text += ("\nnote: the daemon is one member of a cluster; list every member's socket in [cluster] "
                     "sockets, in member order, and `adaptd ingest` sends each record to its member")
        if self.reasons:
            more = self.rejected - len(self.reasons)
            text += "\nfirst reasons:\n  " + "\n  ".join(f"line {line}: {why}" for line, why in self.reasons)
            if more > 0:
                text += f"\n  ... and {more} more"
        return text


def _tally_text(tally: Tally) -> str:
    text = f"accepted {tally.accepted}, rejected {tally.rejected}"
    if tally.resent:
        text += f", {tally.resent} batches re-sent"
    if tally.out_of_order:
        text += f", {tally.out_of_order} records out of order"
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


def upload(settings: Settings, path: str, batch: int = 1000, progress: bool = True) -> UploadReport:
    route = Route.of(settings)
    report = UploadReport(members=[Tally(str(socket)) for socket in route.sockets])
    started = time.perf_counter()
    raw, bar = _open(path, progress)
    reader = DataReader(_Utf8Lines(raw, bar.update if bar is not None else None))  # type: ignore[arg-type]
    try:
        with contextlib.ExitStack() as connections:
            senders = [Sender(client, tally, report.reason, route.label(k))
                       for k, (client, tally) in enumerate(zip(_connect(route, connections), report.members))]
            batches = Batches(route, batch, lambda k, records, lines: senders[k].send(records, lines))
            try:
                _send_all(reader, batches, senders, report)
            except Halt as exc:   # a refused batch, or a daemon went away part way: the others stop too
                lost = exc.lost + sum(sender.abandon() for sender in senders)
                raise Stopped(f"{exc}; stopped there. {report.accepted} records were acknowledged, "
                              f"{lost} sent were not", report, 1) from None
    finally:
        if bar is not None:
            bar.close()
        if path != "-":
            raw.close()
        report.format = reader.format
        report.skipped = reader.skipped
        report.seconds = time.perf_counter() - started
    return report


def _connect(route: Route, connections: contextlib.ExitStack) -> list[Client]:
    """A checked connection to every member's daemon, before any record is sent."""
    clients = []
    for member in range(route.members):
        try:
            client = route.connect(member)
        except ClusterMismatch as exc:
            raise ClusterMismatch(f"{exc}; no record was sent") from None
        connections.callback(client.close)
        clients.append(client)
    return clients


def _send_all(reader: DataReader, batches: Batches, senders: list[Sender], report: UploadReport) -> None:
    try:
        for line, item in reader:
            if isinstance(item, str):
                report.reject(line, item)
                continue
            # The daemon's own check, here: a JSON-lines NaN/Infinity could not even be sent
            # (protocol JSON has none).
            try:
                validate_record(item)
            except Rejected as exc:
                report.reject(line, str(exc))
                continue
            batches.add({key: item[key] for key in ("series", "ts", "value")}, line)
    except NotText as exc:
        # The lines before it are sent and acknowledged; nothing from it on.
        _finish(batches, senders)
        raise Stopped(f"{exc}: stopped there; the {report.accepted} records before it were "
                      "acknowledged", report, 2) from None
    _finish(batches, senders)


def _finish(batches: Batches, senders: list[Sender]) -> None:
    batches.flush()
    for sender in senders:
        sender.finish()
