"""Reading records from files: long CSV, wide CSV and JSON lines, with per-line problems."""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from adaptd.datafile import DataReader, FormatError, parse_time_cell

JAN_1_2024 = 1_704_067_200.0
HOUR = 3600.0
DAY = 24 * HOUR
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def read(text: str) -> tuple[DataReader, list[tuple[int, Any]]]:
    reader = DataReader(io.StringIO(text))
    return reader, list(reader)


def records(items: list[tuple[int, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(n, item) for n, item in items if isinstance(item, dict)]


def problems(items: list[tuple[int, Any]]) -> list[tuple[int, str]]:
    return [(n, item) for n, item in items if isinstance(item, str)]


# -- long CSV ---------------------------------------------------------------------------------

@pytest.mark.parametrize("header, row", [
    ("series,ts,value", "a,2024-01-01T00:00:00Z,1.5"),
    ("value,series,ts", "1.5,a,2024-01-01T00:00:00Z"),
    ("ts,value,series", "2024-01-01T00:00:00Z,1.5,a"),
    ("Series,TS,Value", "a,2024-01-01T00:00:00Z,1.5"),
    (" series , ts , value ", " a , 2024-01-01T00:00:00Z , 1.5 "),
    ("series,ts,value", "a,1704067200,1.5"),
    ("series,ts,value", "a,1704067200.0,1.5e0"),
])
def test_long_csv_in_any_column_order(header: str, row: str) -> None:
    reader, items = read(f"{header}\n{row}\n")
    assert reader.format == "long"
    assert items == [(2, {"series": "a", "ts": JAN_1_2024, "value": 1.5})]


def test_long_csv_reports_bad_lines_and_goes_on() -> None:
    text = ("series,ts,value\n"
            "a,2024-01-01T00:00:00,1\n"        # 2 ok
            "a,not-a-time,2\n"                 # 3 bad time
            "a,2024-01-01T02:00:00,x\n"        # 4 bad value
            "a,2024-01-01T03:00:00\n"          # 5 too few cells
            "a,2024-01-01T04:00:00,4,extra\n"  # 6 too many cells
            "a,2024-01-01T05:00:00,nan\n"      # 7 not finite
            "a,2024-01-01T06:00:00,-inf\n"     # 8 not finite
            "\"b,c\",2024-01-01T07:00:00,7\n")  # 9 ok: a quoted comma
    reader, items = read(text)
    assert records(items) == [(2, {"series": "a", "ts": JAN_1_2024, "value": 1.0}),
                              (9, {"series": "b,c", "ts": JAN_1_2024 + 7 * HOUR, "value": 7.0})]
    bad = problems(items)
    assert [n for n, _ in bad] == [3, 4, 5, 6, 7, 8]
    assert "'not-a-time' is not epoch seconds, ISO-8601 or M/D/YYYY H:MM" in bad[0][1]
    assert "'x' is not a number" in bad[1][1]
    assert bad[2][1] == "expected 3 cells (series, ts, value), got 2"
    assert bad[3][1] == "expected 3 cells (series, ts, value), got 4"
    assert "'nan' is not a finite number" in bad[4][1]
    assert "'-inf' is not a finite number" in bad[5][1]


def test_long_csv_passes_series_names_on_for_validation() -> None:
    # The reader does not judge names; the record validator (and the daemon) does.
    _, items = read("series,ts,value\n,0,1\n")
    assert items == [(2, {"series": "", "ts": 0.0, "value": 1.0})]


# -- wide CSV ---------------------------------------------------------------------------------

def test_wide_csv_skips_empty_cells() -> None:
    text = ("date,a,b,c\n"
            "2024-01-01 00:00:00,1,,3\n"
            "2024-01-01 01:00:00, ,2,\n")
    reader, items = read(text)
    assert reader.format == "wide"
    assert reader.columns == ["a", "b", "c"]
    assert reader.skipped == 3
    assert items == [
        (2, {"series": "a", "ts": JAN_1_2024, "value": 1.0}),
        (2, {"series": "c", "ts": JAN_1_2024, "value": 3.0}),
        (3, {"series": "b", "ts": JAN_1_2024 + HOUR, "value": 2.0}),
    ]


def test_wide_csv_reports_bad_cells_and_lines_and_goes_on() -> None:
    text = ("date,a,b\n"
            "2024-01-01 00:00:00,1,x\n"     # 2: b bad, a fine
            "garbage,1,2\n"                 # 3: bad time: nothing from this line
            "2024-01-01 02:00:00,1\n"       # 4: too few cells
            "2024-01-01 03:00:00,1,2,3\n"   # 5: too many cells
            "2024-01-01 04:00:00,inf,NaN\n"  # 6: both not finite
            "2024-01-01 05:00:00,5,6\n")    # 7: fine
    _, items = read(text)
    assert records(items) == [
        (2, {"series": "a", "ts": JAN_1_2024, "value": 1.0}),
        (7, {"series": "a", "ts": JAN_1_2024 + 5 * HOUR, "value": 5.0}),
        (7, {"series": "b", "ts": JAN_1_2024 + 5 * HOUR, "value": 6.0}),
    ]
    assert problems(items) == [
        (2, "column 'b': 'x' is not a number"),
        (3, "time 'garbage' is not epoch seconds, ISO-8601 or M/D/YYYY H:MM"),
        (4, "expected 3 cells, got 2"),
        (5, "expected 3 cells, got 4"),
        (6, "column 'a': 'inf' is not a finite number"),
        (6, "column 'b': 'NaN' is not a finite number"),
    ]


@pytest.mark.parametrize("header, why", [
    ("date,a,a", "column 'a' appears twice"),
    ("date,a,,b", "empty name"),
    ("date,a,b,", "empty name"),
    ("date", "at least one series column"),
])
def test_bad_wide_headers_are_format_errors(header: str, why: str) -> None:
    with pytest.raises(FormatError, match=why):
        read(f"{header}\n2024-01-01,1,2\n")


def test_wide_csv_with_wth_style_timestamps() -> None:
    text = ("date,Visibility,DryBulbCelsius\n"
            "1/1/2010 0:00,10,-9\n"
            "1/1/2010 1:00,9.5,-9.5\n"
            "12/31/2010 23:00,10,1\n"
            "2/3/2010 4:05:06,1,1\n"
            "1/2/2010,1,1\n"
            "13/1/2010 0:00,1,1\n")
    _, items = read(text)
    jan_1_2010 = 1_262_304_000.0
    got = [(n, r["series"], r["ts"], r["value"]) for n, r in records(items)]
    assert got[:4] == [(2, "Visibility", jan_1_2010, 10.0), (2, "DryBulbCelsius", jan_1_2010, -9.0),
                       (3, "Visibility", jan_1_2010 + HOUR, 9.5), (3, "DryBulbCelsius", jan_1_2010 + HOUR, -9.5)]
    assert got[4][2] == 1_293_836_400.0          # 2010-12-31T23:00:00Z
    assert got[6][2] == 1_265_169_906.0          # 2010-02-03T04:05:06Z
    assert got[8][2] == jan_1_2010 + 24 * HOUR   # a date alone: midnight UTC
    assert [n for n, _ in problems(items)] == [7]  # there is no 13th month


@pytest.mark.parametrize("cell, expected", [
    ("0", 0.0),
    ("1704067200", JAN_1_2024),
    ("1704067200.5", JAN_1_2024 + 0.5),
    ("2024-01-01T00:00:00Z", JAN_1_2024),
    ("2024-01-01 01:00:00+01:00", JAN_1_2024),
    (" 2024-01-01 ", JAN_1_2024),
    ("1/1/2024 0:00", JAN_1_2024),
    ("01/01/2024 00:00:00", JAN_1_2024),
    ("20240101T0100", JAN_1_2024 + HOUR),   # ISO basic, as the socket reads it
])
def test_time_cells(cell: str, expected: float) -> None:
    assert parse_time_cell(cell) == expected


def test_eight_digit_times_are_read_one_way_per_column() -> None:
    """YYYYMMDD or epoch seconds / a counter: the column's first time decides."""
    dates = "ts,a\n20240101,1\n20240102,2\n20240230,3\n2024-01-04,4\n"
    items = list(DataReader(io.StringIO(dates)))
    assert [r["ts"] for _, r in items if isinstance(r, dict)] == [JAN_1_2024, JAN_1_2024 + DAY, JAN_1_2024 + 3 * DAY]
    assert problems(items) == [(4, "time '20240230' is not a date YYYYMMDD (as the column's first time is)")]

    counter = "series,ts,value\nc,0,1\nc,10000120,2\nc,99999999,3\n"   # 10000120 would be a date
    assert [r["ts"] for _, r in DataReader(io.StringIO(counter))] == [0.0, 10000120.0, 99999999.0]
    assert [r["ts"] for _, r in DataReader(io.StringIO("series,ts,value\nd,19700102,1\n"))] == [DAY]


@pytest.mark.parametrize("cell", ["", "nan", "inf", "-inf", "1e400", "1e20", "tomorrow", "2024-02-30",
                                  "1/1/99999 0:00"])
def test_bad_time_cells(cell: str) -> None:
    from adaptd.records import Rejected

    with pytest.raises(Rejected, match="is not epoch seconds, ISO-8601 or M/D/YYYY H:MM"):
        parse_time_cell(cell)


# -- JSON lines -------------------------------------------------------------------------------

def test_jsonl_records_and_bad_lines() -> None:
    text = ('{"series": "a", "ts": 0, "value": 1}\n'
            "\n"
            '{"series": "a", "ts": "2024-01-01T00:00:00Z", "value": NaN}\n'
            "{not json\n"
            "[1, 2, 3]\n"
            '"a string"\n'
            '{"series": "b", "ts": 1, "value": 2}')  # no final newline
    reader, items = read(text)
    assert reader.format == "jsonl"
    assert [n for n, _ in records(items)] == [1, 3, 7]
    assert items[0] == (1, {"series": "a", "ts": 0, "value": 1})
    assert items[-1] == (7, {"series": "b", "ts": 1, "value": 2})
    # Validation is the caller's (it is shared with the socket): NaN is passed on, not dropped.
    assert items[1][1]["value"] != items[1][1]["value"]
    assert problems(items) == [(4, "not a valid JSON object"), (5, "not a JSON object"), (6, "not a JSON object")]


def test_deeply_nested_json_is_a_bad_line_not_a_crash() -> None:
    text = '{"series": "a", "ts": 0, "value": 1}\n' + '{"x": ' * 100_000 + "\n"
    _, items = read(text)
    assert items[1] == (2, "not a valid JSON object")


# -- layout -----------------------------------------------------------------------------------

def test_blank_lines_are_skipped_and_line_numbers_stay_true() -> None:
    text = "\n  \nseries,ts,value\n\na,0,1\n   \n,,\na,1,2\n\n"
    reader, items = read(text)
    assert reader.format == "long"
    assert problems(items) == []
    assert [(n, r["value"]) for n, r in records(items)] == [(5, 1.0), (8, 2.0)]


@pytest.mark.parametrize("text", ["", "\n", "\n\n   \n"])
def test_empty_files(text: str) -> None:
    reader, items = read(text)
    assert items == []
    assert reader.format == "empty"


@pytest.mark.parametrize("header, fmt", [("series,ts,value\n", "long"), ("date,a,b\n", "wide")])
def test_a_header_alone_gives_no_records(header: str, fmt: str) -> None:
    reader, items = read(header)
    assert items == [] and reader.format == fmt


def test_windows_line_endings() -> None:
    _, items = read("date,a\r\n2024-01-01,1\r\n\r\n2024-01-02,2\r\n")
    assert items == [(2, {"series": "a", "ts": JAN_1_2024, "value": 1.0}),
                     (4, {"series": "a", "ts": JAN_1_2024 + 24 * HOUR, "value": 2.0})]


@pytest.mark.parametrize("text, fmt", [
    ("\ufeffseries,ts,value\na,0,1\n", "long"),
    ('\ufeff{"series": "a", "ts": 0, "value": 1}\n', "jsonl"),
    ("\ufeffdate,a\n1970-01-01,1\n", "wide"),
])
def test_a_byte_order_mark_is_ignored(text: str, fmt: str) -> None:
    # Spreadsheets save "CSV UTF-8" with a BOM; the file must read the same as without one.
    reader, items = read(text)
    assert reader.format == fmt
    assert len(items) == 1 and isinstance(items[0][1], dict)
    assert items[0][1]["series"] == "a" and float(items[0][1]["value"]) == 1.0


# -- the real data ----------------------------------------------------------------------------

def real_file(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"real data not present: {path} (see ../shared/data/SOURCES.md)")
    return path


@pytest.mark.parametrize("parts, columns", [
    (("ett", "ETTh2.csv"), ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]),
    (("wth", "WTH.csv"), None),
])
def test_real_files_read_cleanly(parts: tuple[str, ...], columns: list[str] | None) -> None:
    lines = 2001
    with real_file(*parts).open(encoding="utf-8", newline="") as f:
        head = "".join(itertools.islice(f, lines))
    reader, items = read(head)
    assert reader.format == "wide"
    if columns is not None:
        assert reader.columns == columns
    assert problems(items) == []
    got = records(items)
    assert len(got) + reader.skipped == (lines - 1) * len(reader.columns)
    times = sorted({r["ts"] for _, r in got})
    assert len(times) == lines - 1
    assert all(b - a == HOUR for a, b in zip(times, times[1:]))  # hourly, no gaps


@pytest.mark.parametrize("cell", ["1" * 200_000, '"' + "1" * 140_000 + '\n\n"'])
def test_a_cell_over_128_kib_is_reported_by_its_line_and_the_read_goes_on(cell: str) -> None:
    """It stopped the whole read with a traceback; quoted, csv's own limit then swallowed the
    lines after it."""
    text = "date,a\n2024-01-01," + cell + "\n2024-01-02,2\n2024-01-03,3\n"
    items = list(DataReader(io.StringIO(text)))
    assert items[0][0] == 2 and items[0][1].startswith("a cell of ") and "(at most 131072)" in items[0][1]
    assert [(n, r["value"]) for n, r in items[1:]] == [(3 + cell.count("\n"), 2.0), (4 + cell.count("\n"), 3.0)]


def test_line_numbers_count_the_lines_a_quoted_cell_spans() -> None:
    text = 'series,ts,value\n"a\nb",1704067200,1\nc,1704070800,x\n'
    assert problems(list(DataReader(io.StringIO(text)))) == [(4, "column 'value': 'x' is not a number")]


@pytest.mark.parametrize("text, expected", [
    ("1704067200,1,2\n1704070800,3,4\n", "line 1 looks like data (1704067200,1,2), not a header"),
    ("2024-01-01 00:00,1.5\n2024-01-01 01:00,2\n", "line 1 looks like data"),
    ("series,ts,value\ra,1704067200,1\r", "line 1 holds a carriage return"),
    ("2024-01-01,1,1\n2024-01-02,2,2\n", "line 1 looks like data"),   # (not "column '1' appears twice")
    ("date," + "x" * 300 + "\n2024-01-01,1\n", "line 1, column 2 of the header: series name must be 1 to"),
    ("series,ts,value,unit\na,1704067200,1,kW\n", "a long CSV has exactly the columns series,ts,value; this "
                                                   "header also has 'unit'"),
])
def test_a_file_read_wrong_as_a_whole_is_refused(text: str, expected: str) -> None:
    """No header (its first row would be taken for one, and lost), or old Mac line ends."""
    with pytest.raises(FormatError, match=re.escape(expected)):
        list(DataReader(io.StringIO(text)))


def test_a_date_written_as_a_number_in_a_column_of_dates_is_refused_not_read_as_1970() -> None:
    text = "date,a\n2024-01-01,1\n20240102,2\n2024,3\n1704088800,4\n1/5/2024 0:00,5\n"
    items = list(DataReader(io.StringIO(text)))
    assert [(n, r["ts"]) for n, r in items if isinstance(r, dict)] == [
        (2, JAN_1_2024), (5, 1704088800.0), (6, JAN_1_2024 + 4 * DAY)]   # epoch seconds of 2024 may mix in
    assert [n for n, _ in problems(items)] == [3, 4]
    assert "time '20240102' would be epoch seconds in 1970, in a column of dates" in problems(items)[0][1]
