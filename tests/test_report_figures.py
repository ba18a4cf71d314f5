"""Figures: what each draws equals the Parquet values; files are written, non-empty, PNG and PDF."""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path
from typing import Any

import optuna
import pyarrow.parquet as pq
import pytest

from normstudy.report import (
    Axis,
    FigureInput,
    figure_kinds,
    fit_power_law,
    learning_curves,
    metric_vs_scale,
    optimum_vs_scale,
    score_vs_params,
    write_figures,
)
from normstudy.results import ResultsSink, make_row, read_results
from normstudy.storage import as_location

GAMMA, LR, VARIANT = "plugins.gamma_init.value", "train.lr", "variant"
EPOCHS = 4
# (γ init, lr, variant) per configuration; three seeds each.
CONFIGS = [(0.1, 0.05, "bn"), (0.5, 0.002, "bn"), (1.0, 0.2, "pn")]
SEEDS = [7, 8, 9]


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    rng = random.Random(5)
    sink = ResultsSink(tmp_path / "results")
    for c, (gamma, lr, variant) in enumerate(CONFIGS):
        for seed in SEEDS:
            config = {
                "train": {"lr": lr, "seed": seed},
                "plugins": {"gamma_init": {"value": gamma}},
                "variant": variant,
            }
            # The last configuration's last seed was stopped early (ASHA): fewer epochs.
            epochs = EPOCHS - 2 if (c, seed) == (2, 9) else EPOCHS
            rows = [
                make_row(
                    study="figs", trial_id=f"c{c}s{seed}", seed=seed, epoch=e, config=config,
                    metrics={"val/acc": rng.uniform(0.3, 0.9), "train/loss": rng.uniform(0.1, 2)},
                )
                for e in range(1, epochs + 1)
            ]  # fmt: skip
            sink.update(f"c{c}s{seed}", rows, "stopped" if epochs < EPOCHS else "completed")
    return tmp_path / "results"


