"""`adaptd bench accuracy`: the leak-free runner, its scoring, the RLS baseline and the splits."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from adaptd.bench.accuracy import ModelError, ModelSpec, evaluate, render_markdown, run
from adaptd.bench.accuracy.baselines import RepeatLast, RLSAutoregression, SeasonalNaive, holt_winters
from adaptd.bench.accuracy.datasets import DataMissing, data_path, load_split, split_rows
from adaptd.bench.accuracy.report import add_arguments, main, plan_columns
from adaptd.bench.accuracy.runner import BenchContext, scored_origins
from adaptd.bench.accuracy.validate import main as validate_main


def _data_available(*datasets: str) -> bool:
    try:
        for ds in datasets:
            data_path(ds)
    except DataMissing:
        return False
    return True


needs_data = pytest.mark.skipif(not _data_available("etth2", "ettm1", "wth"),
                                reason="../shared/data (ETTh2.csv, ETTm1.csv, WTH.csv) is not present")


class Recorder:
    """Remembers everything it is given; every row carries its own index in channel 0."""

    name = "recorder"

    def __init__(self, n_channels: int):
        self.S = n_channels
        self.warmup: np.ndarray | None = None
        self.seen: list[float] = []
        self.asked: list[tuple[int, float]] = []  # (rows seen, newest row index) at each forecast

    def fit_warmup(self, Y: np.ndarray) -> None:
        self.warmup = Y
        assert not self.seen, "fit_warmup must come before any observation"

    def observe(self, y: np.ndarray) -> None:
        self.seen.append(float(y[0]))

    def forecast(self, horizon: int) -> np.ndarray:
        self.asked.append((len(self.seen), self.seen[-1]))
        return np.zeros((self.S, horizon))


def _indexed(T: int, S: int = 3) -> np.ndarray:
    """Row t holds t in every channel (plus a channel offset), so a row reveals its index."""
    return np.arange(T, dtype=float)[:, None] + 1000.0 * np.arange(S)[None, :]


@pytest.mark.parametrize("horizon", [1, 2, 5])
def test_each_forecast_sees_exactly_the_rows_up_to_its_origin(horizon: int) -> None:
    T, first, end = 40, 12, 35
    values = _indexed(T)
    model = Recorder(3)
    res = evaluate(model, values, first, end, horizon)
    assert model.warmup is not None
    np.testing.assert_array_equal(model.warmup, values[:first])           # warm-up rows only
    origins = list(scored_origins(first, end, horizon))
    assert origins[0] == first - 1 and origins[-1] + horizon == end - 1   # all H targets in [first, end)
    assert res.n_origins == len(origins) == len(model.asked)
    for origin, (n_seen, newest) in zip(origins, model.asked):
        assert n_seen == origin + 1 and newest == origin                  # rows 0..origin, nothing later
    assert model.seen == list(range(origins[-1] + 1))                     # in time order, never a future row
    assert max(model.seen) == end - 1 - horizon                            # the last origin


class Peeker:
    """Tries every route the API offers to reach data it has not been given."""

    name = "peeker"

    def __init__(self) -> None:
        self.buf: np.ndarray | None = None
        self.last: np.ndarray | None = None

    def fit_warmup(self, Y: np.ndarray) -> None:
        assert Y.base is None, "warm-up must be a copy, not a view into the full data"
        assert not Y.flags.writeable
        with pytest.raises(ValueError):
            Y[0, 0] = 1.0

    def observe(self, y: np.ndarray) -> None:
        assert y.base is None, "a row must be a copy, not a view into the full data"
        assert not y.flags.writeable
        if self.buf is not None:
            self.buf[:, 0] = y  # fill in the truth after the fact: must not change the score
        self.last = y

    def forecast(self, horizon: int) -> np.ndarray:
        assert self.last is not None
        self.buf = np.zeros((self.last.shape[0], horizon))
        return self.buf


def test_the_api_offers_no_way_to_peek() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=(60, 2))
    cheat = evaluate(Peeker(), values, 20, 60, 1)
    zero = np.mean(values[20:60] ** 2)  # the score of the zeros it returned at forecast time
    assert cheat.mse == pytest.approx(zero)


class Fixed:
    name = "fixed"

    def __init__(self, out: np.ndarray):
        self.out = out

    def fit_warmup(self, Y: np.ndarray) -> None:
        pass

    def observe(self, y: np.ndarray) -> None:
        pass

    def forecast(self, horizon: int) -> np.ndarray:
        return self.out


def test_protocol_violations_are_reported() -> None:
    values = np.zeros((10, 2))
    with pytest.raises(ModelError, match="shape"):
        evaluate(Fixed(np.zeros((3, 1))), values, 5, 10, 1)
    with pytest.raises(ModelError, match="non-finite"):
        evaluate(Fixed(np.full((2, 1), np.nan)), values, 5, 10, 1)


def test_scoring_by_hand() -> None:
    # Zero forecasts, so the errors are the targets. T=5, S=2, H=2, targets [2, 5): origins 1 and 2.
    values = np.array([[0, 0], [1, 2], [2, 4], [3, 6], [4, 8]], dtype=float)
    res = evaluate(Fixed(np.zeros((2, 2))), values, first_target=2, end=5, horizon=2)
    assert res.n_origins == 2
    # origin 1 -> rows 2,3: ch0 2,3  ch1 4,6 ; origin 2 -> rows 3,4: ch0 3,4  ch1 6,8
    assert res.mse == pytest.approx((4 + 9 + 16 + 36 + 9 + 16 + 36 + 64) / 8)   # 23.75
    assert res.mae == pytest.approx((2 + 3 + 4 + 6 + 3 + 4 + 6 + 8) / 8)        # 4.5
    assert res.mse_by_step == pytest.approx([(4 + 16 + 9 + 36) / 4, (9 + 36 + 16 + 64) / 4])
    assert res.mse_by_channel == pytest.approx([(4 + 9 + 9 + 16) / 4, (16 + 36 + 36 + 64) / 4])


def test_naive_baselines() -> None:
    values = np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [7.0]])
    res = evaluate(RepeatLast(), values, 3, 7, 1, keep_forecasts=True)
    assert res.forecasts is not None
    np.testing.assert_array_equal(res.forecasts[:, 0, 0], [3, 4, 5, 6])
    res = evaluate(SeasonalNaive(period=2), values, 3, 7, 3, keep_forecasts=True)
    assert res.forecasts is not None
    np.testing.assert_array_equal(res.forecasts[0, 0], [2, 3, 2])  # origin 2: y1, y2, y1


def _ar2(T: int, coefs: list[tuple[float, float]], noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    S = len(coefs)
    y = np.zeros((T, S))
    e = rng.normal(scale=noise, size=(T, S))
    a = np.array([c[0] for c in coefs])
    b = np.array([c[1] for c in coefs])
    for t in range(2, T):
        y[t] = a * y[t - 1] + b * y[t - 2] + e[t]
    return y


@pytest.mark.parametrize("mode", ["textbook", "relative", "raw"])
def test_rls_recovers_an_ar2_process(mode: str) -> None:
    coefs = [(0.6, -0.3), (1.2, -0.5)]
    noise = 0.1
    Y = _ar2(2500, coefs, noise)
    H = 2
    model = RLSAutoregression(n_lags=4, horizon=H, forgetting=1.0, mode=mode)
    res = evaluate(model, Y, 1500, 2500, H, keep_forecasts=True)
    assert res.forecasts is not None
    # The best possible forecasts are the conditional means; the learner should match them closely.
    origins = np.array(list(scored_origins(1500, 2500, H)))
    a = np.array([c[0] for c in coefs])
    b = np.array([c[1] for c in coefs])
    m1 = a * Y[origins] + b * Y[origins - 1]
    m2 = a * m1 + b * Y[origins]
    assert np.abs(res.forecasts[:, :, 0] - m1).max() < 0.03
    assert np.abs(res.forecasts[:, :, 1] - m2).max() < 0.05
    assert res.mse_by_step[0] == pytest.approx(noise ** 2, rel=0.15)


def test_rls_learns_a_target_only_once_observed() -> None:
    # A series that is 0 up to row 30 and 1 after: if any (x, y) pair with y in the future of the
    # origin were learned, forecasts made before row 30 would move away from 0.
    Y = np.zeros((60, 1))
    Y[30:] = 1.0
    model = RLSAutoregression(n_lags=3, horizon=4, forgetting=1.0, mode="textbook")
    res = evaluate(model, Y, 10, 60, 4, keep_forecasts=True)
    assert res.forecasts is not None
    before = [i for i, t in enumerate(scored_origins(10, 60, 4)) if t < 30]
    assert np.abs(res.forecasts[before]).max() == 0.0


def test_holt_winters_tracks_a_seasonal_series() -> None:
    t = np.arange(600)
    Y = np.stack([np.sin(2 * np.pi * t / 24), 0.5 * np.cos(2 * np.pi * t / 24) + 1.0], axis=1)
    ctx = BenchContext("synthetic", "fsnet", 6, ("a", "b"), 24, 3600.0, 300, 295, 600)
    res = evaluate(holt_winters(ctx), Y, 300, 600, 6)
    assert res.mse < 1e-3


def test_split_borders_without_data() -> None:
    assert split_rows("etth2", "fsnet", 17420) == (2880, 3600, 14400)
    assert split_rows("etth2", "dsof", 17420) == (2880, 3600, 14400)
    assert split_rows("ettm1", "fsnet", 69680) == (2880, 3600, 14400)
    assert split_rows("ettm1", "dsof", 69680) == (11520, 14400, 57600)
    assert split_rows("wth", "fsnet", 35064) == (7012, 8766, 35064)
    with pytest.raises(ValueError):
        split_rows("wth", "dsof", 35064)
    cols, skipped = plan_columns(["etth2", "ettm1", "wth"], [1, 24])
    assert [c.key for c in cols] == ["etth2/fsnet/H1", "ettm1/fsnet/H1", "wth/fsnet/H1",
                                     "etth2/dsof/H24", "ettm1/dsof/H24"]
    assert len(skipped) == 1 and "WTH H=24" in skipped[0]


@needs_data
@pytest.mark.parametrize("dataset,protocol,borders,shape,period", [
    ("etth2", "fsnet", (2880, 3600, 14400), (14400, 7), 24),
    ("ettm1", "fsnet", (2880, 3600, 14400), (14400, 7), 96),
    ("ettm1", "dsof", (11520, 14400, 57600), (57600, 7), 96),
    ("wth", "fsnet", (7012, 8766, 35064), (35064, 12), 24),
])
def test_splits_match_the_documented_rows(dataset: str, protocol: str, borders: tuple[int, int, int],
                                          shape: tuple[int, int], period: int) -> None:
    s = load_split(dataset, protocol)
    assert (s.train_end, s.val_end, s.test_end) == borders
    assert s.values.shape == shape and s.first_target == borders[1]
    assert s.period == period
    train = s.values[: s.train_end]
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-9)   # population std of train rows


def test_missing_data_fails_clearly(tmp_path, capsys) -> None:
    with pytest.raises(DataMissing, match="--data-dir"):
        load_split("etth2", "fsnet", tmp_path)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args(["--datasets", "etth2", "--data-dir", str(tmp_path)])) == 2
    assert "ETTh2" in capsys.readouterr().err


def test_an_unknown_model_is_refused_naming_the_engine_rows_too(tmp_path, capsys) -> None:
    from adaptd.bench.accuracy.engine_model import engine_specs
    from adaptd.config import load_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--datasets", "etth2", "--models", "adaptd,adaptd-adapt-from-nope",
                              "--data-dir", str(tmp_path)])
    assert main(args, extra_models=engine_specs(load_config(None))) == 2
    err = capsys.readouterr().err
    assert "unknown model 'adaptd-adapt-from-nope'" in err
    assert "adaptd-adapt-from-pretrained" in err and "rls-ar96" in err and "ETTh2" not in err


@pytest.mark.parametrize("argv, message", [
    (["--baselines", "rls-ar69"], "--baselines: unknown rls-ar69; choose from"),
    (["--datasets", "etth2,etth3"], "--datasets: unknown etth3; choose from etth2, ettm1, wth"),
    (["--horizon", "0"], "--horizon must be at least 1, got 0"),
    (["--variants", '{"a": {"rls_lag": 96}}'], "--variants a: rls_lag not OnlineConfig fields"),
    (["--variants", '{"a": 96}'], "--variants must look like"),
    (["--variants", "{a: 1}"], "--variants is not JSON"),
    (["--no-default"], "--no-default needs --variants"),
])
def test_validation_sweeps_reject_bad_arguments_before_reading_data(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit:
        validate_main(argv)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_a_validation_sweep_without_its_data_says_where_it_looked(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit:
        validate_main(["--datasets", "wth", "--baselines", "", "--data-dir", str(tmp_path)])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "WTH data not found" in err and str(tmp_path) in err and "Traceback" not in err


@needs_data
def test_report_takes_extra_models() -> None:
    class Zero:
        name = "zero"

        def __init__(self, S: int):
            self.S = S

        def fit_warmup(self, Y: np.ndarray) -> None:
            pass

        def observe(self, y: np.ndarray) -> None:
            pass

        def forecast(self, horizon: int) -> np.ndarray:
            return np.zeros((self.S, horizon))

    report = run([ModelSpec("zero", lambda c: Zero(c.n_channels))], datasets=["etth2"], horizons=[1],
                 baselines=["repeat-last"], log=lambda msg: None)
    cell = report.results["repeat-last"]["etth2/fsnet/H1"]
    assert cell.mse == pytest.approx(0.404, abs=0.001)          # BENCHMARK_ANCHORS' repeat-last row
    assert "etth2/fsnet/H1" in report.results["zero"]
    text = render_markdown(report)
    assert "| zero |" in text and "*published:* OneNet (NeurIPS 2023) | 0.380 |" in text


def test_the_engine_row_runs_the_daemon_engine_and_beats_repeat_last() -> None:
    """adaptd's row goes through OnlineEngine under the same runner as every baseline."""
    from adaptd.bench.accuracy.engine_model import engine_specs
    from adaptd.config import load_config
    from adaptd.engine.online import OnlineEngine

    rng = np.random.default_rng(0)
    T = 420
    t = np.arange(T)
    Y = np.stack([np.sin(2 * np.pi * t / 24) + 0.1 * rng.normal(size=T),
                  np.cos(2 * np.pi * t / 24) + 0.1 * rng.normal(size=T)], axis=1)
    ctx = BenchContext("synthetic", "fsnet", 1, ("a", "b"), 24, 3600.0, 300, T - 300, T)
    spec = {s.name: s for s in engine_specs(load_config(None))}["adaptd-init-pretrained"]
    model = spec.build(ctx)
    engine_row = evaluate(model, Y, 300, T, 1)
    assert isinstance(model.engine, OnlineEngine) and model.engine.init.kind == "pretrained"
    last = evaluate(RepeatLast(), Y, 300, T, 1)
    assert np.isfinite(engine_row.mse)
    assert engine_row.mse < last.mse


