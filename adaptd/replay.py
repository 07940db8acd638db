"""`adaptd replay`: a leak-free backtest through the daemon's own engine (DESIGN.md §3).

Rows go through `Engine.observe` in time order, exactly as the daemon's ingest path feeds
them; after each observation past the warm-up, `Engine.forecast` answers t+1..t+H as the
socket would. The forecast is recorded before any later row exists for the engine, so no
forecast can depend on its future.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import Settings
from .datafile import DataReader, FormatError
from .engine import Engine, NotReady
from .engine.factory import build_engine, online_config
from .engine.history import infer_season
from .meta.fit import initializer_for
from .records import MAX_TS, MIN_TS, Observation, Rejected, check_series, format_ts, validate_record

log = logging.getLogger(__name__)


@dataclass
class Table:
    """Series in columns, distinct timestamps in rows (NaN where a series has no value)."""

    names: list[str]
    ts: np.ndarray        # (T,)
    values: np.ndarray    # (T, S)
    format: str
    labels: list[str] = field(default_factory=list)  # the input's own time text, per row

    def warmup_rows(self, fraction: float) -> np.ndarray:
        """Per series, the row index where scoring starts: after its first `fraction` of values."""
        present = np.isfinite(self.values)
        counts = present.sum(axis=0)
        ends = np.zeros(len(self.names), dtype=np.int64)
        for s in range(len(self.names)):
            rows = np.flatnonzero(present[:, s])
            k = int(np.floor(fraction * counts[s]))
            ends[s] = rows[k] if k < len(rows) else len(self.ts)
        return ends


def load_table(path: str | Path) -> Table:
    """Read a wide or long CSV (or JSON lines) into a Table; bad lines stop the replay."""
    try:
        return _load_table(path)
    except UnicodeDecodeError:   # its position is in a decoder's block: name the line instead
        raise FormatError(f"line {_first_non_utf8_line(path)} is not UTF-8 text") from None


def _first_non_utf8_line(path: str | Path) -> int:
    with open(path, "rb") as raw:
        for number, line in enumerate(raw, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


def _load_table(path: str | Path) -> Table:
    with open(path, encoding="utf-8", newline="") as stream:
        reader = DataReader(stream, keep_labels=True)
        cells: dict[float, dict[str, float]] = {}
        labels: dict[float, str] = {}
        order: dict[str, None] = {}
        for line, item in reader:
            if isinstance(item, str):
                raise FormatError(f"line {line}: {item}")
            if reader.format == "jsonl":   # objects as written: checked as the socket checks them
                try:
                    record = validate_record(item)
                except Rejected as exc:
                    raise FormatError(f"line {line}: {exc}") from None
                item = {"series": record.series, "ts": record.ts, "value": record.value,
                        "label": str(item["ts"])}
            else:   # a CSV's names: as the socket checks them
                try:
                    check_series(item["series"])
                except Rejected as exc:
                    raise FormatError(f"line {line}: {exc}") from None
            ts = float(item["ts"])
            name = str(item["series"])
            order.setdefault(name, None)
            row = cells.setdefault(ts, {})
            value = float(item["value"])
            if row.get(name, value) != value:   # a repeated identical line is harmless
                raise FormatError(f"line {line}: series {name!r} at {item['label']} already has the value "
                                  f"{row[name]!r} on an earlier line; replay needs one value per series and time")
            row[name] = value
            labels.setdefault(ts, str(item["label"]))
    if not cells:
        raise FormatError("no records to replay")
    names = list(order) if reader.format != "wide" else [n for n in reader.columns if n in order]
    stamps = np.array(sorted(cells))
    values = np.full((len(stamps), len(names)), np.nan)
    column = {n: i for i, n in enumerate(names)}
    for r, ts in enumerate(stamps):
        for name, v in cells[ts].items():
            values[r, column[name]] = v
    return Table(names, stamps, values, reader.format, [labels[ts] for ts in stamps])


@dataclass
class ReplayResult:
    table: Table
    horizon: int
    warmup: np.ndarray                 # (S,) first scored origin row per series
    forecasts: np.ndarray              # (T, S, H) forecast issued at row t (NaN: none)
    lo: np.ndarray
    hi: np.ndarray
    engine_stats: dict[str, Any]
    seconds: float
    target_ts: np.ndarray              # (T, S, H) the time each forecast is for (the series' own steps)
    drifts: dict[str, int] = field(default_factory=dict)        # changes detected, per series
    adaptations: dict[str, int] = field(default_factory=dict)   # of them, adaptations that replaced its model

    @cached_property
    def target_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, found), each (T, S, H): the table row of each forecast's target, and whether
        there is one. A forecast point is for origin + lead x the series' step; its target is the
        series' own value nearest that time, within half a step (jittered or monthly timestamps),
        none past the end or in a gap. Cached: the report and the forecasts file both read it."""
        T, S, H = self.target_ts.shape
        rows, found = np.zeros((T, S, H), dtype=np.int64), np.zeros((T, S, H), dtype=bool)
        for s in range(S):
            present = np.flatnonzero(np.isfinite(self.table.values[:, s]))
            if present.size < 2:
                continue
            times = self.table.ts[present]
            half = float(np.median(np.diff(times))) / 2
            due = self.target_ts[:, s]
            right = np.clip(np.searchsorted(times, due), 1, present.size - 1)
            nearer = np.where(np.abs(times[right - 1] - due) <= np.abs(times[right] - due), right - 1, right)
            with np.errstate(invalid="ignore"):
                found[:, s] = np.abs(times[nearer] - due) <= half    # NaN (no forecast): False
            rows[:, s] = present[nearer]
        return rows, found

    def targets(self) -> np.ndarray:
        """(T, S, H): the series' value at the time each forecast aimed at (NaN: none there)."""
        rows, found = self.target_rows
        series = np.arange(self.table.values.shape[1])[None, :, None]
        return np.where(found, self.table.values[rows, series], np.nan)