def _parquet_rows(folder: Path) -> list[dict[str, Any]]:
    """The rows as the Parquet files hold them, read without normstudy."""
    return [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_learning_curves_draw_the_mean_and_band_over_seeds(results_dir: Path) -> None:
    table = read_results(results_dir)
    figure = learning_curves(table, ["val/acc", "train/loss"], metric="val/acc", mode="max")
    rows = _parquet_rows(results_dir)
    axes = {ax.get_title(): ax for ax in figure.axes if ax.get_visible()}
    assert set(axes) == {"val/acc", "train/loss"}
    for metric, ax in axes.items():
        lines = ax.get_lines()
        assert len(lines) == len(CONFIGS)
        for line in lines:
            gamma = float(line.get_label().split("γ init=")[1].split(",")[0])
            values: dict[int, list[float]] = {}
            for r in rows:
                if r[f"config.{GAMMA}"] == gamma:
                    values.setdefault(r["epoch"], []).append(r[metric])
            epochs = sorted(values)
            xy = line.get_xydata()
            assert [int(x) for x in xy[:, 0]] == epochs
            assert list(xy[:, 1]) == pytest.approx([statistics.fmean(values[e]) for e in epochs])
            band = next(c for c in ax.collections if tuple(c.get_facecolor()[0][:3]) == _rgb(line))
            ys = band.get_paths()[0].vertices
            for e in epochs:
                at = sorted({round(y, 12) for x, y in ys if x == e})
                mean = statistics.fmean(values[e])
                spread = statistics.stdev(values[e]) if len(values[e]) > 1 else 0.0
                assert at[0] == pytest.approx(mean - spread) and at[-1] == pytest.approx(
                    mean + spread
                )


def _flat(points: Any) -> list[float]:
    return [float(v) for point in points for v in point]


def _rgb(line: Any) -> tuple[float, ...]:
    from matplotlib.colors import to_rgb

    return tuple(to_rgb(line.get_color()))


def test_score_vs_params_plots_each_trial_on_log_and_category_axes(results_dir: Path) -> None:
    table = read_results(results_dir)
    space = {GAMMA: Axis(log=True), LR: Axis(log=True), VARIANT: Axis(categorical=True)}
    figure = score_vs_params(table, "val/acc", "max", space)
    rows = _parquet_rows(results_dir)
    best: dict[str, dict[str, Any]] = {}
    for r in rows:  # each trial's best val/acc and its config
        if r["trial_id"] not in best or r["val/acc"] > best[r["trial_id"]]["val/acc"]:
            best[r["trial_id"]] = r
    panels = [ax for ax in figure.axes if ax.get_xlabel() in ("γ init", "lr", "variant")]
    assert [ax.get_xlabel() for ax in panels] == ["γ init", "lr", "variant"]
    levels = sorted({r[f"config.{VARIANT}"] for r in best.values()})
    for ax, key in zip(panels, space, strict=True):
        points = sorted(tuple(map(float, p)) for c in ax.collections for p in c.get_offsets())
        if key == VARIANT:
            x = [float(levels.index(r[f"config.{key}"])) for r in best.values()]
            assert [t.get_text() for t in ax.get_xticklabels()] == levels
        else:
            x = [r[f"config.{key}"] for r in best.values()]
            assert ax.get_xscale() == "log"
        expected = sorted(zip(x, [r["val/acc"] for r in best.values()], strict=True))
        assert _flat(points) == pytest.approx(_flat(expected))
    # γ init is coloured by lr (a log colour scale), the variant panel by γ init.
    assert any(ax.get_ylabel() == "lr" for ax in figure.axes)


def test_write_figures_writes_non_empty_png_and_pdf(results_dir: Path, tmp_path: Path) -> None:
    data = FigureInput(
        "figs", read_results(results_dir), [("val/acc", "max")],
        {GAMMA: Axis(log=True), LR: Axis(log=True)},
    )  # fmt: skip
    out = as_location(tmp_path / "figures")
    written = write_figures(data, out)
    names = sorted(p.name for p in written.paths)
    assert names == ["curves.pdf", "curves.png", "params.pdf", "params.png"]
    for path in written.paths:
        blob = path.read_bytes()
        assert len(blob) > 1000
        assert blob.startswith(b"\x89PNG" if path.name.endswith("png") else b"%PDF")
    assert written.skipped == ["optuna: no Optuna storage given"]
    assert written.files[0].files == ("figures/curves.png", "figures/curves.pdf")
    assert "optuna" in figure_kinds() and "optuna" not in figure_kinds(cheap_only=True)
    with pytest.raises(ValueError, match="unknown figure kind"):
        write_figures(data, out, ["nope"])


def _optuna_study(tmp_path: Path, directions: list[str]) -> str:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="figs", storage=url, directions=directions)
    sampler_rng = random.Random(1)
    for _ in range(8):
        trial = study.ask()
        g = trial.suggest_float(GAMMA, 0.01, 1.0, log=True)
        lr = trial.suggest_float(LR, 0.001, 0.3, log=True)
        value = math.log(g) - (math.log(lr) + 3) ** 2 + sampler_rng.random()
        study.tell(trial, [value, -value + sampler_rng.random()][: len(directions)])
    return url


