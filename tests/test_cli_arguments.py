"""Nonsensical command-line values are refused by argparse, naming the flag, before anything
runs (they gave tracebacks or silently odd runs)."""

from __future__ import annotations

import pytest

from adaptd.cli import main


@pytest.mark.parametrize("argv, flag", [
    (["replay", "x.csv", "--horizon", "2", "--seed", "-1"], "--seed"),
    (["replay", "x.csv", "--horizon", "2", "--seed", "4294967296"], "--seed"),
    (["meta-train", "--seed", "-1"], "--seed"),
    (["bench", "ingest", "--clients", "0"], "--clients"),
    (["bench", "ingest", "--batch", "x"], "--batch"),
    (["bench", "adapt", "--repeats", "1"], "--repeats"),
    (["bench", "coldstart", "--ages", "4,x"], "--ages"),
    (["bench", "coldstart", "--ages", ""], "--ages"),
    (["bench", "coldstart", "--max-starts", "-5"], "--max-starts"),
    (["bench", "meta", "--bootstrap", "0"], "--bootstrap"),
    (["bench", "meta", "--seed", "-3"], "--seed"),
])
def test_a_nonsensical_flag_value_is_refused_by_name(argv: list[str], flag: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err, err