def run_replay(table: Table, settings: Settings, horizon: int, warmup_frac: float = 0.25, seed: int = 0,
               engine: Engine | None = None, progress: Callable[[int], None] | None = None) -> ReplayResult:
    started = time.perf_counter()
    warmup = table.warmup_rows(warmup_frac)
    if engine is None:
        config = online_config(settings, horizon, seed)
        warm_series = [table.values[: warmup[s], s][np.isfinite(table.values[: warmup[s], s])]
                       for s in range(len(table.names))]
        init = None
        if settings.model.engine == "online":
            init = initializer_for(settings.adapt.init, config, warm_series, settings.meta, seed,
                                   settings.adapt.step_size, prefer_packaged=True)
        engine = build_engine(settings, init, horizon, seed, inline_adaptation=True)
    T, S = table.values.shape
    drifts: dict[str, int] = {name: 0 for name in table.names}
    adaptations = dict(drifts)
    # float64, as the daemon answers: float32 keeps 7 digits, too few for a series far from 0
    # (a counter at 1e9 would be forecast to the nearest 64).
    forecasts = np.full((T, S, horizon), np.nan)
    lo, hi = np.full_like(forecasts, np.nan), np.full_like(forecasts, np.nan)
    target_ts = np.full((T, S, horizon), np.nan)
    for t in range(T):
        row = table.values[t]
        present = np.flatnonzero(np.isfinite(row))
        engine.observe([Observation(table.names[s], float(table.ts[t]), float(row[s])) for s in present])
        for s in present:
            if t < warmup[s]:
                continue
            try:
                fc = engine.forecast(table.names[s], horizon)
            except NotReady:
                continue
            forecasts[t, s] = [p.value for p in fc.points]
            lo[t, s] = [p.lo for p in fc.points]
            hi[t, s] = [p.hi for p in fc.points]
            target_ts[t, s] = [p.ts for p in fc.points]
            adaptations[table.names[s]] = int(fc.model.get("adaptations") or 0)
        for event in engine.take_drift_events():
            drifts[event.series] += 1
        if progress is not None:
            progress(1)
    stats = engine.stats()
    return ReplayResult(table, horizon, warmup, forecasts, lo, hi, stats, time.perf_counter() - started, target_ts,
                        drifts, adaptations)