def test_the_meta_row_is_meta_trained_on_the_warm_up_rows_only() -> None:
    import torch

    from adaptd.bench.accuracy.engine_model import engine_specs
    from adaptd.config import parse_config

    rng = np.random.default_rng(1)
    T = 700
    t = np.arange(T)
    Y = np.stack([np.sin(2 * np.pi * t / 24 + k) + 0.1 * rng.normal(size=T) for k in range(4)], axis=1)
    changed = Y.copy()
    changed[500:] += 50.0   # the scored rows, changed as no initializer fitted on them would ignore
    ctx = BenchContext("synthetic", "fsnet", 1, tuple("abcd"), 24, 3600.0, 500, T - 500, T)
    settings = parse_config({"meta": {"iterations": 5, "meta_batch": 4, "validation_tasks": 16}})
    specs = {s.name: s for s in engine_specs(settings)}
    models = []
    for values in (Y, changed):   # through the runner, as the report runs it (a few scored rows)
        model = specs["adaptd"].build(ctx)
        evaluate(model, values, 500, 504, 1)
        models.append(model)
    first, second = models
    assert first.extra["init"] in ("meta", "pretrained")        # the better one on warm-up validation
    assert set(first.extra["init_validation"]) == {"meta-trained", "warm start"}
    # The same initializer whatever the scored rows hold: it never saw them.
    assert first.extra["init_validation"] == second.extra["init_validation"]
    assert first.engine.init.kind == second.engine.init.kind
    for name, weights in first.engine.init.params.items():
        assert torch.equal(weights, second.engine.init.params[name]), name
    assert {"adaptd-init-pretrained", "adaptd-init-random", "adaptd-no-adapt"} <= specs.keys()


