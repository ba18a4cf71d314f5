"""Reports: best trials, per-trial and per-configuration tables, paired tests, formats."""

from __future__ import annotations

import csv
import io
import json
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from scipy import stats

from normstudy.report import TableStyle, best_table, render, summary_tables, write_report
from normstudy.results import ResultsSink, make_row, read_results, trial_scores

SEEDS = [11, 22, 33, 44]
# Large spread between seeds, small consistent gains: significant only when paired by seed.
BASELINE = {11: 0.70, 22: 0.80, 33: 0.75, 44: 0.72}
GAIN = {11: 0.035, 22: 0.03, 33: 0.01, 44: 0.01}  # reorders 11 and 44
KEY = "plugins.gamma_init.value"


def _trial(sink: ResultsSink, trial_id: str, gamma: float, seed: int, best: float, status: str):
    config = {"train": {"lr": 0.1, "seed": seed}, "plugins": {"gamma_init": {"value": gamma}}}
    values = [best - 0.1, best, best - 0.05]  # the best epoch is not the last one
    rows = [
        make_row(
            study="demo",
            trial_id=trial_id,
            seed=seed,
            epoch=e,
            config=config,
            metrics={"val/acc": v, "train/loss": 1.0 - v},
        )
        for e, v in enumerate(values, 1)
    ]
    rows[-1].update({"test/acc": best - 0.01, "test/loss": 0.5})
    sink.update(trial_id, rows, status)


@pytest.fixture
def results(tmp_path: Path) -> pa.Table:
    trials = [(1.0, s, BASELINE[s]) for s in SEEDS] + [
        (0.5, s, BASELINE[s] + GAIN[s]) for s in SEEDS
    ]
    trials.append((0.25, 22, 0.9))  # a single seed: no p-value
    # Trial ids (hence file and row order) unrelated to seeds, so only seed pairing is right.
    random.Random(3).shuffle(trials)
    sink = ResultsSink(tmp_path / "results")
    for i, (gamma, seed, best) in enumerate(trials):
        _trial(sink, f"t{i:02d}", gamma, seed, best, "completed")
    _trial(sink, "t99", 0.1, 11, 0.99, "error")  # listed per trial, not aggregated
    return read_results(tmp_path / "results")


def _configs(results: pa.Table) -> dict[float, dict]:
    tables = summary_tables(results, "val/acc", "max", baseline={KEY: 1.0})
    return {r[KEY]: r for r in tables["configs"].records()}


