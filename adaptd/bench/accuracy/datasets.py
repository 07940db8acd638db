"""The benchmark data sets (ETTh2, ETTm1, WTH) and the splits of BENCHMARK_ANCHORS.md.

Two protocols:

- ``fsnet`` (FSNet / OneNet code): ETTh2 and ETTm1 rows [0, 2880) train, [2880, 3600)
  validation, scored targets [3600, 14400) (ETTm1 reuses the hourly row numbers, so only its
  first 14400 rows take part); WTH 20 % train / 5 % validation / 75 % test by rows, with the
  border arithmetic of their loader (``int(0.2 T)`` train, ``int(0.75 T)`` test).
- ``dsof`` (DSOF, leak-free H = 1/24/48): ETTh2 as above; ETTm1 over its full 20 months with the
  row borders times 4: train [0, 11520), validation [11520, 14400), test [14400, 57600).

Every channel is z-scored with the mean and population standard deviation of its train rows.
Everything before the scored range (train + validation) is warm-up.

>>> split_rows("etth2", "fsnet", 17420)
(2880, 3600, 14400)
>>> split_rows("ettm1", "dsof", 69680)
(11520, 14400, 57600)
>>> split_rows("wth", "fsnet", 35064)
(7012, 8766, 35064)
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# Relative to the repository root (where pyproject.toml lives), not to the working directory.
DEFAULT_DATA_DIR = "../shared/data"
REPO_ROOT = Path(__file__).resolve().parents[3]

FILES = {"etth2": "ett/ETTh2.csv", "ettm1": "ett/ETTm1.csv", "wth": "wth/WTH.csv"}
DISPLAY = {"etth2": "ETTh2", "ettm1": "ETTm1", "wth": "WTH"}
PROTOCOLS = ("fsnet", "dsof")
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S")


class DataMissing(FileNotFoundError):
    """A data file is not where it should be; the message says where it looked and what to do."""


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory: `data_dir` if given (relative to the working directory, as any
    command-line path), else ``../shared/data`` relative to the repository root."""
    if data_dir is None:
        return (REPO_ROOT / DEFAULT_DATA_DIR).resolve()
    return Path(data_dir).expanduser().resolve()


def data_path(dataset: str, data_dir: str | Path | None = None) -> Path:
    if dataset not in FILES:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(FILES)}")
    path = resolve_data_dir(data_dir) / FILES[dataset]
    if not path.is_file():
        where = "--data-dir" if data_dir is not None else f"the default {DEFAULT_DATA_DIR} (relative to {REPO_ROOT})"
        raise DataMissing(
            f"{DISPLAY[dataset]} data not found: {path} does not exist (looked in {where}). "
            f"Put {FILES[dataset]} under the data directory or pass --data-dir DIR.")
    return path


def _parse_time(text: str) -> float:
    text = text.strip()
    for fmt in TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            continue
    raise ValueError(f"unreadable timestamp {text!r}")


@dataclass(frozen=True)
class Table:
    """A wide CSV: timestamps (epoch seconds, UTC) and raw values (T, channels)."""

    channels: tuple[str, ...]
    timestamps: np.ndarray
    values: np.ndarray


