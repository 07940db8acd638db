"""Reading records from files: long CSV (`series,ts,value`), wide CSV (a time column, then
one column per series, as in ETTh2.csv) and JSON lines. The format is detected.

Problems are reported per line, with the line number, and never stop the read:

>>> import io
>>> reader = DataReader(io.StringIO("date,a,b\\n2024-01-01 00:00,1,\\n2024-01-01 01:00,x,2\\n"))
>>> [item for item in reader]
[(2, {'series': 'a', 'ts': 1704067200.0, 'value': 1.0}), (3, "column 'a': 'x' is not a number"), \
(3, {'series': 'b', 'ts': 1704070800.0, 'value': 2.0})]
>>> reader.format, reader.skipped
('wide', 1)
"""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timezone
from typing import Iterator, TextIO

from .records import Rejected, check_series, parse_ts

LONG_COLUMNS = ("series", "ts", "value")
# Cells longer than this are refused by their line. The csv module's own limit (the same by
# default) raises mid-cell, and inside quotes its parser then swallows the lines that follow:
# so its limit is lifted and this one checked on whole rows instead.
MAX_CELL = 131_072
csv.field_size_limit(2**31 - 1)
# Besides epoch seconds and ISO-8601: the US month/day/year form used by WTH.csv.
EXTRA_TIME_FORMATS = ("%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y")

Item = tuple[int, "dict[str, Any] | str"]


class FormatError(ValueError):
    """The file as a whole cannot be read (e.g. a bad header); the message says why."""


def parse_time_cell(text: str, yyyymmdd: bool = False) -> float:
    """Epoch seconds, ISO-8601 (naive = UTC) or M/D/YYYY H:MM, as epoch seconds; with
    `yyyymmdd`, eight digits are the ISO basic date (`TimeColumn` decides which)."""
    text = text.strip()
    if yyyymmdd and _eight_digits(text):
        try:
            return parse_ts(text)
        except Rejected:
            raise Rejected(f"time {text!r} is not a date YYYYMMDD (as the column's first time is)", "ts") from None
    try:
        return parse_ts(float(text))
    except ValueError:
        pass
    try:
        return parse_ts(text)
    except Rejected:
        for fmt in EXTRA_TIME_FORMATS:
            try:
                return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()
            except ValueError:
                continue
    raise Rejected(f"time {text[:40]!r} is not epoch seconds, ISO-8601 or M/D/YYYY H:MM", "ts")


def _eight_digits(text: str) -> bool:
    return len(text) == 8 and text.isdigit()


class TimeColumn:
    """One file's time cells. Eight digits are either a date YYYYMMDD (`20240101`, as the socket
    reads that string) or epoch seconds of 1970-73 / a seconds counter: the column's first time
    decides for the whole column, so one file is never read both ways. In a column of dates
    (its first time ISO-8601, YYYYMMDD or M/D/YYYY), a plain number before 1973 (`20240102`
    after `2024-01-01`, or a year) is refused rather than read as epoch seconds of 1970; epoch
    seconds of later years may be mixed in, as the socket allows.

    >>> column = TimeColumn()
    >>> column.parse("20240101") == column.parse("2024-01-01")
    True
    >>> counter = TimeColumn()
    >>> counter.parse("0"), counter.parse("10000120")
    (0.0, 10000120.0)
    """

    def __init__(self) -> None:
        self.yyyymmdd: bool | None = None
        self.style: str | None = None
        self.first = ""

    def parse(self, text: str) -> float:
        cell = text.strip()
        if self.yyyymmdd is None:
            self.yyyymmdd = _eight_digits(cell) and _is_date(cell)
        seconds = parse_time_cell(text, self.yyyymmdd)
        style = _style(cell, self.yyyymmdd)
        if self.style is None:
            self.style, self.first = style, cell
        elif self.style != EPOCH and style == EPOCH and abs(seconds) < AMBIGUOUS_EPOCH:
            raise Rejected(f"time {cell[:40]!r} would be epoch seconds in {1970 + int(seconds // 31_557_600)}, "
                           f"in a column of dates ({self.first[:40]!r}): write it as a date", "ts")
        return seconds


EPOCH = "epoch seconds"
# Plain numbers below this (1973-03-03) in a column of dates are dates or years written
# otherwise, not times of 1970-73.
AMBIGUOUS_EPOCH = 1e8


def _style(cell: str, yyyymmdd: bool) -> str:
    """How a time cell that parsed is written (a date YYYYMMDD is ISO-8601's basic form)."""
    if yyyymmdd and _eight_digits(cell):
        return "ISO-8601"
    try:
        float(cell)
        return EPOCH
    except ValueError:
        return "M/D/YYYY" if "/" in cell else "ISO-8601"


def _is_date(text: str) -> bool:
    try:
        parse_ts(text)
    except Rejected:
        return False
    return True


def _looks_like_data(header: list[str]) -> bool:
    """A first line whose first cell is a time and every other one a number: a file without
    a header, whose first row would otherwise be taken for one (and lost)."""
    try:
        parse_time_cell(header[0])
        for cell in header[1:]:
            float(cell)
    except (Rejected, ValueError):
        return False
    return True