def test_an_adapt_from_row_starts_series_from_the_configured_init_and_adapts_from_another() -> None:
    """Isolates the initializer's effect on adapting: same start as `adaptd`, another adaptation start."""
    import torch

    from adaptd.bench.accuracy.engine_model import engine_specs
    from adaptd.config import parse_config

    rng = np.random.default_rng(3)
    T = 700
    t = np.arange(T)
    Y = np.stack([np.sin(2 * np.pi * t / 24 + k) + 0.1 * rng.normal(size=T) for k in range(4)], axis=1)
    ctx = BenchContext("synthetic", "fsnet", 1, tuple("abcd"), 24, 3600.0, 500, T - 500, T)
    settings = parse_config({"meta": {"iterations": 5, "meta_batch": 4, "validation_tasks": 16}})
    specs = {s.name: s for s in engine_specs(settings)}
    assert {"adaptd-adapt-from-pretrained", "adaptd-adapt-from-random"} <= specs.keys()
    plain, isolated = specs["adaptd"].build(ctx), specs["adaptd-adapt-from-random"].build(ctx)
    for model in (plain, isolated):
        model.fit_warmup(Y[:500].copy())
        model.observe(Y[0])
    assert isolated.extra["init"] == plain.extra["init"] and isolated.extra["adapt_from"] == "random"
    assert isolated.engine.init.kind == "random"          # where its adaptations start
    for name, weights in plain.engine.gru.rows(np.arange(4)).items():    # where its series started
        assert torch.equal(weights, isolated.engine.gru.rows(np.arange(4))[name])
    assert not torch.equal(isolated.engine.init.params["head"], plain.engine.init.params["head"])


