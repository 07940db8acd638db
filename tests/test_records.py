"""Record validation shared by every input path: series names, timestamps, values."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptd.records import (MAX_TS, MIN_TS, Observation, Rejected, check_series, check_value, format_ts,
                            parse_ts, validate_batch, validate_record)

JAN_1_2024 = 1_704_067_200.0


# -- series names -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "load", "x" * 200, "température", "負荷/東京", "🌡 sensor 3",
                                  "with space", " padded ", "a,b;c=\"d\"", "ünïcödé-ß"])
def test_good_series_names(name: str) -> None:
    assert check_series(name) == name


@pytest.mark.parametrize("name, why", [
    ("", "1 to 200 characters, got 0"),
    ("x" * 201, "1 to 200 characters, got 201"),
    ("line\nbreak", "printable"),
    ("tab\there", "printable"),
    ("nul\x00", "printable"),
    ("bell\x07", "printable"),
    ("del\x7f", "printable"),
    ("esc\x1b[31m", "printable"),
    ("zero\u200bwidth", "printable"),
    ("line\u2028sep", "printable"),
])
def test_bad_series_names(name: str, why: str) -> None:
    with pytest.raises(Rejected, match=why) as info:
        check_series(name)
    assert info.value.field == "series"


@pytest.mark.parametrize("raw", [None, 1, 1.5, b"bytes", ["a"], True])
def test_series_must_be_a_string(raw: Any) -> None:
    with pytest.raises(Rejected, match="series must be a string") as info:
        check_series(raw)
    assert info.value.field == "series"


def test_length_counts_characters_not_bytes() -> None:
    assert check_series("é" * 200) == "é" * 200  # 400 bytes of UTF-8, 200 characters


# -- timestamps -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (0, 0.0),
    (JAN_1_2024, JAN_1_2024),
    (1_704_067_200, JAN_1_2024),
    (1.25, 1.25),
    (-86_400, -86_400.0),
    ("2024-01-01T00:00:00Z", JAN_1_2024),
    ("2024-01-01T00:00:00+00:00", JAN_1_2024),
    ("2024-01-01T01:00:00+01:00", JAN_1_2024),
    ("2023-12-31T18:30:00-05:30", JAN_1_2024),
    ("2024-01-01T00:00:00", JAN_1_2024),            # naive means UTC, not local time
    ("2024-01-01 00:00:00", JAN_1_2024),
    ("2024-01-01", JAN_1_2024),
    ("2024-01-01T00:00:00.250Z", JAN_1_2024 + 0.25),
    ("2024-01-01t00:00:00", JAN_1_2024),            # any one character separates date and time
    ("2024-01-01_00:00:00", JAN_1_2024),
    ("  2024-01-01T00:00:00Z \n", JAN_1_2024),
    ("1970-01-01T00:00:00Z", 0.0),
    ("0001-01-01T00:00:00", MIN_TS),
    ("9999-12-31T23:59:59Z", MAX_TS),
    (MIN_TS, MIN_TS),
    (MAX_TS, MAX_TS),
])
def test_good_timestamps(raw: Any, expected: float) -> None:
    ts = parse_ts(raw)
    assert ts == expected
    assert isinstance(ts, float)


def test_naive_iso_is_utc_whatever_the_local_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_ts("2024-01-01T00:00:00") == JAN_1_2024
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("raw, why", [
    ("yesterday", "not an ISO-8601 timestamp"),
    ("", "not an ISO-8601 timestamp"),
    ("   ", "not an ISO-8601 timestamp"),
    ("2024-13-01", "not an ISO-8601 timestamp"),
    ("2024-02-30T00:00:00", "not an ISO-8601 timestamp"),
    ("2024-01-01T25:00:00", "not an ISO-8601 timestamp"),
    ("1704067200", "not an ISO-8601 timestamp"),    # epoch seconds must be a JSON number
    ("1/1/2010 0:00", "not an ISO-8601 timestamp"),  # only files accept the WTH form
    ("2024-01-01T00:00:00+25:00", "not an ISO-8601 timestamp"),
    ("2024-01-01T00:00:00z", "not an ISO-8601 timestamp"),   # UTC is a capital Z (README)
    ("2024-01-01T24:00:00", "not an ISO-8601 timestamp"),
    ("0001-01-01T00:00:00+01:00", "out of range"),   # parses, but is before year 1 in UTC
    ("9999-12-31T23:59:59-01:00", "out of range"),
    (float("nan"), "out of range"),
    (float("inf"), "out of range"),
    (float("-inf"), "out of range"),
    (MAX_TS + 1, "out of range"),
    (MIN_TS - 1, "out of range"),
    (10**20, "out of range"),
    (10**400, "out of range"),
    (-(10**400), "out of range"),
])
def test_bad_timestamps(raw: Any, why: str) -> None:
    with pytest.raises(Rejected, match=why) as info:
        parse_ts(raw)
    assert info.value.field == "ts"


@pytest.mark.parametrize("raw", [True, False, None, [2024], {"ts": 0}, b"2024-01-01"])
def test_timestamps_of_the_wrong_type(raw: Any) -> None:
    with pytest.raises(Rejected, match="ts must be epoch seconds or an ISO-8601 string") as info:
        parse_ts(raw)
    assert info.value.field == "ts"


def test_a_long_garbage_timestamp_is_cut_in_the_message() -> None:
    with pytest.raises(Rejected) as info:
        parse_ts("x" * 10_000)
    assert len(str(info.value)) < 120
    assert "..." in str(info.value)


@pytest.mark.parametrize("ts, text", [
    (JAN_1_2024, "2024-01-01T00:00:00Z"),
    (JAN_1_2024 + 0.5, "2024-01-01T00:00:00.500Z"),
    (0.0, "1970-01-01T00:00:00Z"),
    (MIN_TS, "0001-01-01T00:00:00Z"),
    (MAX_TS, "9999-12-31T23:59:59Z"),
])
def test_format_ts_round_trips(ts: float, text: str) -> None:
    assert format_ts(ts) == text
    assert parse_ts(text) == ts


# -- values -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (0, 0.0), (-3, -3.0), (1.5, 1.5), (-0.0, 0.0), (1e308, 1e308), (-1e308, -1e308),
    (10**300, 1e300), (5e-324, 5e-324),
])
def test_good_values(raw: Any, expected: float) -> None:
    value = check_value(raw)
    assert value == expected and isinstance(value, float)


@pytest.mark.parametrize("raw, why", [
    (float("nan"), "finite number, got nan"),
    (float("inf"), "finite number, got inf"),
    (float("-inf"), "finite number, got -inf"),
    (10**400, "too large"),
    (-(10**400), "too large"),
    (True, "got true"),
    (False, "got false"),
    ("1.5", "got a string"),
    ("nan", "got a string"),
    (None, "got null"),
    ([1.0], "got an array"),
])
def test_bad_values(raw: Any, why: str) -> None:
    with pytest.raises(Rejected, match=why) as info:
        check_value(raw)
    assert info.value.field == "value"


def test_a_timestamp_in_milliseconds_says_so() -> None:
    with pytest.raises(Rejected, match=r"out of range \(years 1 to 9999\); epoch seconds are wanted, not milliseconds"):
        parse_ts(JAN_1_2024 * 1000)
    with pytest.raises(Rejected, match=r"out of range \(years 1 to 9999\)$"):
        parse_ts(1e300)


# -- whole records ----------------------------------------------------------------------------

def test_a_good_record() -> None:
    assert validate_record({"series": "a", "ts": "2024-01-01T00:00:00Z", "value": 3, "extra": "ignored"}) \
        == Observation("a", JAN_1_2024, 3.0)


@pytest.mark.parametrize("raw, why, field", [
    ([], "record must be an object", "record"),
    ("a,0,1", "record must be an object", "record"),
    (None, "record must be an object", "record"),
    ({}, "missing series, ts, value", "record"),
    ({"series": "a", "value": 1}, "missing ts$", "record"),
    ({"series": "", "ts": 0, "value": 1}, "series name", "series"),
    ({"series": "a", "ts": True, "value": 1}, "ts must be", "ts"),
    ({"series": "a", "ts": 0, "value": None}, "value must be", "value"),
])
def test_bad_records_say_which_field(raw: Any, why: str, field: str) -> None:
    with pytest.raises(Rejected, match=why) as info:
        validate_record(raw)
    assert info.value.field == field


TRICKY: list[Any] = [
    {"series": "a", "ts": 0, "value": 1},
    {"series": "a", "ts": 1.5, "value": -2.5},
    {"series": "a", "ts": "2024-01-01T00:00:00Z", "value": 1},
    {"series": "a", "ts": True, "value": 1},
    {"series": "a", "ts": 0, "value": True},
    {"series": "a", "ts": 0, "value": float("nan")},
    {"series": "a", "ts": float("nan"), "value": 0},
    {"series": "a", "ts": 10**400, "value": 0},
    {"series": "a", "ts": 0, "value": 10**400},
    {"series": "a", "ts": MAX_TS + 1, "value": 0},
    {"series": "", "ts": 0, "value": 0},
    {"series": "x" * 201, "ts": 0, "value": 0},
    {"series": "bad\n", "ts": 0, "value": 0},
    {"series": 5, "ts": 0, "value": 0},
    {"series": "a", "value": 0},
    {"series": "a", "ts": 0, "value": "1"},
    {"series": "a", "ts": None, "value": 1},
    [1, 2, 3],
    "record",
    None,
    42,
]


def test_validate_batch_agrees_with_validate_record_and_keeps_indexes() -> None:
    accepted, rejected = validate_batch(TRICKY)
    expected_ok, expected_bad = [], []
    for i, raw in enumerate(TRICKY):
        try:
            expected_ok.append(validate_record(raw))
        except Rejected as exc:
            expected_bad.append((i, str(exc), exc.field))
    assert accepted == expected_ok
    assert [(i, str(exc), exc.field) for i, exc in rejected] == expected_bad
    assert [i for i, _ in rejected] == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]


scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**400), max_value=10**400)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
           | st.datetimes().map(lambda d: d.isoformat()))
records = st.one_of(
    st.fixed_dictionaries({"series": st.text(max_size=210) | scalars, "ts": scalars, "value": scalars}),
    st.dictionaries(st.sampled_from(["series", "ts", "value", "x"]), scalars),
    scalars,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(records, max_size=5))
def test_validate_batch_matches_validate_record_on_anything(batch: list[Any]) -> None:
    accepted, rejected = validate_batch(batch)
    bad = dict(rejected)
    assert len(accepted) + len(bad) == len(batch)
    good = iter(accepted)
    for i, raw in enumerate(batch):
        try:
            expected = validate_record(raw)
        except Rejected as exc:
            assert i in bad and str(bad[i]) == str(exc)
        else:
            got = next(good)
            assert got == expected and type(got) is Observation
            assert math.isfinite(got.value) and MIN_TS <= got.ts <= MAX_TS