@functools.lru_cache(maxsize=4)
def read_wide_csv(path: str | Path) -> Table:
    """Read a wide CSV (a date column, then numeric channels); every cell must be a finite number."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [c.strip() for c in next(reader)]
        dates: list[str] = []
        rows: list[list[str]] = []
        for line_no, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{line_no}: expected {len(header)} cells, got {len(row)}")
            dates.append(row[0])
            rows.append(row[1:])
    values = np.array(rows, dtype=np.float64)
    if not np.isfinite(values).all():
        bad = int(np.argwhere(~np.isfinite(values))[0, 0]) + 2
        raise ValueError(f"{path}:{bad}: non-finite value")
    stamps = np.array([_parse_time(d) for d in dates], dtype=np.float64)
    values.flags.writeable = False
    stamps.flags.writeable = False
    return Table(tuple(header[1:]), stamps, values)


def infer_step(timestamps: np.ndarray) -> float:
    """The median spacing of the timestamps, in seconds."""
    steps = np.diff(timestamps)
    if steps.size == 0 or np.median(steps) <= 0:
        raise ValueError("timestamps must increase")
    return float(np.median(steps))


def infer_period(timestamps: np.ndarray) -> int:
    """Daily seasonal period in rows: 24 for hourly data, 96 for 15-minute data.

    >>> infer_period(np.arange(10) * 3600.0), infer_period(np.arange(10) * 900.0)
    (24, 96)
    """
    step = infer_step(timestamps)
    period = 86400.0 / step
    if abs(period - round(period)) > 1e-9 or round(period) < 1:
        raise ValueError(f"a day is not a whole number of {step:g}-second steps")
    return int(round(period))


def split_rows(dataset: str, protocol: str, n_rows: int) -> tuple[int, int, int]:
    """(train_end, val_end, test_end): train [0, train_end), validation [train_end, val_end),
    scored targets [val_end, test_end)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if dataset in ("etth2", "ettm1"):
        borders = (4 * 30 * 24, 5 * 30 * 24, 20 * 30 * 24)  # 2880, 3600, 14400
        if dataset == "ettm1" and protocol == "dsof":
            borders = tuple(4 * b for b in borders)  # type: ignore[assignment]
    elif dataset == "wth":
        if protocol != "fsnet":
            raise ValueError("WTH has only the FSNet/OneNet split (DSOF does not report WTH)")
        num_train = int(n_rows * 0.2)
        num_test = int(n_rows * 0.75)
        borders = (num_train, n_rows - num_test, n_rows)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(FILES)}")
    if borders[2] > n_rows:
        raise ValueError(f"{dataset}: split needs {borders[2]} rows, the file has {n_rows}")
    return borders  # type: ignore[return-value]


def has_protocol(dataset: str, protocol: str) -> bool:
    return not (dataset == "wth" and protocol == "dsof")


@dataclass(frozen=True)
class Split:
    """One data set under one protocol, z-scored with train statistics.

    `values` (T, S) holds only the rows the protocol uses (T = test_end); the scored targets are
    rows [val_end, test_end) and the warm-up rows [0, val_end).
    """

    dataset: str
    protocol: str
    channels: tuple[str, ...]
    timestamps: np.ndarray
    values: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    train_end: int
    val_end: int
    test_end: int
    step_seconds: float
    period: int
    path: str

    @property
    def first_target(self) -> int:
        return self.val_end

    @property
    def warmup_rows(self) -> int:
        return self.val_end

    @property
    def label(self) -> str:
        full = " full" if (self.dataset == "ettm1" and self.protocol == "dsof") else ""
        return f"{DISPLAY[self.dataset]}{full}"

    def describe(self) -> str:
        return (f"{self.label} ({self.protocol} split): train [0, {self.train_end}), "
                f"val [{self.train_end}, {self.val_end}), scored targets [{self.val_end}, {self.test_end}); "
                f"{len(self.channels)} channels, step {self.step_seconds:g} s, period {self.period}")


def zscore(values: np.ndarray, train_end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score with the mean and population std of rows [0, train_end); a constant channel keeps std 1."""
    train = values[:train_end]
    mean = train.mean(axis=0)
    std = train.std(axis=0)  # ddof=0: population std, as the FSNet/OneNet StandardScaler
    std = np.where(std > 0, std, 1.0)
    return (values - mean) / std, mean, std


def load_split(dataset: str, protocol: str, data_dir: str | Path | None = None) -> Split:
    path = data_path(dataset, data_dir)
    table = read_wide_csv(str(path))
    train_end, val_end, test_end = split_rows(dataset, protocol, len(table.timestamps))
    raw = table.values[:test_end]
    z, mean, std = zscore(raw, train_end)
    z.flags.writeable = False
    stamps = table.timestamps[:test_end]
    return Split(dataset, protocol, table.channels, stamps, z, mean, std, train_end, val_end, test_end,
                 infer_step(stamps), infer_period(stamps), str(path))