def test_optuna_plots_of_one_objective(tmp_path: Path, results_dir: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = _optuna_study(tmp_path, ["maximize"])
    study = optuna.load_study(study_name="figs", storage=url)
    data = FigureInput(
        "figs", read_results(results_dir), [("val/acc", "max")],
        optuna=lambda: optuna.load_study(study_name="figs", storage=url),
    )  # fmt: skip
    written = write_figures(data, as_location(tmp_path / "out"), ["optuna"], ["png"])
    stems = [f.name for f in written.files]
    assert stems == ["optuna-importances", "optuna-slice", "optuna-contour"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written.paths)
    # The slice plot's points are the trials' parameters and values.
    from normstudy.report._optuna_plots import optuna_figures

    drawn = {stem: figure for stem, _, figure in optuna_figures(study, ["val/acc"])}
    slice_axes = [ax for ax in drawn["optuna-slice"].axes if ax.collections and ax.get_xlabel()]
    assert sorted(ax.get_xlabel() for ax in slice_axes) == ["lr", "γ init"]  # short labels
    for ax in slice_axes:
        key = GAMMA if ax.get_xlabel() == "γ init" else LR
        points = sorted(tuple(map(float, p)) for p in ax.collections[0].get_offsets())
        expected = sorted((t.params[key], t.value) for t in study.trials)
        assert _flat(points) == pytest.approx(_flat(expected))


def test_optuna_plots_of_two_objectives_include_the_pareto_front(tmp_path: Path) -> None:
    url = _optuna_study(tmp_path, ["maximize", "minimize"])
    study = optuna.load_study(study_name="figs", storage=url)
    from normstudy.report._optuna_plots import optuna_figures

    drawn = {stem: figure for stem, _, figure in optuna_figures(study, ["val/acc", "val/ece"])}
    assert list(drawn) == [
        "optuna-importances-val-acc", "optuna-importances-val-ece", "optuna-pareto"
    ]  # fmt: skip
    (ax,) = [a for a in drawn["optuna-pareto"].axes if a.collections]
    points = sorted(tuple(map(float, p)) for c in ax.collections for p in c.get_offsets())
    assert _flat(points) == pytest.approx(_flat(sorted(tuple(t.values) for t in study.trials)))


def test_a_missing_optuna_storage_is_skipped_without_creating_one(
    tmp_path: Path, results_dir: Path, quickstart: Path
) -> None:
    from normstudy.home import StudyPaths
    from normstudy.spec import load_spec

    paths = StudyPaths(as_location(tmp_path / "home"), "quickstart")
    data = FigureInput.of(load_spec(quickstart), paths, read_results(results_dir))
    assert data.space[GAMMA] == Axis(log=True)
    written = write_figures(data, as_location(tmp_path / "out"), ["optuna"])
    assert written.paths == [] and "no Optuna storage" in written.skipped[0]
    assert not paths.optuna_db.exists()


def test_scaling_figures_take_plain_tables() -> None:
    scales = [32.0, 64.0, 128.0, 256.0, 512.0]
    optima = [3.0 * s**-0.5 for s in scales]
    fit = fit_power_law(scales, optima)
    assert (fit.a, fit.b, fit.r2) == pytest.approx((3.0, -0.5, 1.0))
    figure = optimum_vs_scale(scales, optima, scale_label="batch size", optimum_label="lr")
    (ax,) = figure.axes
    points = sorted(map(tuple, ax.collections[0].get_offsets()))
    assert _flat(points) == pytest.approx(_flat(zip(scales, optima, strict=True)))
    line = ax.get_lines()[0]
    assert list(line.get_ydata()) == pytest.approx([fit(x) for x in line.get_xdata()])
    assert ax.get_xscale() == ax.get_yscale() == "log"
    rows = [
        {"variant": v, "scale": s, "mean": m, "std": d}
        for v, points in {"bn": [(8, 0.9, 0.01), (64, 0.92, 0.02)], "gn": [(8, 0.88, None)]}.items()
        for s, m, d in points
    ]
    (ax,) = metric_vs_scale(rows, metric_label="test acc").axes
    by_label = {c.get_label(): c for c in ax.containers}
    bn = by_label["bn"]
    assert bn.lines[0].get_xydata().tolist() == [[8, 0.9], [64, 0.92]]
    segments = bn.lines[2][0].get_segments()
    assert _flat(s[:, 1] for s in segments) == pytest.approx([0.89, 0.91, 0.90, 0.94])
    with pytest.raises(ValueError, match="power-law"):
        fit_power_law([1.0, 1.0], [2.0, 3.0])