def test_after_change_errors_are_scored_on_the_same_cells_for_every_row() -> None:
    from adaptd.bench.accuracy.report import BenchReport, Column, _score_after_changes, render_markdown

    class Detector(RepeatLast):
        def drift_rows(self) -> list[tuple[int, int]]:
            return [(1, 310), (0, 395)]   # channel 0 near the end: its window is cut at the last origin

    rng = np.random.default_rng(2)
    Y = rng.normal(size=(400, 2)).cumsum(axis=0)
    rows = [evaluate(Detector(), Y, 300, 400, 1), evaluate(SeasonalNaive(24), Y, 300, 400, 1)]
    _score_after_changes({"adaptd": rows[0], "adaptd-no-adapt": rows[1]}, 299, 24)
    cells = np.zeros((len(scored_origins(300, 400, 1)), 2), dtype=bool)
    cells[310 - 299: 334 - 299, 1] = True
    cells[395 - 299:, 0] = True
    for res in rows:
        assert res.extra["after_changes_mse"] == pytest.approx(res.origin_mse[cells].mean())
        assert res.extra["after_changes_share"] == pytest.approx(cells.mean())
    assert rows[0].extra["changes_detected"] == 2 and rows[1].extra["changes_detected"] == 0
    # The paired ratio on those cells; two episodes are too few for an interval.
    paired = rows[0].extra["after_changes_vs"]["adaptd-no-adapt"]
    ratio = rows[0].origin_mse[cells].mean() / rows[1].origin_mse[cells].mean()
    assert paired["ratio"] == pytest.approx(ratio) and paired["episodes"] == 2
    assert paired["lo"] is None and paired["better"] + paired["worse"] == 1.0
    assert "after_changes_vs" not in rows[1].extra
    column = Column("etth2", "fsnet", 1)
    report = BenchReport(date="", command="", machine={}, columns=[column], splits={}, row_names={}, descriptions={},
                         results={"adaptd": {column.key: rows[0]}, "adaptd-no-adapt": {column.key: rows[1]}})
    line = next(x for x in render_markdown(report).splitlines() if x.startswith("| adaptd / adaptd-no-adapt |"))
    assert f"| {ratio:.3f}, better in" in line and "of 2 |" in line