def test_paired_pvalue_equals_scipy_over_seed_pairs(results: pa.Table) -> None:
    configs = _configs(results)
    better = [BASELINE[s] + GAIN[s] for s in SEEDS]
    expected = stats.ttest_rel(better, [BASELINE[s] for s in SEEDS], alternative="greater")
    assert configs[0.5]["p val/acc"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert configs[0.5]["p val/acc"] < 0.05
    # Pairing by row order instead of seed would give another p (not significant here).
    shuffled = stats.ttest_rel(
        better, [BASELINE[s] for s in reversed(SEEDS)], alternative="greater"
    )
    assert shuffled.pvalue > 0.05
    assert configs[1.0]["p val/acc"] == "baseline"
    assert configs[0.25]["p val/acc"] == "n=1 < 3" and configs[0.25]["seeds"] == 1
    assert 0.1 not in configs  # the error trial


def test_configs_table_mean_std_and_min_mode(results: pa.Table) -> None:
    configs = _configs(results)
    cell = configs[0.5]["val/acc"]
    better = [BASELINE[s] + GAIN[s] for s in SEEDS]
    assert cell.mean == pytest.approx(statistics.fmean(better))
    assert cell.std == pytest.approx(statistics.stdev(better))
    assert configs[0.25]["val/acc"].std is None
    assert configs[0.5]["test/acc"].mean == pytest.approx(statistics.fmean(better) - 0.01)
    # With "min" the selection is each trial's lowest value and the test asks for "less".
    low = summary_tables(results, "train/loss", "min", baseline={KEY: 1.0})["configs"]
    p = {r[KEY]: r["p train/loss"] for r in low.records()}
    lows = [1.0 - BASELINE[s] - GAIN[s] for s in SEEDS]
    expected = stats.ttest_rel(lows, [1.0 - BASELINE[s] for s in SEEDS], alternative="less")
    assert p[0.5] == pytest.approx(expected.pvalue, rel=1e-9)


def test_trials_table_lists_every_trial_best_first(results: pa.Table) -> None:
    trials = summary_tables(results, "val/acc", "max")["trials"]
    assert trials.columns == [
        "trial", "seed", "status", KEY, "best val/acc", "best epoch", "test/acc", "test/loss"
    ]  # fmt: skip
    records = trials.records()
    assert len(records) == 10 and records[0]["status"] == "error"
    assert all(r["best epoch"] == 2 for r in records)
    assert "p val/acc" not in summary_tables(results, "val/acc", "max")["configs"].columns


def test_markdown_has_header_separator_and_styles(results: pa.Table) -> None:
    style = TableStyle(highlight="baseline")  # 004's Table 1
    tables = summary_tables(results, "val/acc", "max", baseline={KEY: 1.0}, style=style)
    md = render(tables["configs"], "md")
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert re.fullmatch(r"\|(---\|)+", lines[1])
    assert len({line.count(" | ") for line in lines if line != lines[1]}) == 1
    row = next(line for line in lines if line.startswith("| 0.5 "))
    assert "**" in row
    assert "<u>" in next(line for line in lines if line.startswith("| 0.25 "))  # best mean
    assert "<u>90.0</u>" in md and "(%)" in md  # accuracies in percent, as the caption says


def test_csv_parses_with_raw_values(results: pa.Table) -> None:
    text = render(summary_tables(results, "val/acc", "max", baseline={KEY: 1.0})["configs"], "csv")
    rows = {r[KEY]: r for r in csv.DictReader(io.StringIO(text))}
    assert float(rows["0.5"]["val/acc mean"]) == pytest.approx(
        statistics.fmean(BASELINE[s] + GAIN[s] for s in SEEDS)
    )
    assert rows["0.25"]["val/acc std"] == "" and rows["0.25"]["p val/acc"] == "n=1 < 3"
    assert rows["1.0"]["seeds"] == "4"


def test_latex_bolds_the_significant_row(results: pa.Table) -> None:
    style = TableStyle(highlight="baseline")
    tables = summary_tables(results, "val/acc", "max", baseline={KEY: 1.0}, style=style)
    tex = render(tables["configs"], "latex")
    assert r"\begin{tabular}" in tex and r"\end{table}" in tex
    rows = {line.split(" & ")[0]: line for line in tex.splitlines() if " & " in line}
    assert r"\textbf{" in rows["0.5"] and r"\ensuremath{\pm}" in rows["0.5"]
    assert r"\textbf{" not in rows["1"] and r"\textbf{" not in rows["0.25"]
    assert r"\underline{" in rows["0.25"]
    assert r"\ensuremath{\gamma} init" in tex  # the short label, the key in the legend
    assert r"plugins.gamma\_init.value" in tex


def test_write_report_writes_every_table_and_format(results: pa.Table, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "demo"
    paths = write_report(
        "demo", results, "val/acc", "max", out, ["md", "csv", "latex", "html"], baseline={KEY: 1.0}
    )
    names = ["md", "csv", "tex"]
    expected = [f"{t}.{e}" for t in ("configs", "trials") for e in names] + ["index.html"]
    assert [p.name for p in paths] == expected
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)  # no temp files
    page = (out / "index.html").read_text()
    assert page.count('<table class="report"') == 2 and page.startswith("<!DOCTYPE html>")
    assert (out / "trials.md").read_text().startswith("demo: Trials")
    with pytest.raises(ValueError, match="pdf"):
        write_report("demo", results, "val/acc", "max", out, ["pdf"])  # type: ignore[list-item]


def test_unknown_baseline_is_a_clear_error(results: pa.Table) -> None:
    with pytest.raises(ValueError, match="matches no configuration"):
        summary_tables(results, "val/acc", "max", baseline={KEY: 0.3})
    with pytest.raises(ValueError, match="matches 3 configurations"):
        summary_tables(results, "val/acc", "max", baseline={"config.train.lr": 0.1})


def test_best_table_json_and_text(results: pa.Table) -> None:
    scores = trial_scores(results, "val/acc", "max")
    records = json.loads(best_table(scores, 2, "json", searched=["config.train.lr"]))
    assert [r["trial_id"] for r in records] == [s.trial_id for s in scores[:2]]
    assert records[0]["config"] == {KEY: 0.1, "train.lr": 0.1}  # varying + searched keys
    assert records[0]["test"] == {"test/acc": pytest.approx(0.98), "test/loss": 0.5}
    text = best_table(scores, 3)
    assert all(s.trial_id in text for s in scores[:3]) and scores[3].trial_id not in text


def test_report_modules_import_without_torch_ray_or_scipy() -> None:
    code = (
        "import sys, normstudy.results, normstudy.report; "
        "heavy = {'torch', 'ray', 'scipy', 'matplotlib', 'optuna'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
