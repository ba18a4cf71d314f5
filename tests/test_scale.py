"""Scaling studies: the ``scale:`` section, the transfer phase, the bootstrap interval of the
optimum, the power-law fit, the tables; and one scaling study on digits end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from normstudy.results import TrialScore
from normstudy.scaling import (
    Configuration,
    analyze,
    bootstrap_draws,
    bootstrap_optimum,
    configurations,
    metric_rows,
    point_specs,
    power_law_fit,
    scaling_figures,
    scaling_tables,
    transfer_spec,
)
from normstudy.search._space import num_trials
from normstudy.spec import SpecError, load_spec, resolve_config
from normstudy.spec._scale import scale_points

BATCHES = "scale.train.batch_size=[16, 32]"
G, LR = "plugins.gamma_init.value", "train.lr"


def _spec(quickstart: Path, *more: str):
    return load_spec(quickstart, [BATCHES, *more])


def test_each_scale_point_is_the_study_with_its_values(quickstart: Path) -> None:
    spec = _spec(quickstart, "scale.model.name=[test_resnet, resnet10t]")
    assert spec.scale == {"train.batch_size": [16, 32], "model.name": ["test_resnet", "resnet10t"]}
    assert scale_points(spec)[1] == {"train.batch_size": 16, "model.name": "resnet10t"}
    parts = point_specs(spec)
    assert [p.name for p in parts] == [f"quickstart-s{i}" for i in range(4)]
    last = parts[-1]
    assert (last.train.batch_size, last.model.name) == (32, "resnet10t")
    assert last.scale_of == "quickstart" and last.scale == {}
    assert last.scale_point == {"train.batch_size": 32, "model.name": "resnet10t"}
    assert last.search == spec.search  # same space and budget at every point


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("scale.train.batch_size=[32, 16]", "smallest to largest"),
        ("scale.train.batch_size=[16, 16]", "listed twice"),
        ("scale.train.batch_size=[16]", "at least 2"),
        ("scale.train.lr=[0.1, 0.2]", "also in search.space"),
        ("scale.train.batch_sizes=[1, 2]", "scale['train.batch_sizes']: no config field"),
        ("scale.seed=[1, 2]", "a scale axis is a config field"),
        ("scale.plugins.noise.sigma=[0.1, 0.2]", "not enabled"),
        ("scale.model.name=[test_resnet, no_such_net]", "scale point 1 (model.name=no_such_net)"),
        ("scale.train.batch_size=[0, 16]", "scale point 0 (train.batch_size=0)"),
    ],
)
def test_bad_scale_axes_name_the_axis(quickstart: Path, override: str, says: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(quickstart, [override])
    assert says in str(err.value)


def test_the_transfer_phase_runs_each_optimum_and_the_smallest_one(quickstart: Path) -> None:
    spec = _spec(quickstart, "seeds=[1, 2, 3]")
    optima = [{G: 0.1, LR: 0.05}, {G: 0.2, LR: 0.1}]
    transfer = transfer_spec(spec, optima)
    assert transfer.name == "quickstart-transfer" and transfer.scale_of == "quickstart"
    assert list(transfer.configs) == ["own-s0", "own-s1", "transfer-s1"]
    assert transfer.search.sampler == "grid" and num_trials(transfer) == 3 * 3
    base = transfer.trial_base()
    moved = resolve_config(base, {"configuration": "transfer-s1", "seed": 2})
    assert moved["train"]["batch_size"] == 32 and moved["train"]["lr"] == 0.05
    assert moved["plugins"]["gamma_init"]["value"] == 0.1
    own = resolve_config(base, {"configuration": "own-s1"})
    assert (own["train"]["batch_size"], own["train"]["lr"]) == (32, 0.1)


def test_a_variant_optimum_transfers_without_a_variant_axis(quickstart: Path) -> None:
    spec = _spec(
        quickstart,
        "variants={plain: {}, small: {gamma_init: {value: 0.1}}}",
        "search.space.variant={type: categorical, choices: [plain, small]}",
        f"search.space={{{LR}: {{type: loguniform, low: 0.005, high: 0.2}}, "
        "variant: {type: categorical, choices: [plain, small]}}",
    )
    transfer = transfer_spec(spec, [{LR: 0.05, "variant": "small"}, {LR: 0.1, "variant": "plain"}])
    moved = resolve_config(
        transfer.trial_base(), {"configuration": "transfer-s1"}, transfer.variants
    )
    assert moved["variant"] == "small" and moved["plugins"]["gamma_init"]["value"] == 0.1


def test_bootstrap_of_two_configurations_by_hand() -> None:
    # The better one (lr 0.1) is the optimum unless a resample draws the worse one twice:
    # P = 1/4, so the 2.5 % and 97.5 % percentiles are 0.1 and 0.2.
    configs = [Configuration({"lr": 0.1}, [0.9]), Configuration({"lr": 0.2}, [0.5])]
    interval = bootstrap_optimum(configs, "max", resamples=4000, seed=3)["lr"]
    assert (interval.low, interval.high) == (0.1, 0.2)
    assert bootstrap_optimum(configs, "min", resamples=4000, seed=3)["lr"].low == 0.1
    same = [Configuration({"lr": 0.3}, [0.1]), Configuration({"lr": 0.3}, [0.2])]
    assert bootstrap_optimum(same, "max")["lr"].high == 0.3
    # Seeded: the same data give the same interval.
    assert bootstrap_optimum(configs, "max", seed=5) == bootstrap_optimum(configs, "max", seed=5)


def test_bootstrap_resamples_the_seeds_of_a_configuration() -> None:
    # lr 0.1 wins on its mean (0.7), but drawn with its seed 0.4 twice (P 1/4) it loses to lr
    # 0.2's 0.6. lr 0.2 is the optimum when both draws are lr 0.2 (1/4), or one of each (1/2)
    # with that resample of lr 0.1's seeds (1/4): P = 1/4 + 1/2 · 1/4 = 3/8.
    configs = [Configuration({"lr": 0.1}, [1.0, 0.4]), Configuration({"lr": 0.2}, [0.6])]
    best = bootstrap_draws(configs, "max", resamples=8000, seed=1)
    assert abs(float(np.mean(best == 1)) - 3 / 8) < 0.02  # 4 standard errors
    interval = bootstrap_optimum(configs, "max", resamples=8000, seed=1)["lr"]
    assert (interval.low, interval.high) == (0.1, 0.2)


def test_power_law_on_exact_data_gives_the_exponent() -> None:
    scales = [128.0, 256.0, 512.0, 1024.0]
    law = power_law_fit(scales, [3.0 * s**-0.5 for s in scales])
    assert law.b == pytest.approx(-0.5, abs=1e-12) and law.a == pytest.approx(3.0, rel=1e-12)
    assert law.b_interval is not None and law.b_interval.high - law.b_interval.low < 1e-9
    assert law(64.0) == pytest.approx(3.0 / 8.0)
    assert power_law_fit([16.0, 32.0], [0.1, 0.2]).b_interval is None  # two points: no dof


def test_power_law_interval_by_hand() -> None:
    s, h = [1.0, 2.0, 4.0, 8.0], [1.0, 2.2, 3.9, 8.5]
    x, y = np.log(s), np.log(h)
    b = np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2)
    a = y.mean() - b * x.mean()
    resid = y - a - b * x
    se = math.sqrt(np.sum(resid**2) / (len(x) - 2) / np.sum((x - x.mean()) ** 2))
    t = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2)
    law = power_law_fit(s, h)
    assert law.b == pytest.approx(b) and law.a == pytest.approx(math.exp(a))
    assert law.b_interval is not None
    assert law.b_interval.low == pytest.approx(b - t * se)
    assert law.b_interval.high == pytest.approx(b + t * se)
    with pytest.raises(ValueError, match="positive"):
        power_law_fit([1.0, 2.0], [0.0, 1.0])


def _trial(name: str, score: float, config: dict, seed: int = 1) -> TrialScore:
    return TrialScore(name, seed, "completed", score, 1, 1, {**config, "seed": seed})


def _synthetic(quickstart: Path):
    spec = load_spec(quickstart, ["scale.train.batch_size=[16, 32, 64]"])
    searches = [
        [
            _trial(f"p{i}a", 0.9, {G: 0.1 * 2**i, LR: 0.05}),
            _trial(f"p{i}b", 0.5, {G: 0.4, LR: 0.2}),
        ]
        for i in range(3)
    ]
    transfer = [
        _trial(f"t{name}{seed}", score + seed / 100, {"configuration": name}, seed)
        for name, score in [("own-s0", 0.9), ("own-s1", 0.8), ("transfer-s1", 0.7),
                            ("own-s2", 0.6), ("transfer-s2", 0.5)]
        for seed in (1, 2)
    ]  # fmt: skip
    return analyze(spec, searches, transfer)


def test_tables_of_a_scaling_study(quickstart: Path) -> None:
    analysis = _synthetic(quickstart)
    assert [p.optimum[G] for p in analysis.points] == [0.1, 0.2, 0.4]
    fit = next(f for f in analysis.fits if f.key == G)
    assert fit.law is not None and fit.law.b == pytest.approx(1.0)  # h* = 0.1 · (s/16)
    assert fit.law.a == pytest.approx(0.1 / 16)
    lr_fit = next(f for f in analysis.fits if f.key == LR)
    assert lr_fit.law is not None and lr_fit.law.b == pytest.approx(0.0, abs=1e-12)
    tables = scaling_tables(analysis)
    optima = tables["scaling_optima"].records()
    assert [r[G] for r in optima] == [0.1, 0.2, 0.4]
    assert [r["train.batch_size"] for r in optima] == [16, 32, 64]
    assert optima[0][f"{G} 2.5%"] == 0.1 and optima[0][f"{G} 97.5%"] == 0.4
    rows = tables["scaling_transfer"].records()
    assert rows[0]["optimum val/acc"] == rows[0]["transferred val/acc"]
    assert rows[2]["optimum val/acc"].mean == pytest.approx(0.615)
    assert rows[2]["transferred val/acc"].mean == pytest.approx(0.515)
    assert rows[2]["transferred − optimum"] == pytest.approx(-0.1)
    fits = tables["scaling_fit"].records()
    assert {(r["key"], r["axis"]) for r in fits} == {
        (G, "train.batch_size"),
        (LR, "train.batch_size"),
    }


def test_configurations_group_seeds_and_skip_unscored() -> None:
    scores = [
        _trial("a", 0.5, {"lr": 0.1}, 1),
        _trial("b", 0.7, {"lr": 0.1}, 2),
        TrialScore("c", 1, "error", None, None, 0, {"lr": 0.3}),
    ]
    (only,) = configurations(scores, ["lr"])
    assert only.values == {"lr": 0.1} and only.scores == [0.5, 0.7]


FAST = [
    "search.num_samples=2",
    "train.epochs=2",
    "train.max_steps_per_epoch=3",
    "dataset.image_size=8",
    "search.scheduler.name=fifo",
    "search.n_startup_trials=2",
    "train.schedule.warmup_epochs=0",
    "evaluation.evalmode_train_samples=64",
    "train.eval_batch_size=256",
    "train.threads=1",
    BATCHES,
]


@pytest.mark.integration
@pytest.mark.slow
def test_a_scaling_study_on_digits_runs_and_reports(quickstart: Path, tmp_path: Path) -> None:
    from normstudy.home import StudyPaths
    from normstudy.results import read_results, trial_scores
    from normstudy.scaling import load_analysis
    from normstudy.storage import as_location

    home, out = tmp_path / "home", tmp_path / "reports"
    args = [a for item in FAST for a in ("--set", item)]
    run = subprocess.run(
        [sys.executable, "-m", "normstudy", "run", str(quickstart), "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = subprocess.run(
        [sys.executable, "-m", "normstudy", "report", "quickstart", "--home", str(home),
         "--out", str(out), "--format", "csv", "--format", "md", "--figures"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert {p.name for p in out.iterdir()} >= {
        f"{t}.{ext}" for t in ("scaling_optima", "scaling_fit", "scaling_transfer")
        for ext in ("csv", "md")
    }  # fmt: skip
    import csv

    rows = list(csv.DictReader((out / "scaling_optima.csv").open()))
    assert [int(r["train.batch_size"]) for r in rows] == [16, 32]
    spec = load_spec(StudyPaths(as_location(home), "quickstart").spec_file)
    for i, row in enumerate(rows):
        scores = trial_scores(read_results(home / f"quickstart-s{i}" / "results"), "val/acc", "max")
        assert len(scores) == 2 and all(s.config["train.batch_size"] == 16 * 2**i for s in scores)
        best = scores[0]
        assert float(row["best val/acc"]) == pytest.approx(best.score)
        for key in (G, "plugins.lr_divisor.gamma", LR):
            assert float(row[key]) == pytest.approx(best.config[key])
    transfer = read_results(home / "quickstart-transfer" / "results").to_pylist()
    assert {r["config.configuration"] for r in transfer} == {"own-s0", "own-s1", "transfer-s1"}
    assert spec.scale == {"train.batch_size": [16, 32]}
    status = subprocess.run(
        [sys.executable, "-m", "normstudy", "status", "quickstart", "--home", str(home),
         "--format", "json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (record,) = json.loads(status.stdout)  # the scaling study counts its parts' trials
    assert record["trials"] == 4 + len({r["trial_id"] for r in transfer})
    assert record["done"] == record["trials"] and "3 parts" in record["job"]
    # The figure draws what the Parquet says: each point's optimum, the transfer's means.
    figures = {p.name for p in (out / "figures").iterdir()}
    stem = "scaling-plugins-gamma_init-value-vs-train-batch_size"
    assert {f"{stem}.png", f"{stem}.pdf", "scaling-val-acc-vs-train-batch_size.png"} <= figures
    drawn = {s: f for s, _, f in scaling_figures(load_analysis(spec, as_location(home)))}
    offsets = drawn[stem].axes[0].collections[0].get_offsets().tolist()
    assert offsets == [[16 * 2**i, float(row[G])] for i, row in enumerate(rows)]
    series = {
        c.get_label(): c.lines[0]
        for c in drawn["scaling-val-acc-vs-train-batch_size"].axes[0].containers
    }
    own = [
        np.mean(
            [r["score"] for r in _best_per_trial(transfer) if r["configuration"] == f"own-s{i}"]
        )
        for i in range(2)
    ]
    assert list(series["own optimum"].get_ydata()) == pytest.approx(own)


def _best_per_trial(rows: list[dict]) -> list[dict]:
    best: dict[str, dict] = {}
    for r in rows:
        if r["val/acc"] is None:
            continue
        seen = best.get(r["trial_id"])
        if seen is None or r["val/acc"] > seen["score"]:
            best[r["trial_id"]] = {
                "score": r["val/acc"],
                "configuration": r["config.configuration"],
            }
    return list(best.values())


def test_a_constant_optimum_has_exponent_zero_and_a_zero_width_interval() -> None:
    law = power_law_fit([16.0, 32.0, 64.0], [0.1, 0.1, 0.1])
    assert law.b == 0.0 and law.a == pytest.approx(0.1) and law.r2 == 1.0
    assert law.b_interval is not None and law.b_interval.low == law.b_interval.high == 0.0


def test_scaling_figures_draw_the_computed_values(quickstart: Path) -> None:
    analysis = _synthetic(quickstart)
    drawn = {stem: figure for stem, _, figure in scaling_figures(analysis)}
    ax = drawn["scaling-plugins-gamma_init-value-vs-train-batch_size"].axes[0]
    assert ax.collections[0].get_offsets().tolist() == [[16, 0.1], [32, 0.2], [64, 0.4]]
    (fit_line,) = [line for line in ax.lines if line.get_label().startswith("fit")]
    law = next(f.law for f in analysis.fits if f.key == G)
    assert law is not None
    xs = fit_line.get_xdata()
    assert list(fit_line.get_ydata()) == pytest.approx([law(x) for x in xs])
    bars = np.array([seg.tolist() for seg in ax.collections[1].get_segments()])
    expected = [
        [[p.point["train.batch_size"], p.intervals[G].low],
         [p.point["train.batch_size"], p.intervals[G].high]]
        for p in analysis.points
    ]  # fmt: skip
    np.testing.assert_allclose(bars, expected, rtol=1e-12)
    ax = drawn["scaling-val-acc-vs-train-batch_size"].axes[0]
    series = {c.get_label(): c.lines[0] for c in ax.containers}
    assert set(series) == {"own optimum", "transferred optimum"}
    for name, attribute in (("own optimum", "own"), ("transferred optimum", "transferred")):
        cells = [getattr(t, attribute) for t in analysis.transfer]
        assert list(series[name].get_xdata()) == [16, 32, 64]
        assert list(series[name].get_ydata()) == pytest.approx([c.mean for c in cells])
    rows = metric_rows(analysis, "train.batch_size")
    assert {(r["variant"], r["scale"]): r["std"] for r in rows}[("own optimum", 64)] == (
        pytest.approx(analysis.transfer[2].own.std)
    )


def test_the_transfer_phase_counts_the_same_when_read_back(quickstart: Path) -> None:
    from normstudy.spec import validate_data

    transfer = transfer_spec(_spec(quickstart, "seeds=[1, 2, 3, 4]"), [{G: 0.1}, {G: 0.2}])
    again = validate_data(transfer.model_dump(mode="json"))
    assert num_trials(again) == num_trials(transfer) == 3 * 4
