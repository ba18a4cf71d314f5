"""Paper-ready tables: precision, short labels, Holm-corrected paired tests refused below 3 seeds,
emphasis, LaTeX that fits the page with unique labels, the standalone HTML page."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from scipy import stats

from normstudy.report import (
    MIN_PAIRS,
    FigureFile,
    StudyContext,
    TableStyle,
    holm,
    latex_document,
    paired_pvalue,
    paired_test,
    render,
    summary_tables,
    write_report,
)
from normstudy.results import ResultsSink, make_row, read_results

GAMMA, C, LR = "plugins.gamma_init.value", "plugins.lr_divisor.gamma", "train.lr"
SEEDS = [1, 2, 3, 4, 5, 6]
BASE = {1: 0.80, 2: 0.84, 3: 0.78, 4: 0.82, 5: 0.86, 6: 0.79}
# Gains over the baseline per seed: strong, as strong but noisy, moderate, weak-but-consistent,
# none, worse.
GAINS = {
    0.1: [0.030, 0.028, 0.033, 0.031, 0.029, 0.032],
    0.15: [0.034, 0.019, 0.039, 0.024, 0.032, 0.027],
    0.25: [0.012, 0.004, 0.015, 0.002, 0.010, 0.008],
    0.5: [0.004, -0.001, 0.006, 0.000, 0.003, 0.002],
    0.75: [0.010, -0.012, 0.004, -0.006, 0.002, 0.001],
    0.05: [-0.030, -0.025, -0.035, -0.028, -0.031, -0.027],
}
CONTEXT = StudyContext("cifar10", "resnet18", 200, "6 seeds")


def _add(sink: ResultsSink, trial_id: str, config: dict[str, Any], seed: int, best: float) -> None:
    config = {**config, "seed": seed}
    rows = [
        make_row(
            study="paper", trial_id=trial_id, seed=seed, epoch=e, config=config,
            metrics={"val/acc": v, "val/loss": 2.0 - v},
        )
        for e, v in enumerate([best - 0.2, best, best - 0.01], 1)
    ]  # fmt: skip
    rows[-1]["test/acc"] = best - 0.005
    sink.update(trial_id, rows, "completed")


def _config(gamma: float, c: float = 100.0, lr: float = 0.1) -> dict[str, Any]:
    plugins = {"gamma_init": {"value": gamma}, "lr_divisor": {"gamma": c}}
    return {"train": {"lr": lr}, "plugins": plugins}


@pytest.fixture
def paper(tmp_path: Path) -> pa.Table:
    sink = ResultsSink(tmp_path / "paper")
    for s in SEEDS:
        _add(sink, f"base{s}", _config(1.0, c=1.0), s, BASE[s])
        for gamma, gains in GAINS.items():
            _add(sink, f"g{gamma}-{s}", _config(gamma), s, BASE[s] + gains[s - 1])
    for s in SEEDS[:2]:  # only two seeds: a t-test would be meaningless
        _add(sink, f"two{s}", _config(0.01), s, BASE[s] + 0.05)
    return read_results(tmp_path / "paper")


BASELINE = {GAMMA: 1.0, C: 1.0}


def _by_gamma(table: Any) -> dict[float, dict[str, Any]]:
    return {r[GAMMA]: r for r in table.records()}


def _holm_rejections(p: Mapping[float, float], alpha: float) -> set[float]:
    """Holm's procedure as its definition states it: reject in order of p while
    p_(i) <= alpha / (m - i + 1), stop at the first that is not."""
    rejected = set()
    for i, (key, value) in enumerate(sorted(p.items(), key=lambda kv: kv[1]), 1):
        if value > alpha / (len(p) - i + 1):
            break
        rejected.add(key)
    return rejected


# -- the statistics -----------------------------------------------------------------------------
def test_holm_matches_hand_computed_values() -> None:
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.20})
    assert adjusted == pytest.approx({"a": 0.04, "b": 0.09, "c": 0.09, "d": 0.20})
    assert holm({"x": 0.6, "y": 0.7}) == pytest.approx({"x": 1.0, "y": 1.0})  # capped at 1
    assert holm({}) == {}


def test_holm_agrees_with_statsmodels_when_installed() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = {i: v for i, v in enumerate([0.001, 0.02, 0.013, 0.04, 0.3, 0.049])}
    expected = multitest.multipletests(list(p.values()), method="holm")[1]
    assert list(holm(p).values()) == pytest.approx(list(expected))


def test_a_paired_test_is_refused_below_three_pairs_with_the_reason() -> None:
    a, b = {1: 0.9, 2: 0.8, 3: 0.85}, {1: 0.7, 2: 0.75, 3: 0.72}
    two = paired_test({1: 0.9, 2: 0.8}, b, "max")
    assert two.p is None and two.n == 2 and two.reason == "n=2 < 3"
    assert paired_pvalue({1: 0.9, 2: 0.8}, b, "max") is None
    three = paired_test(a, b, "max")
    expected = stats.ttest_rel([0.9, 0.8, 0.85], [0.7, 0.75, 0.72], alternative="greater")
    assert MIN_PAIRS == 3 and three.reason is None and three.p == pytest.approx(expected.pvalue)


def test_p_columns_are_scipy_and_holm_across_the_tested_configurations(paper: pa.Table) -> None:
    style = TableStyle(highlight="baseline")
    table = summary_tables(paper, "val/acc", "max", baseline=BASELINE, style=style)["configs"]
    rows = _by_gamma(table)
    raw = {}
    for gamma, gains in GAINS.items():
        better = [BASE[s] + g for s, g in zip(SEEDS, gains, strict=True)]
        expected = stats.ttest_rel(better, [BASE[s] for s in SEEDS], alternative="greater")
        raw[gamma] = expected.pvalue
        assert rows[gamma]["p val/acc"] == pytest.approx(expected.pvalue, rel=1e-9)
    # The two-seed configuration is not tested and not part of the Holm family.
    assert rows[0.01]["p val/acc"] == "n=2 < 3" == rows[0.01]["p Holm val/acc"]
    assert any("fewer than 3 seeds with the baseline" in n for n in table.notes)
    m = len(raw)
    order = sorted(raw, key=raw.get)
    for i, gamma in enumerate(order):  # the step-down formula, then monotone
        by_hand = max(min(1.0, (m - j) * raw[order[j]]) for j in range(i + 1))
        assert rows[gamma]["p Holm val/acc"] == pytest.approx(by_hand, rel=1e-9)
    # Bold (004): exactly Holm's rejections; one is significant uncorrected but not after Holm.
    bold = {table.rows[r][0] for r, col in table.bold if col == "val/acc"}
    assert bold == _holm_rejections(raw, 0.05)
    assert any(raw[g] < 0.05 and g not in bold for g in raw)
    best = {table.rows[r][0] for r, col in table.underline if col == "val/acc"}
    assert best == {0.01}  # the best mean, even untested


def test_best_is_bold_and_not_significantly_worse_is_underlined(paper: pa.Table) -> None:
    table = summary_tables(paper, "val/acc", "max", baseline=BASELINE)["configs"]
    rows = [r[0] for r in table.rows]
    assert rows[0] == 0.01  # ranked by mean: the two-seed configuration is the best mean
    bold = {rows[r] for r, col in table.bold if col == "val/acc"}
    underlined = {rows[r] for r, col in table.underline if col == "val/acc"}
    assert bold == {0.01}
    # It shares only 2 seeds with everything: nothing can be judged against it, said so.
    assert underlined == set()
    assert any("fewer than 3 seeds with the best" in n for n in table.notes)
    # Without it, the best is γ=0.1; compare the others against it by hand.
    table = summary_tables(
        paper.filter(pa.compute.invert(pa.compute.starts_with(paper["trial_id"], "two"))),
        "val/acc", "max", baseline=BASELINE,
    )["configs"]  # fmt: skip
    rows = [r[0] for r in table.rows]
    best_values = [BASE[s] + g for s, g in zip(SEEDS, GAINS[0.1], strict=True)]
    p = {}
    for gamma in [1.0, *GAINS]:
        if gamma == 0.1:
            continue
        gains = GAINS.get(gamma, [0.0] * len(SEEDS))
        other = [BASE[s] + g for s, g in zip(SEEDS, gains, strict=True)]
        p[gamma] = stats.ttest_rel(best_values, other, alternative="greater").pvalue
    worse = _holm_rejections(p, 0.05)
    assert {rows[r] for r, col in table.bold if col == "val/acc"} == {0.1}
    underlined = {rows[r] for r, col in table.underline if col == "val/acc"}
    assert underlined == set(p) - worse and underlined and worse


# -- how numbers and headers look -----------------------------------------------------------------
def test_config_values_get_three_significant_digits_and_metrics_one_decimal(
    tmp_path: Path,
) -> None:
    sink = ResultsSink(tmp_path / "r")
    for k, (gamma, lr) in enumerate([(0.0123456789, 1.23456e-5), (0.5, 123456.789)]):
        for s in SEEDS[:3]:
            _add(sink, f"t{k}{s}", _config(gamma, lr=lr), s, 0.87654 + 0.01 * s)
    table = summary_tables(read_results(tmp_path / "r"), "val/acc", "max")["configs"]
    md = render(table, "md")
    assert "| 0.0123 | 1.23e-5 |" in md and "| 0.5 | 1.23e5 |" in md
    assert "0.012345" not in md and "123456" not in md  # no 16-digit config values
    assert "89.7 ± 1.0" in md  # mean 0.89654, std 0.01 of three seeds, in percent
    two = render(summary_tables(read_results(tmp_path / "r"), "val/acc", "max",
                                style=TableStyle(decimals=2))["configs"], "md")  # fmt: skip
    assert "89.65 ± 1.00" in two
    raw = render(summary_tables(read_results(tmp_path / "r"), "val/loss", "min",
                                style=TableStyle(percent=False))["configs"], "md")  # fmt: skip
    assert "1.10 ± 0.01" in raw and "0.892 ± 0.010" in raw  # 3 significant digits, std alike


def test_headers_are_short_labels_with_the_dotted_key_kept(paper: pa.Table) -> None:
    table = summary_tables(paper, "val/acc", "max", baseline=BASELINE)["configs"]
    md = render(table, "md")
    header = next(line for line in md.splitlines() if line.startswith("|"))
    assert header.startswith("| γ init | c (γ lr ÷) | seeds | val/acc (%) |")
    assert "Keys: γ init = plugins.gamma_init.value; c (γ lr ÷) = plugins.lr_divisor.gamma" in md
    assert next(csv.reader(io.StringIO(render(table, "csv"))))[:2] == [GAMMA, C]
    assert f'<th title="{GAMMA}" rowspan="2">γ init</th>' in render(table, "html")
    keys = summary_tables(paper, "val/acc", "max", style=TableStyle(labels="keys"))["configs"]
    assert render(keys, "md").splitlines()[2].startswith(f"| {GAMMA} | {C} |")


# -- LaTeX --------------------------------------------------------------------------------------
def _check_latex(tex: str) -> list[str]:
    """Structural checks of table fragments; returns their labels."""
    assert tex.isascii(), "pdfLaTeX without a Unicode setup needs ASCII"
    stack: list[str] = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, f"unbalanced \\end{{{env}}}"
    assert not stack, f"unclosed {stack}"
    plain = re.sub(r"\\[{}]", "", tex)
    assert plain.count("{") == plain.count("}")
    assert r"\hline" not in tex
    for float_ in re.findall(r"\\begin\{table\}.*?\\end\{table\}", tex, re.S):
        assert float_.count(r"\toprule") == float_.count(r"\midrule") == 1
        assert float_.count(r"\bottomrule") == 1
        assert r"\resizebox{\ifdim\width>\textwidth\textwidth\else\width\fi}{!}{%" in float_
        (align,) = re.findall(r"\\begin\{tabular\}\{([lrc]+)\}", float_)
        body = float_.split(r"\midrule")[1].split(r"\bottomrule")[0]
        for line in [*body.strip().splitlines(), *_header_rows(float_)]:
            spans = sum(int(n) - 1 for n in re.findall(r"\\multicolumn\{(\d+)\}", line))
            assert len(re.findall(r"(?<!\\)&", line)) + 1 + spans == len(align), line
    return re.findall(r"\\label\{([^}]*)\}", tex)


def _header_rows(float_: str) -> list[str]:
    head = float_.split(r"\toprule")[1].split(r"\midrule")[0]
    return [line for line in head.strip().splitlines() if not line.startswith(r"\cmidrule")]


def _study(tmp_path: Path, name: str, trials: int, keys: int) -> pa.Table:
    sink = ResultsSink(tmp_path / name)
    for t in range(trials):
        extra = {f"knob_{k}": 1.0 / (t + k + 3) for k in range(keys)}
        config = {**_config(0.01 * (t + 1), lr=0.1 / (t + 1)), "model": {"kwargs": extra}}
        _add(sink, f"{name}-{t:03d}", config, 1 + t % 3, 0.5 + 0.001 * t)
    return read_results(tmp_path / name)


def test_latex_fits_the_page_has_unique_labels_and_states_the_setting(
    tmp_path: Path, paper: pa.Table
) -> None:
    fragments, labels = [], []
    studies = {"paper": paper, "wide-long": _study(tmp_path, "wide-long", 95, 10)}
    for study, results in studies.items():
        for name, table in summary_tables(
            results, "val/acc", "max", study=study, context=CONTEXT,
            baseline=BASELINE if study == "paper" else None,
        ).items():  # fmt: skip
            tex = render(table, "latex")
            labels += _check_latex(tex)
            fragments.append(tex)
            caption = re.search(r"\\caption\{(.*?)\}\n", tex)
            assert caption is not None
            for field in ("cifar10", "resnet18", "200 epochs", "6 seeds"):
                assert field in caption.group(1), (field, name)
            if name == "configs":
                assert "t-test" in caption.group(1) and "Holm" in caption.group(1)
    assert len(labels) == len(set(labels)), "labels repeat across studies or parts"
    assert {"tab:paper-configs", "tab:paper-trials", "tab:wide-long-trials"} <= set(labels)
    # 95 trials: split into floats of at most 40 rows, each with its header and label.
    assert {"tab:wide-long-trials-2", "tab:wide-long-trials-3"} <= set(labels)
    assert "tab:wide-long-trials-4" not in labels
    _compile(tmp_path, latex_document(fragments))


def _compile(folder: Path, document: str) -> None:
    """With a LaTeX engine on the machine, the document compiles and no line is too wide."""
    engine = shutil.which("pdflatex")
    if engine is None:
        pytest.skip("no pdflatex here: the structural checks above stand in for it")
    (folder / "doc.tex").write_text(document)
    for _ in range(2):  # twice, as for a paper: labels settle
        proc = subprocess.run(
            [engine, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
            cwd=folder, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:]
    log = (folder / "doc.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log and "multiply defined" not in log


# -- the HTML page ------------------------------------------------------------------------------
def test_html_is_one_standalone_styled_page_with_tables_and_figures(
    tmp_path: Path, paper: pa.Table
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 32
    figure = FigureFile("curves", "learning curves", png, ("figures/curves.pdf",))
    written = write_report(
        "paper", paper, "val/acc", "max", tmp_path / "out", ["html"],
        baseline=BASELINE, context=CONTEXT, figures=[figure],
    )  # fmt: skip
    assert [p.name for p in written] == ["index.html"]
    page = (tmp_path / "out" / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and page.count("<table") == 2
    assert 'src="data:image/png;base64,iVBORw0KGgo' in page and 'href="figures/curves.pdf"' in page
    assert "cifar10, resnet18, 200 epochs, 6 seeds" in page
    assert not re.search(r"(src|href)=\"https?://", page)  # nothing fetched from elsewhere
    assert '<th colspan="3" class="group">val/acc (%)</th>' in page


def test_a_baseline_copied_from_a_table_singles_out_its_configuration(paper: pa.Table) -> None:
    table = summary_tables(paper, "val/acc", "max", baseline={GAMMA: 1.0, C: 1})["configs"]
    assert _by_gamma(table)[1.0]["p val/acc"] == "baseline"
    copied = {GAMMA: 0.150000001}  # equal as the table shows it (0.15), not exactly
    table = summary_tables(paper, "val/acc", "max", baseline=copied)["configs"]
    assert _by_gamma(table)[0.15]["p val/acc"] == "baseline"
    with pytest.raises(
        ValueError, match=r"matches no configuration.*plugins.gamma_init.value=0.05"
    ):
        summary_tables(paper, "val/acc", "max", baseline={GAMMA: 0.3})