def parse_value_cell(text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise Rejected(f"column {column!r}: {text[:40]!r} is not a number", "value") from None
    if not math.isfinite(value):
        raise Rejected(f"column {column!r}: {text!r} is not a finite number", "value")
    return value


class DataReader:
    """Iterates (line number, record dict or problem message) over a text stream."""

    def __init__(self, stream: TextIO, keep_labels: bool = False):
        self.stream = stream
        self.keep_labels = keep_labels  # add each record's time as written, under "label"
        self.format = "unknown"
        self.skipped = 0  # empty cells of wide files: no observation, not an error
        self.times = TimeColumn()
        self.columns: list[str] = []

    def __iter__(self) -> Iterator[Item]:
        first = self.stream.readline().removeprefix("\ufeff")  # the BOM spreadsheet exports start with
        line_no = 1
        while first and not first.strip():
            first = self.stream.readline()
            line_no += 1
        if not first:
            self.format = "empty"
            return
        if "\r" in first.rstrip("\r\n"):
            raise FormatError(f"line {line_no} holds a carriage return (\\r) inside it: lines that end in \\r "
                              "alone (old Mac files) are not read; convert them to \\n line ends")
        if first.lstrip().startswith("{"):
            self.format = "jsonl"
            yield from self._jsonl(first, line_no)
            return
        header = [c.strip() for c in next(csv.reader([first]))]
        if [c.lower() for c in header] and sorted(c.lower() for c in header) == sorted(LONG_COLUMNS):
            self.format = "long"
            yield from self._long(header, line_no)
        elif set(LONG_COLUMNS) <= {c.lower() for c in header}:   # read as wide, every row would fail
            extra = [c for c in header if c.lower() not in LONG_COLUMNS]
            raise FormatError(f"line {line_no}: a long CSV has exactly the columns series,ts,value; this "
                              f"header also has {', '.join(map(repr, extra))[:80]}: remove them")
        else:
            self.format = "wide"
            yield from self._wide(header, line_no)

    def _jsonl(self, first: str, line_no: int) -> Iterator[Item]:
        line: str | None = first
        while line is not None:
            if line.strip():
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    yield line_no, "not a valid JSON object"
                else:
                    yield (line_no, record) if isinstance(record, dict) else (line_no, "not a JSON object")
            line = self.stream.readline() or None
            line_no += 1

    def _rows(self, line_no: int) -> Iterator[tuple[int, list[str] | str]]:
        """(line number, cells) of each non-blank row after line `line_no`, or (line number,
        problem) for a line the csv module cannot read (a stray carriage return) or with a cell
        over MAX_CELL characters: that line is reported and the read goes on. A row's number is its
        first physical line (a quoted cell may hold line breaks)."""
        reader = csv.reader(self.stream)
        while True:
            first = line_no + reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield first, f"not readable as CSV: {exc}"
                continue
            longest = max(map(len, row), default=0)
            if longest > MAX_CELL:
                yield first, f"a cell of {longest} characters (at most {MAX_CELL})"
            elif row and any(cell.strip() for cell in row):
                yield first, row

    def _long(self, header: list[str], line_no: int) -> Iterator[Item]:
        where = {name.lower(): i for i, name in enumerate(header)}
        for n, row in self._rows(line_no):
            if isinstance(row, str):
                yield n, row
                continue
            if len(row) != 3:
                yield n, f"expected 3 cells (series, ts, value), got {len(row)}"
                continue
            try:
                record = {"series": row[where["series"]].strip(), "ts": self.times.parse(row[where["ts"]]),
                          "value": parse_value_cell(row[where["value"]].strip(), "value")}
            except Rejected as exc:
                yield n, str(exc)
                continue
            if self.keep_labels:
                record["label"] = row[where["ts"]].strip()
            yield n, record

    def _wide(self, header: list[str], line_no: int) -> Iterator[Item]:
        names = header[1:]
        if not names:
            raise FormatError("a wide CSV needs a time column and at least one series column")
        if _looks_like_data(header):
            raise FormatError(f"line {line_no} looks like data ({','.join(header)[:60]}), not a header: a wide "
                              "CSV needs a first line naming its columns, e.g. date,series1,series2")
        seen: set[str] = set()
        for k, name in enumerate(names, start=2):
            if not name:
                raise FormatError("a series column has an empty name in the header")
            if name in seen:
                raise FormatError(f"column {name!r} appears twice in the header")
            try:
                check_series(name)
            except Rejected as exc:   # named here, once, not on every row of that column
                raise FormatError(f"line {line_no}, column {k} of the header: {exc}") from None
            seen.add(name)
        self.columns = names
        for n, row in self._rows(line_no):
            if isinstance(row, str):
                yield n, row
                continue
            if len(row) != len(header):
                yield n, f"expected {len(header)} cells, got {len(row)}"
                continue
            try:
                ts = self.times.parse(row[0])
            except Rejected as exc:
                yield n, str(exc)
                continue
            for name, cell in zip(names, row[1:]):
                cell = cell.strip()
                if not cell:
                    self.skipped += 1
                    continue
                try:
                    record = {"series": name, "ts": ts, "value": parse_value_cell(cell, name)}
                except Rejected as exc:
                    yield n, str(exc)
                    continue
                if self.keep_labels:
                    record["label"] = row[0].strip()
                yield n, record