def report(result: ReplayResult) -> dict[str, Any]:
    """Per-series and overall errors: z-scored with each series' warm-up mean and population std."""
    table, H = result.table, result.horizon
    targets = result.targets()
    per_series: dict[str, Any] = {}
    for s, name in enumerate(table.names):
        warm = table.values[: result.warmup[s], s]
        warm = warm[np.isfinite(warm)]
        mean, std = (float(warm.mean()), float(warm.std())) if warm.size else (0.0, 1.0)
        std = std if std > 0 else 1.0
        pred, target = result.forecasts[:, s], targets[:, s]
        scored = np.isfinite(pred) & np.isfinite(target)
        if not scored.any():
            continue
        err = (pred - target)[scored]
        covered = (target >= result.lo[:, s]) & (target <= result.hi[:, s])
        width = (result.hi[:, s] - result.lo[:, s]) / std   # z-scored, like the errors
        inside = covered[scored]
        per_step = _by_step(((pred - target) / std) ** 2, scored)
        season = _season(table.ts[np.isfinite(table.values[:, s])])   # the series' own clock
        naive_scale = _mase_scale(warm, season)
        per_series[name] = {
            "mse": float(np.mean((err / std) ** 2)), "mae": float(np.mean(np.abs(err) / std)),
            "raw_mae": float(np.mean(np.abs(err))), "raw_rmse": float(np.sqrt(np.mean(err ** 2))),
            "mase": float(np.mean(np.abs(err)) / naive_scale) if naive_scale > 0 else None,
            "coverage": float(inside.mean()), "forecasts": int(scored[:, 0].sum()),
            # Coverage alone can be bought with width: how wide the intervals were, by lead too.
            "interval_width": float(width[scored].mean()),
            "mse_by_step": per_step, "coverage_by_step": _by_step(covered, scored),
            "interval_width_by_step": _by_step(width, scored),
            "drifts": result.drifts.get(name, 0), "adaptations": result.adaptations.get(name, 0),
        }
    rows = list(per_series.values())

    def avg(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(values)) if values else None

    stats = result.engine_stats
    return {
        "horizon": H, "series": len(table.names), "rows": len(table.ts),
        "overall": {k: avg(k) for k in ("mse", "mae", "raw_mae", "raw_rmse", "mase", "coverage", "interval_width")},
        "drifts": stats.get("drifts", 0), "adaptations": stats.get("adapted", 0),
        "adaptations_kept_previous": stats.get("kept", 0), "engine": stats,
        "wall_seconds": round(result.seconds, 3), "per_series": per_series,
    }


def _by_step(values: np.ndarray, scored: np.ndarray) -> list[float | None]:
    """Mean of (origins, H) `values` over the scored cells of each lead (None: none scored)."""
    return [float(values[scored[:, h], h].mean()) if scored[:, h].any() else None for h in range(values.shape[1])]


def _season(ts: np.ndarray) -> int:
    gaps = np.diff(ts)
    gaps = gaps[gaps > 0]
    return infer_season(float(np.median(gaps))) if gaps.size else 1


def _mase_scale(warm: np.ndarray, season: int) -> float:
    m = season if len(warm) > 2 * season else 1
    if len(warm) <= m:
        return 0.0
    return float(np.mean(np.abs(warm[m:] - warm[:-m])))


def write_forecasts(result: ReplayResult, out: io.TextIOBase | Any) -> int:
    """`series,origin,target,step,forecast,lo,hi` with timestamps as written in the input (a
    target time the input has no row for, such as past its end, in the style of its first row:
    `time_style`); numbers as the shortest text that reads back as the same float. Returns the
    row count."""
    writer = csv.writer(out)
    writer.writerow(["series", "origin", "target", "step", "forecast", "lo", "hi"])
    table = result.table
    T, rows = len(table.ts), 0
    label = table.labels if len(table.labels) == T else [format_ts(t) for t in table.ts]
    unlisted = time_style(label[0], float(table.ts[0])) if T else format_ts
    at, found = result.target_rows
    for s, name in enumerate(table.names):
        origins = np.flatnonzero(np.isfinite(result.forecasts[:, s, 0]))
        for t in origins:
            for h in range(result.horizon):
                target = label[at[t, s, h]] if found[t, s, h] else unlisted(float(result.target_ts[t, s, h]))
                writer.writerow([name, label[t], target, h + 1, repr(float(result.forecasts[t, s, h])),
                                 repr(float(result.lo[t, s, h])), repr(float(result.hi[t, s, h]))])
                rows += 1
    return rows


_US_TIME = re.compile(r"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}")


def time_style(label: str, ts: float) -> Callable[[float], str]:
    """How to write other times as the input wrote `label` (its time `ts`): epoch seconds, a date
    YYYYMMDD, M/D/YYYY H:MM (WTH.csv), a naive ISO-8601 date and time with its separator and
    precision; a time the style cannot hold (seconds where it has minutes, say), or any other
    style, in ISO-8601 UTC.

    >>> [time_style(text, ts)(ts + 3600) for text, ts in [
    ...     ("3600", 3600.0), ("1/2/2010 0:00", 1262390400.0), ("2010-01-02 00:00:00", 1262390400.0),
    ...     ("2010-01-02T00:00", 1262390400.0), ("2010-01-02T00:00:00Z", 1262390400.0)]]
    ['7200', '1/2/2010 1:00', '2010-01-02 01:00:00', '2010-01-02T01:00', '2010-01-02T01:00:00Z']
    >>> time_style("2010-01-02T01:00:00+01:00", 1262390400.0)(1262390400.0 + 3600)
    '2010-01-02T02:00:00+01:00'
    >>> day = time_style("20100102", 1262390400.0)
    >>> day(1262390400.0 + 86400), day(1262390400.0 + 3600)
    ('20100103', '2010-01-02T01:00:00Z')
    """
    text = label.strip()
    try:
        number: float | None = float(text)
    except ValueError:
        number = None
    if number == ts:
        return lambda t: str(int(t)) if float(t).is_integer() else repr(float(t))
    if number is not None and len(text) == 8 and text.isdigit():   # a date YYYYMMDD
        return _styled("%Y%m%d", 86400)
    if _US_TIME.fullmatch(text):
        return _styled("{d.month}/{d.day}/{d.year} {d.hour}:{d.minute:02d}", 60)
    try:
        iso, zone = number is None, datetime.fromisoformat(text).tzinfo
    except ValueError:
        iso, zone = False, None
    # A date and time, naive or with an offset written ±HH:MM (a fixed one: after a daylight
    # saving change the times are right but not the local wall clock), with its separator and
    # precision.
    body = len(text) - (6 if zone is not None else 0)
    offset = zone is None or re.fullmatch(r".*[+-]\d\d:\d\d", text) is not None
    if iso and offset and body in (10, 16, 19) and not (zone is not None and body == 10):
        sep = text[10:11]
        pattern = {10: "%Y-%m-%d", 16: f"%Y-%m-%d{sep}%H:%M", 19: f"%Y-%m-%d{sep}%H:%M:%S"}[body]
        return _styled(pattern + ("%z" if zone is not None else ""), {10: 86400, 16: 60, 19: 1}[body], zone)
    return format_ts