def test_the_overall_paired_ratio_resamples_blocks_of_time_and_is_rendered() -> None:
    from adaptd.bench.accuracy.report import BenchReport, Column, _score_paired_overall, render_markdown

    rng = np.random.default_rng(6)
    Y = rng.normal(size=(600, 2)).cumsum(axis=0)   # a random walk: repeating the last value wins
    rows = {"adaptd": evaluate(RepeatLast(), Y, 300, 600, 1), "adaptd-no-adapt": evaluate(SeasonalNaive(24), Y, 300, 600, 1)}
    _score_paired_overall(rows, 48)
    paired = rows["adaptd"].extra["all_vs"]["adaptd-no-adapt"]
    n = rows["adaptd"].origin_mse.shape[0]
    assert paired["episodes"] == n // 48                         # a short remainder joins the last block
    assert paired["ratio"] == pytest.approx(rows["adaptd"].mse / rows["adaptd-no-adapt"].mse)
    assert paired["lo"] < paired["ratio"] < paired["hi"] < 1.0   # measurably better
    assert "all_vs" not in rows["adaptd-no-adapt"].extra
    column = Column("etth2", "fsnet", 1)
    report = BenchReport(date="", command="", machine={}, columns=[column], splits={}, row_names={}, descriptions={},
                         results={name: {column.key: res} for name, res in rows.items()})
    text = render_markdown(report)
    line = next(x for x in text.splitlines() if x.startswith("| adaptd / adaptd-no-adapt |"))
    assert text.index("## Paired over all scored cells") < text.index(line)
    assert f"| {paired['ratio']:.3f} [{paired['lo']:.3f}, {paired['hi']:.3f}], better in" in line


