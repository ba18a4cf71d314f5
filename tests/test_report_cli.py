"""`normstudy report --figures`, `normstudy plot`, and the figures at the end of `run` (on a study
folder made without Ray: its description and Parquet results)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from normstudy.home import StudyPaths
from normstudy.results import ResultsSink, make_row
from normstudy.spec import StudySpec, load_spec
from normstudy.storage import as_location
from tests._loopback import S3Store

SEEDS = [1, 2, 3]


def _fill(paths: StudyPaths, spec: StudySpec) -> None:
    """A study folder as a finished run leaves it: its description and Parquet results."""
    paths.results.mkdir()
    paths.spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    sink = ResultsSink(paths.results)
    for k, gamma in enumerate([1.0, 0.1]):
        for seed in SEEDS:
            config = {
                "train": {"lr": 0.05, "seed": seed},
                "plugins": {"gamma_init": {"value": gamma}, "lr_divisor": {"gamma": 10.0}},
            }
            rows = [
                make_row(
                    study=spec.name, trial_id=f"t{k}{seed}", seed=seed, epoch=e, config=config,
                    metrics={"val/acc": 0.5 + 0.1 * e + 0.01 * k, "train/loss": 1.0 / e},
                )
                for e in (1, 2)
            ]  # fmt: skip
            rows[-1]["test/acc"] = 0.6
            sink.update(f"t{k}{seed}", rows, "completed")


@pytest.fixture
def home(tmp_path: Path, quickstart: Path) -> Path:
    spec = load_spec(quickstart)
    _fill(StudyPaths(as_location(tmp_path / "home"), spec.name), spec)
    return tmp_path / "home"


def _normstudy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "normstudy", *args], capture_output=True, text=True, timeout=600
    )


def test_report_writes_tables_figures_and_the_page(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    proc = _normstudy(
        "report", "quickstart", "--home", str(home), "--out", str(out), "--figures",
        "--format", "latex", "--format", "html",
        "--baseline", "plugins.gamma_init.value=1.0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["curves.pdf", "curves.png", "params.pdf", "params.png"]
    assert "figure skipped: optuna: no Optuna storage" in " ".join(proc.stderr.split())
    assert {"configs.tex", "trials.tex", "index.html"} <= {p.name for p in out.iterdir()}
    tex = (out / "configs.tex").read_text()
    assert r"\label{tab:quickstart-configs}" in tex and "test\\_resnet" in tex
    assert "data:image/png;base64," in (out / "index.html").read_text()
    bad = _normstudy("report", "quickstart", "--home", str(home), "--decimals", "9")
    assert bad.returncode == 2 and "decimals must be within" in bad.stderr


def test_plot_draws_the_kinds_asked_for(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    proc = _normstudy(
        "plot", "quickstart", "--home", str(home), "--out", str(out), "--kind", "curves",
        "--format", "png",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in out.iterdir()] == ["curves.png"]
    assert proc.stdout.strip() == f"wrote {out / 'curves.png'}"


def test_run_ends_with_the_path_of_its_figures(
    home: Path, quickstart: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from normstudy.cli_report import run_figures as _run_figures

    spec = load_spec(quickstart)
    paths = StudyPaths(as_location(home), spec.name)
    _run_figures(spec, paths, f" --home {home}")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"figures: {paths.figures}"
    assert "normstudy report quickstart --home" in lines[-2] and "--figures" in lines[-2]
    # The quick set: PNG only, learning curves of the objective and the losses.
    assert sorted(f.name for f in paths.figures.files()) == ["curves.png", "params.png"]


def test_run_without_scores_draws_nothing_and_says_why(
    tmp_path: Path, quickstart: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from normstudy.cli_report import run_figures as _run_figures

    spec = load_spec(quickstart)
    paths = StudyPaths(as_location(tmp_path / "home"), spec.name)
    row = make_row(study=spec.name, trial_id="t1", seed=1, epoch=0, config={}, metrics={})
    ResultsSink(paths.results).update("t1", [{**row, "error": "ValueError: boom"}], "error")
    _run_figures(spec, paths, "")
    captured = capsys.readouterr()
    assert "figures:" not in captured.out and not paths.figures.exists()
    assert "curves: no per-epoch metrics" in captured.err
    assert "params: no trial has a val/acc yet" in captured.err


def test_figures_and_tables_go_to_an_s3_home_with_its_optuna_storage(
    s3_env: S3Store, tmp_path: Path, quickstart: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from normstudy.report import FigureInput, StudyContext, write_figures, write_report
    from normstudy.results import read_results
    from normstudy.search._optuna_store import pull, push, storage_url

    spec = load_spec(quickstart)
    paths = StudyPaths(as_location(f"s3://{s3_env.bucket}/report/{uuid.uuid4().hex}"), spec.name)
    _fill(paths, spec)
    monkeypatch.setenv("NORMSTUDY_CACHE", str(tmp_path / "driver"))
    pull(spec, paths)  # as a driver starts a new study
    study = optuna.create_study(study_name=spec.name, storage=storage_url(spec, paths))
    for i in range(4):  # what the driver's searcher recorded, pushed to the bucket
        trial = study.ask()
        for key, dist in spec.search.space.items():
            dist.suggest(trial, key)
        study.tell(trial, 0.1 * i)
    push(spec, paths)
    monkeypatch.setenv("NORMSTUDY_CACHE", str(tmp_path / "laptop"))  # another machine reports

    data = FigureInput.of(spec, paths, read_results(paths.results))
    drawn = write_figures(data, paths.figures, formats=["png"])
    assert drawn.skipped == []
    names = [f.name for f in paths.figures.files()]
    assert names == [
        "curves.png", "optuna-contour.png", "optuna-importances.png", "optuna-slice.png",
        "params.png",
    ]  # fmt: skip
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in paths.figures.files())
    written = write_report(
        spec.name, read_results(paths.results), "val/acc", "max", paths.reports,
        ["latex", "html"], context=StudyContext.of(spec), figures=drawn.files,
    )  # fmt: skip
    assert [w.uri for w in written] == [
        (paths.reports / n).uri for n in ("configs.tex", "trials.tex", "index.html")
    ]
    assert "optuna-contour" in (paths.reports / "index.html").read_text()