def _styled(pattern: str, unit: int, zone: tzinfo | None = None) -> Callable[[float], str]:
    """Times in `pattern` (strftime's, or str.format's of `d`) at `zone` (default UTC) when whole
    `unit`s of seconds there, within years 1 to 9999; others in ISO-8601 UTC."""
    def write(t: float) -> str:
        if not MIN_TS + 86400 <= t <= MAX_TS - 86400 or not float(t).is_integer():
            return format_ts(t)
        d = datetime.fromtimestamp(t, zone or timezone.utc)
        if (d.hour * 3600 + d.minute * 60 + d.second) % unit or d.year < 1000:   # (strftime's %Y: no padding)
            return format_ts(t)
        text = pattern.format(d=d) if "{" in pattern else d.strftime(pattern)
        return text[:-2] + ":" + text[-2:] if pattern.endswith("%z") else text   # +0100 -> +01:00
    return write


MAX_HORIZON = 10_000


class UsageError(ValueError):
    """A replay argument that cannot work; the message names it and what is allowed."""


def check_arguments(horizon: int, warmup_frac: float) -> None:
    if not 1 <= horizon <= MAX_HORIZON:
        raise UsageError(f"--horizon {horizon}: expected a whole number of steps from 1 to {MAX_HORIZON}")
    if not (math.isfinite(warmup_frac) and 0 <= warmup_frac < 1):
        raise UsageError(f"--warmup-frac {warmup_frac}: expected a fraction of each series from 0 up to (not "
                         f"including) 1")


def main(settings: Settings, path: str, horizon: int, warmup_frac: float, seed: int,
         forecasts_out: str | None, report_out: str | None, progress: bool = True) -> int:
    import random

    import torch

    check_arguments(horizon, warmup_frac)
    outputs = {flag: target for flag, target in (("--forecasts-out", forecasts_out), ("--report-out", report_out))
               if target}
    if len(outputs) == 2 and len({Path(target).resolve() for target in outputs.values()}) == 1:
        raise UsageError(f"--forecasts-out and --report-out are the same file ({forecasts_out})")
    for flag, target in outputs.items():
        # Checked before the run (told at once, not after it), without truncating last run's file.
        try:
            open(target, "a", encoding="utf-8").close()
        except OSError as exc:
            raise UsageError(f"{flag} {target}: {exc.strerror or exc}") from None
    try:
        table = load_table(path)
    except OSError as exc:   # missing, a directory, unreadable
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(table.ts), unit="row", desc="replay", disable=None, leave=False)
    try:
        result = run_replay(table, settings, horizon, warmup_frac, seed, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    summary = report(result)
    if forecasts_out:
        with open(forecasts_out, "w", newline="", encoding="utf-8") as out:
            write_forecasts(result, out)
    if report_out:
        Path(report_out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    o = summary["overall"]
    print(f"replayed {summary['rows']} rows of {summary['series']} series, horizon {horizon}, "
          f"warm-up {warmup_frac:.0%}, in {summary['wall_seconds']:.1f}s")
    if o["mse"] is None:
        print("nothing was scored: no series has a forecast after its warm-up whose target is in the "
              "file (too few rows, or --warmup-frac too high)")
        return 1
    print(f"z-scored MSE {o['mse']:.4f}  MAE {o['mae']:.4f}  MASE {o['mase'] or float('nan'):.3f}  "
          f"coverage {o['coverage']:.3f} (width {o['interval_width']:.3f})  drifts {summary['drifts']}  "
          f"adaptations {summary['adaptations']}")
    return 0