def test_after_change_ratios_resample_changes_that_coincide_across_channels_as_one() -> None:
    from adaptd.bench.accuracy.report import _score_after_changes

    starts = [310, 330, 350, 370, 390, 410, 430, 450]

    class Detector(RepeatLast):
        def drift_rows(self) -> list[tuple[int, int]]:   # both channels at once, then channel 0 alone
            return [(0, starts[0]), (1, starts[0])] + [(0, row) for row in starts[1:]]

    rng = np.random.default_rng(4)
    Y = rng.normal(size=(500, 2)).cumsum(axis=0)
    rows = {"adaptd": evaluate(Detector(), Y, 300, 500, 1), "adaptd-no-adapt": evaluate(SeasonalNaive(24), Y, 300, 500, 1)}
    _score_after_changes(rows, 299, 10)
    paired = rows["adaptd"].extra["after_changes_vs"]["adaptd-no-adapt"]
    assert paired["episodes"] == len(starts)        # the two channels' first change is one episode
    assert paired["lo"] < paired["ratio"] < paired["hi"]
    cells = np.zeros_like(rows["adaptd"].origin_mse, dtype=bool)
    for start in starts:
        cells[start - 299:start - 289, 0] = True
    cells[starts[0] - 299:starts[0] - 289, 1] = True
    mse = {name: res.origin_mse[cells].sum() for name, res in rows.items()}
    assert paired["ratio"] == pytest.approx(mse["adaptd"] / mse["adaptd-no-adapt"])


def test_validation_sweeps_print_each_variant_after_changes_over_the_first_with_its_interval(capsys) -> None:
    from adaptd.bench.accuracy.validate import _print_after_changes

    starts = [310, 330, 350, 370, 390, 410]

    class Detector(RepeatLast):
        def drift_rows(self) -> list[tuple[int, int]]:
            return [(0, row) for row in starts]

    rng = np.random.default_rng(5)
    Y = rng.normal(size=(450, 2)).cumsum(axis=0)
    results = {"default": evaluate(Detector(), Y, 300, 450, 1), "seasonal": evaluate(SeasonalNaive(24), Y, 300, 450, 1)}
    _print_after_changes("etth2 H=1", results, 299, 10)
    default, seasonal = capsys.readouterr().out.splitlines()
    assert default.startswith("etth2 H=1: default after detected changes") and " / " not in default
    cells = np.zeros_like(results["default"].origin_mse, dtype=bool)
    for start in starts:
        cells[start - 299:start - 289, 0] = True
    ratio = results["seasonal"].origin_mse[cells].sum() / results["default"].origin_mse[cells].sum()
    assert f"/ default {ratio:.3f} [" in seasonal and "over 6 episodes" in seasonal
