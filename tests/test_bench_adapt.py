"""`adaptd bench adapt`: times the adaptation job the daemon runs, including a full regime memory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from adaptd.cli import main


def test_bench_adapt_times_the_job_with_and_without_remembered_regimes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "adapt", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    empty = re.search(r"nothing remembered \((.*)\): median ([\d.]+) ms", out)
    full = re.search(r"(\d+) regimes remembered, the best 1 fine-tuned \((.*)\): median ([\d.]+) ms", out)
    assert empty and empty.group(1) == "finetuned, init, previous"
    # The worst case really ran: the shipped defaults fill 64 shared regimes, and one competed.
    assert full and full.group(1) == "64" and "memory" in full.group(2)
    assert float(empty.group(2)) > 0 and float(full.group(3)) > 0
    assert "reproduce: adaptd bench adapt --repeats 3" in out


def test_bench_adapt_without_regime_memory_times_one_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "adaptd.toml"
    config.write_text("[adapt]\nregime_lookup = 0\n")
    assert main(["bench", "--config", str(config), "adapt", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "nothing remembered" in out and "regimes remembered" not in out
