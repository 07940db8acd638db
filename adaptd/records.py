"""Observations and the validation every input path shares.

>>> validate_record({"series": "load", "ts": "2024-01-01T00:00:00", "value": 3})
Observation(series='load', ts=1704067200.0, value=3.0)
>>> validate_record({"series": "load", "ts": 0, "value": float("nan")})
Traceback (most recent call last):
...
adaptd.records.Rejected: value must be a finite number, got nan
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any, Callable, NamedTuple

MAX_SERIES_NAME = 200
# datetime's own range (years 1..9999), so every accepted ts can be printed as a date.
MIN_TS = -62_135_596_800.0
MAX_TS = 253_402_300_799.0


class Observation(NamedTuple):
    series: str
    ts: float
    value: float


class Rejected(ValueError):
    """A record that cannot be stored; the message says why, `field` which part was wrong."""

    def __init__(self, message: str, field: str = "record"):
        super().__init__(message)
        self.field = field


def json_kind(raw: Any) -> str:
    """What a client sent, in JSON's words (messages name these, not Python's types).

    >>> json_kind(None), json_kind(True), json_kind("3"), json_kind([1]), json_kind({})
    ('null', 'true', 'a string', 'an array', 'an object')
    """
    if raw is None or isinstance(raw, bool):
        return json.dumps(raw)
    for kinds, name in (((int, float), "a number"), (str, "a string"), ((list, tuple), "an array"), (dict, "an object")):
        if isinstance(raw, kinds):
            return name
    return type(raw).__name__


def parse_ts(raw: Any) -> float:
    """Unix epoch seconds from a number or an ISO-8601 string (naive means UTC)."""
    if isinstance(raw, bool):
        raise Rejected(f"ts must be epoch seconds or an ISO-8601 string, got {json_kind(raw)}", "ts")
    if isinstance(raw, (int, float)):
        try:
            ts = float(raw)
        except OverflowError:
            raise Rejected("ts is out of range", "ts") from None
    elif isinstance(raw, str):
        ts = _parse_iso(raw)
    else:
        raise Rejected(f"ts must be epoch seconds or an ISO-8601 string, got {json_kind(raw)}", "ts")
    if not math.isfinite(ts) or not MIN_TS <= ts <= MAX_TS:
        hint = "; epoch seconds are wanted, not milliseconds" if MIN_TS <= ts / 1000 <= MAX_TS else ""
        raise Rejected(f"ts {raw!r} is out of range (years 1 to 9999){hint}", "ts")
    return ts


def _parse_iso(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise Rejected(f"ts {shown!r} is not an ISO-8601 timestamp", "ts") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def format_ts(ts: float) -> str:
    """ISO-8601 in UTC, seconds resolution unless the timestamp has a fraction.

    Stored timestamps are always dates, but a forecast target past the newest one may lie beyond
    9999-12-31 (datetime's range); those are written as epoch seconds rather than failing.

    >>> format_ts(1704067200.0), format_ts(0.25), format_ts(253402304399.0)
    ('2024-01-01T00:00:00Z', '1970-01-01T00:00:00.250Z', '253402304399')
    """
    try:
        moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        return str(int(ts)) if math.isfinite(ts) and ts == int(ts) else repr(ts)
    spec = "seconds" if ts == int(ts) else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def check_series(raw: Any) -> str:
    if not isinstance(raw, str):
        raise Rejected(f"series must be a string, got {json_kind(raw)}", "series")
    if not 1 <= len(raw) <= MAX_SERIES_NAME:
        raise Rejected(f"series name must be 1 to {MAX_SERIES_NAME} characters, got {len(raw)}", "series")
    if not raw.isprintable():
        at, char = next((i, c) for i, c in enumerate(raw) if not c.isprintable())
        raise Rejected(f"series name must contain only printable characters, got U+{ord(char):04X} at "
                       f"character {at + 1}", "series")
    return raw


def check_value(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise Rejected(f"value must be a finite number, got {json_kind(raw)}", "value")
    try:
        value = float(raw)
    except OverflowError:
        raise Rejected("value must be a finite number, got an integer too large for a float", "value") from None
    if not math.isfinite(value):
        raise Rejected(f"value must be a finite number, got {value}", "value")
    return value


def validate_record(raw: Any) -> Observation:
    if not isinstance(raw, dict):
        raise Rejected(f"record must be an object with series, ts and value, got {json_kind(raw)}")
    missing = [key for key in ("series", "ts", "value") if key not in raw]
    if missing:
        raise Rejected(f"record is missing {', '.join(missing)}")
    return Observation(check_series(raw["series"]), parse_ts(raw["ts"]), check_value(raw["value"]))


_FAST_TYPES = (int, float)  # exact types: bool (a subclass of int) takes the slow path and is refused


def validate_batch(records: list[Any], foreign: Callable[[str], str | None] | None = None
                   ) -> tuple[list[Observation], list[tuple[int, Rejected]]]:
    """Validate many records: (accepted observations, (index, reason) of the rejected).
    `foreign`: why a series is not this daemon's to store, or None (cluster.Membership.refusal).

    The loop inlines the checks for well-formed records (the hot path of every ingest);
    anything unusual goes through `validate_record`, which decides and explains.
    """
    if foreign is not None:
        return _owned(*validate_batch(records), records, foreign)
    accepted: list[Observation] = []
    rejected: list[tuple[int, Rejected]] = []
    make, isfinite, fast = tuple.__new__, math.isfinite, _FAST_TYPES
    for index, raw in enumerate(records):
        try:
            s, t, v = raw["series"], raw["ts"], raw["value"]
            if (type(s) is str and 0 < len(s) <= MAX_SERIES_NAME and type(t) in fast and type(v) in fast
                    and s.isprintable()):
                ts, value = float(t), float(v)
                if MIN_TS <= ts <= MAX_TS and isfinite(value):
                    accepted.append(make(Observation, (s, ts, value)))
                    continue
        except (TypeError, KeyError, IndexError, OverflowError):
            pass
        try:
            accepted.append(validate_record(raw))
        except Rejected as exc:
            # Kept without traceback and context: 100,000 live tracebacks (and the frames they
            # hold) made the garbage collector's passes dominate a batch of bad records
            # (seconds on the event loop, growing faster than the batch).
            exc.__traceback__ = exc.__context__ = None
            rejected.append((index, exc))
    return accepted, rejected


def _owned(accepted: list[Observation], rejected: list[tuple[int, Rejected]], records: list[Any],
           foreign: Callable[[str], str | None]) -> tuple[list[Observation], list[tuple[int, Rejected]]]:
    """Move the records of series another daemon serves from `accepted` to `rejected`."""
    refused = {index for index, _ in rejected}
    indices = (index for index in range(len(records)) if index not in refused)   # accepted, in order
    kept: list[Observation] = []
    for index, obs in zip(indices, accepted):
        why = foreign(obs.series)
        if why is None:
            kept.append(obs)
        else:
            rejected.append((index, Rejected(why, "cluster")))
    rejected.sort(key=lambda item: item[0])
    return kept, rejected
