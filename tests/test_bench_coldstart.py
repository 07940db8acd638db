"""`adaptd bench coldstart`: every arm on the same cold starts, runnable small, refuses nonsense."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adaptd.bench.accuracy.datasets import resolve_data_dir
from adaptd.bench.coldstart import ARMS
from adaptd.cli import main


def test_bench_coldstart_runs_small_and_reports_every_arm(capsys: pytest.CaptureFixture[str]) -> None:
    if not (resolve_data_dir() / "m4" / "Hourly-train.csv").is_file():
        pytest.skip("real data not present: ../shared/data/m4/Hourly-train.csv (see ../shared/data/SOURCES.md)")
    assert main(["bench", "coldstart", "--datasets", "m4", "--ages", "4,12", "--max-starts", "12",
                 "--bootstrap", "50", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ages"] == [4, 12] and report["cold_start"] == 4
    m4 = report["datasets"]["m4"]
    assert m4["starts"] == 12
    for age in ("4", "12"):
        row = m4["table"][age]
        assert row["naive H24"]["ratio"] == 1.0
        for arm in ARMS:
            for hz in (24, 48):
                cell = row[f"{arm} H{hz}"]
                assert np.isfinite(cell["mse"]) and cell["ci"][0] <= cell["ci"][1]
        assert 0 <= row["coverage engine H24"] <= 1


def test_bench_coldstart_refuses_when_cold_start_is_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "off.toml"
    config.write_text("[model]\ncold_start = 0\n")
    assert main(["bench", "--config", str(config), "coldstart", "--datasets", "m4"]) == 2
    assert "cold_start" in capsys.readouterr().err


def test_validation_rows_are_cut_where_no_reported_figure_looks() -> None:
    from adaptd.bench.accuracy.datasets import load_split
    from adaptd.bench.coldstart import segments
    from adaptd.config import load_config

    if not (resolve_data_dir() / "ett" / "ETTh2.csv").is_file():
        pytest.skip("real data not present: ../shared/data/ett/ETTh2.csv (see ../shared/data/SOURCES.md)")
    split, settings, need = load_split("etth2", "fsnet"), load_config(None), 95
    for rows_from, (start, end) in (("test", (split.val_end, split.test_end)),
                                    ("validation", (split.train_end, split.val_end))):
        rows, _ = segments("etth2", need, 240, None, settings, rows_from)
        allowed = [split.values[o: o + need, c] for c in range(split.values.shape[1])
                   for o in range(start, end - need + 1)]
        assert len(rows) > 0 and all(any(np.array_equal(r, a) for a in allowed) for r in rows[:5])
    validation, _ = segments("etth2", need, 240, None, settings, "validation")
    test, _ = segments("etth2", need, 240, None, settings, "test")
    assert not any(np.array_equal(v, t) for v in validation for t in test)
