"""`adaptd replay` (DESIGN.md §3): the contract's columns and report, determinism, no look-ahead."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from adaptd.cli import main

CONFIG = """
[model]
window = 16
patch = 4
hidden = 8
rls_lags = 8
max_horizon = 4
[adapt]
window = 32
validation = 4
workers = 0
"""


def write_wide(path: Path, values: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["date", "a", "b"])
        for t, row in enumerate(values):
            w.writerow([f"2024-01-{1 + t // 24:02d} {t % 24:02d}:00:00", *row])


def series(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.stack([10 + np.sin(2 * np.pi * t / 24) + 0.1 * rng.normal(size=n),
                     5 + 0.05 * np.cumsum(rng.normal(size=n))], axis=1).round(4)


def replay(tmp_path: Path, values: np.ndarray, name: str, horizon: int = 3, seed: int = 0) -> tuple[list[dict], dict]:
    data, config = tmp_path / f"{name}.csv", tmp_path / "config.toml"
    config.write_text(CONFIG)
    write_wide(data, values)
    out, report = tmp_path / f"{name}-forecasts.csv", tmp_path / f"{name}-report.json"
    code = main(["replay", str(data), "--horizon", str(horizon), "--config", str(config), "--seed", str(seed),
                 "--forecasts-out", str(out), "--report-out", str(report), "--no-progress"])
    assert code == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads(report.read_text())


def test_outputs_follow_the_contract(tmp_path: Path) -> None:
    rows, report = replay(tmp_path, series(160), "a")
    assert list(rows[0]) == ["series", "origin", "target", "step", "forecast", "lo", "hi"]
    assert rows[0]["origin"].startswith("2024-01-")  # timestamps as in the input
    first_origin = min(r["origin"] for r in rows if r["series"] == "a")
    assert first_origin == "2024-01-02 16:00:00"      # row 40 = after the 25% warm-up of 160 rows
    assert {r["step"] for r in rows} == {"1", "2", "3"}
    assert all(float(r["lo"]) <= float(r["forecast"]) <= float(r["hi"]) for r in rows)
    overall = report["overall"]
    assert set(overall) >= {"mse", "mae", "raw_mae", "raw_rmse", "mase", "coverage"}
    assert set(report["per_series"]) == {"a", "b"}
    assert {"drifts", "adaptations", "wall_seconds"} <= set(report)


def test_the_report_counts_drifts_and_adaptations_per_series(tmp_path: Path) -> None:
    values = series(400)
    values[250:, 0] += 5.0    # a level shift in a
    values[250:, 1] *= -3.0   # b turned over and stretched
    report = replay(tmp_path, values, "changes")[1]
    per_series = report["per_series"]
    assert report["drifts"] >= 2 and all(per_series[name]["drifts"] >= 1 for name in "ab"), per_series
    for key in ("drifts", "adaptations"):   # the overall counts, series by series
        assert sum(per_series[name][key] for name in "ab") == report[key]


def test_the_report_says_how_wide_the_intervals_were_at_each_lead(tmp_path: Path) -> None:
    values = series(160)
    rows, report = replay(tmp_path, values, "a")
    for s, name in enumerate(("a", "b")):
        std = values[:40, s].std()   # the warm-up's: the report is on the z-scored scale
        last = "2024-01-07 15:00:00"   # row 159: targets after it are not scored
        mine = [r for r in rows if r["series"] == name and r["target"] <= last]
        width = [(float(r["hi"]) - float(r["lo"])) / std for r in mine]
        ours = report["per_series"][name]
        assert ours["interval_width"] == pytest.approx(np.mean(width), rel=1e-4)
        by_step = [np.mean([w for w, r in zip(width, mine) if r["step"] == str(h)]) for h in (1, 2, 3)]
        assert ours["interval_width_by_step"] == pytest.approx(by_step, rel=1e-4)
        assert len(ours["coverage_by_step"]) == 3 and all(0 <= c <= 1 for c in ours["coverage_by_step"])
    assert report["overall"]["interval_width"] == pytest.approx(
        np.mean([report["per_series"][n]["interval_width"] for n in ("a", "b")]))


def test_the_same_seed_gives_the_same_forecasts(tmp_path: Path) -> None:
    first, _ = replay(tmp_path, series(120), "x", seed=3)
    second, _ = replay(tmp_path, series(120), "y", seed=3)
    assert first == second


def test_no_forecast_depends_on_values_after_its_origin(tmp_path: Path) -> None:
    values = series(150)
    changed = values.copy()
    k = 110
    changed[k:] += 50.0
    before, _ = replay(tmp_path, values, "orig")
    after, _ = replay(tmp_path, changed, "changed")
    cutoff = f"2024-01-{1 + k // 24:02d} {k % 24:02d}:00:00"
    early = lambda rows: [r for r in rows if r["origin"] < cutoff]  # noqa: E731
    assert early(before) == early(after) and early(before)
    assert [r for r in before if r["origin"] >= cutoff] != [r for r in after if r["origin"] >= cutoff]


def test_bad_input_is_refused_with_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("date,a\n2024-01-01 00:00:00,1\n2024-01-01 01:00:00,oops\n")
    assert main(["replay", str(data), "--horizon", "1", "--no-progress"]) == 2
    assert "line 3" in capsys.readouterr().err


def test_json_lines_replay_as_the_same_records_in_csv_do(tmp_path: Path) -> None:
    """JSON lines, ISO or epoch times, give the forecasts the wide CSV of the same values gives."""
    values = series(120)
    _, from_csv = replay(tmp_path, values, "wide")
    lines = [json.dumps({"series": name, "ts": f"2024-01-{1 + t // 24:02d}T{t % 24:02d}:00:00", "value": v})
             for t, row in enumerate(values) for name, v in zip("ab", row)]
    data, report = tmp_path / "records.jsonl", tmp_path / "jsonl-report.json"
    data.write_text("\n".join(lines) + "\n")
    code = main(["replay", str(data), "--horizon", "3", "--config", str(tmp_path / "config.toml"),
                 "--report-out", str(report), "--no-progress"])
    assert code == 0
    assert json.loads(report.read_text())["overall"]["mse"] == pytest.approx(from_csv["overall"]["mse"])


@pytest.mark.parametrize("line, expected", [
    ('{"series": "a", "ts": "yesterday", "value": 1}', "ISO-8601"),
    ('{"series": "a", "ts": 0, "value": NaN}', "finite"),
    ('{"series": "a", "value": 1}', "missing ts"),
])
def test_a_bad_json_line_is_refused_with_its_number(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    line: str, expected: str) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"series": "a", "ts": 0, "value": 1}\n' + line + "\n")
    assert main(["replay", str(data), "--horizon", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and expected in err and "Traceback" not in err, err


def test_series_on_their_own_timestamps_are_scored_against_their_own_next_values(tmp_path: Path) -> None:
    """A long CSV whose series report at different minutes: a forecast's target is the series'
    own value one step (of its own) later, not the next row of the merged table."""
    values = series(160)
    data, config = tmp_path / "long.csv", tmp_path / "config.toml"
    config.write_text(CONFIG)
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["series", "ts", "value"])
        for t, (a, b) in enumerate(values):
            stamp = f"2024-01-{1 + t // 24:02d} {t % 24:02d}"
            w.writerow(["a", f"{stamp}:00:00", a])
            w.writerow(["b", f"{stamp}:30:00", b])
    out, rep = tmp_path / "f.csv", tmp_path / "r.json"
    assert main(["replay", str(data), "--horizon", "3", "--config", str(config), "--forecasts-out", str(out),
                 "--report-out", str(rep), "--no-progress"]) == 0
    report = json.loads(rep.read_text())
    aligned = replay(tmp_path, values, "aligned")[1]      # the same values on one shared clock
    for name in ("a", "b"):
        mine, same = report["per_series"][name], aligned["per_series"][name]
        assert mine["forecasts"] == same["forecasts"] > 0
        assert mine["mse_by_step"] == pytest.approx(same["mse_by_step"])
        assert mine["coverage"] == pytest.approx(same["coverage"])
        assert mine["mase"] == pytest.approx(same["mase"])           # its season from its own clock
    with out.open() as f:
        first = next(r for r in csv.DictReader(f) if r["series"] == "b" and r["step"] == "2")
    assert first["origin"].endswith(":30:00") and first["target"].endswith(":30:00")
    hour = int(first["origin"][11:13])
    assert int(first["target"][11:13]) == (hour + 2) % 24


@pytest.mark.parametrize("args, expected", [
    (["--horizon", "0"], "--horizon 0: expected a whole number of steps from 1"),
    (["--horizon", "-1"], "--horizon -1"),
    (["--horizon", "2", "--warmup-frac", "nan"], "--warmup-frac nan: expected a fraction"),
    (["--horizon", "2", "--warmup-frac", "-0.5"], "--warmup-frac -0.5"),
    (["--horizon", "2", "--warmup-frac", "1"], "--warmup-frac 1.0"),
    (["--horizon", "2", "--forecasts-out", "/nonexistent/dir/f.csv"], "--forecasts-out /nonexistent/dir/f.csv: No such"),
    (["--horizon", "2", "--report-out", "."], "--report-out .: Is a directory"),
    (["--horizon", "2", "--report-out", "same.out", "--forecasts-out", "same.out"], "are the same file"),
])
def test_bad_arguments_are_refused_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch, args: list[str],
                                                    expected: str) -> None:
    data = tmp_path / "d.csv"
    write_wide(data, series(60))
    monkeypatch.chdir(tmp_path)
    assert main(["replay", str(data), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and "replayed" not in err


def test_a_directory_or_a_file_too_short_to_score_is_told_plainly(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path), "--horizon", "2", "--no-progress"]) == 2
    assert "Is a directory" in capsys.readouterr().err
    short = tmp_path / "short.csv"
    write_wide(short, series(2))        # a forecast needs two times; its targets lie past the end
    assert main(["replay", str(short), "--horizon", "2", "--no-progress"]) == 1
    assert "nothing was scored" in capsys.readouterr().out


def test_monthly_timestamps_are_scored_though_months_differ_in_length(tmp_path: Path) -> None:
    data, config, rep = tmp_path / "monthly.csv", tmp_path / "config.toml", tmp_path / "r.json"
    config.write_text(CONFIG)
    values = series(96)[:, 0]
    data.write_text("date,m\n" + "".join(f"{2010 + k // 12}-{1 + k % 12:02d}-01,{v}\n" for k, v in enumerate(values)))
    assert main(["replay", str(data), "--horizon", "3", "--config", str(config), "--report-out", str(rep),
                 "--no-progress"]) == 0
    scored = json.loads(rep.read_text())["per_series"]["m"]
    assert None not in scored["mse_by_step"]
    assert scored["forecasts"] == 96 - 24 - 1    # every origin after the warm-up whose first target is in the file


def test_a_series_far_from_zero_is_forecast_to_its_own_precision_and_epoch_times_stay_epoch(tmp_path: Path) -> None:
    """A counter near 1e9 that rises by 0.5 a step, with epoch-second times: the last-value
    fallback forecasts it exactly (floats of 7 digits would round it to the nearest 64), and a
    target past the input's end is written in epoch seconds, as the input's times are."""
    data, config = tmp_path / "counter.csv", tmp_path / "config.toml"
    config.write_text('[model]\nengine = "naive"\nseason = 1\n')
    t0 = 1_700_000_000
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["series", "ts", "value"])
        for t in range(40):
            w.writerow(["c", t0 + 60 * t, 1e9 + 0.5 * t])
    out, rep = tmp_path / "f.csv", tmp_path / "r.json"
    assert main(["replay", str(data), "--horizon", "2", "--config", str(config), "--forecasts-out", str(out),
                 "--report-out", str(rep), "--no-progress"]) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        origin = (int(row["origin"]) - t0) // 60
        assert float(row["forecast"]) == 1e9 + 0.5 * origin, row   # the last value, to the digit
    last = [r for r in rows if int(r["origin"]) == t0 + 60 * 39]
    assert [r["target"] for r in last] == [str(t0 + 60 * 40), str(t0 + 60 * 41)]   # past the end
    report = json.loads(rep.read_text())
    # Off by 0.5 at lead 1 (29 scored origins), 1.0 at lead 2 (28: the last one's target is past the end).
    assert report["per_series"]["c"]["raw_mae"] == pytest.approx((29 * 0.5 + 28 * 1.0) / 57)


@pytest.mark.parametrize("text, expected", [
    ("series,ts,value\na,1704067200,1\na,1704067200,99\n",
     "line 3: series 'a' at 1704067200 already has the value 1.0 on an earlier line"),
    ("series,ts,value\n,1704067200,1\n", "line 2: series name must be 1 to"),
    ("series,ts,value\na\x01,1704067200,1\n", "line 2: series name must contain only printable characters"),
    ("date,a\n2024-01-01,1\n20240102,2\n", "line 3: time '20240102' would be epoch seconds in 1970"),
    ("1704067200,1,2\n1704070800,3,4\n", "line 1 looks like data"),
])
def test_input_replay_would_misread_stops_it_with_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           text: str, expected: str) -> None:
    """A duplicate with another value, a name the socket refuses, a date written as a number,
    a file without its header: each was replayed silently (a value lost, or read wrong)."""
    data = tmp_path / "bad.csv"
    data.write_text(text)
    assert main(["replay", str(data), "--horizon", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_a_repeated_identical_line_is_harmless(tmp_path: Path) -> None:
    from adaptd.replay import load_table
    data = tmp_path / "twice.csv"
    data.write_text("series,ts,value\na,1704067200,1\na,1704067200,1\na,1704070800,2\n")
    assert load_table(data).values[:, 0].tolist() == [1.0, 2.0]


def test_the_naive_engine_replays_a_horizon_past_the_daemons_max_horizon(tmp_path: Path) -> None:
    data, config = tmp_path / "d.csv", tmp_path / "config.toml"
    config.write_text('[model]\nengine = "naive"\nmax_horizon = 8\n')
    write_wide(data, series(60))
    assert main(["replay", str(data), "--horizon", "20", "--config", str(config), "--no-progress"]) == 0


def test_a_line_that_is_not_utf8_is_named_by_its_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "latin1.csv"
    data.write_bytes(b"series,ts,value\na,1704067200,1\n" + b"a,1704070800,2\n" * 3000 + b"caf\xe9,1704067200,1\n")
    assert main(["replay", str(data), "--horizon", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "line 3003 is not UTF-8 text" in err and "Traceback" not in err
