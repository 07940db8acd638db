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
