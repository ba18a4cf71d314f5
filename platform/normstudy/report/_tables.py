"""Report tables: per-trial and per-configuration summaries of a study, and writing them.

Number convention of the exported tables (stated in every caption): accuracy columns (name
contains "acc", all values in [0, 1]) in percent with one decimal (`TableStyle.decimals`), other
metrics and config values with three significant digits, aggregates as mean ± sample std over
seeds. CSV holds the raw, unscaled values under the dotted keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from normstudy.report._compare import ALPHA, Stat, compare, emphasize
from normstudy.report._context import StudyContext, TableStyle
from normstudy.report._labels import labels as short_labels
from normstudy.report._render import EXTENSIONS, Format, ReportTable, render
from normstudy.report._stats import (
    MIN_PAIRS,
    ConfigGroup,
    MeanStd,
    Mode,
    find_baseline,
    group_by_config,
    varying_keys,
)
from normstudy.results import TrialScore, trial_scores

if TYPE_CHECKING:
    from normstudy.report._page import FigureFile
    from normstudy.storage import Location

__all__ = ["ALPHA", "summary_tables", "write_report"]


def summary_tables(
    table: pa.Table | Sequence[TrialScore],
    metric: str,
    mode: Mode,
    *,
    baseline: Mapping[str, Any] | None = None,
    statuses: Iterable[str] = ("completed",),
    study: str = "",
    context: StudyContext | None = None,
    style: TableStyle | None = None,
) -> dict[str, ReportTable]:
    """The per-configuration (``configs``) and per-trial (``trials``) tables of a study.

    Args:
        table: The results (see `normstudy.results.read_results`), or their per-trial scores
            for ``metric`` (see `normstudy.results.read_scores`).
        metric: The selection metric; a trial's score is its best value over epochs.
        mode: "max" or "min".
        baseline: Config values (dotted keys, ``config.`` prefix optional) singling out the
            baseline configuration; each other configuration gets a one-sided paired t-test
            against it over the seeds they share (with at least 3), Holm-corrected across them.
        statuses: Trial statuses aggregated in ``configs`` (``trials`` lists every trial).
        study: Named in the captions and the LaTeX labels.
        context: Dataset, model, epochs and seeds, stated in the captions.
        style: Decimals, percent, what is emphasized, short or dotted headers.
    """
    style = style or TableStyle()
    if isinstance(table, pa.Table):
        scores = trial_scores(table, metric, mode)
        names = set(table.column_names)
    else:
        scores = list(table)
        names = {k for s in scores for k in s.test}
    tests = [c for c in ("test/acc", "test/loss") if c in names]
    setting = f"{context.text()}. " if context else ""
    configs = _configs_table(scores, metric, mode, tests, baseline, set(statuses), style)
    trials = _trials_table(scores, metric, tests, style)
    for report in (configs, trials):
        report.study = study
        report.caption = f"{study}: {setting}{report.caption}".lstrip(": ")
    return {"configs": configs, "trials": trials}


def write_report(
    study: str,
    table: pa.Table | Sequence[TrialScore],
    metric: str,
    mode: Mode,
    out_dir: str | Path | Location,
    formats: Iterable[Format] = ("md",),
    *,
    baseline: Mapping[str, Any] | None = None,
    statuses: Iterable[str] = ("completed",),
    context: StudyContext | None = None,
    style: TableStyle | None = None,
    figures: Sequence[FigureFile] = (),
) -> list[Location]:
    """Writes ``trials.<ext>`` and ``configs.<ext>`` per format into ``out_dir``; HTML is one
    standalone page, ``index.html``, with every table and the given figures.

    Args:
        study: Named in the captions.
        table: The results or their scores; metric, mode, baseline, statuses, context, style as in
            `summary_tables`.
        metric: The selection metric.
        mode: "max" or "min".
        out_dir: A folder or s3:// / gs:// URI; each file is replaced atomically.
        formats: Any of md, csv, latex (``.tex``), html.
        figures: Figures already written (see `write_figures`), shown on the HTML page.

    Returns:
        The written files, table by table in the order of ``formats``, then the HTML page.
    """
    from normstudy.report._page import study_page
    from normstudy.storage import as_location

    formats = list(formats)
    unknown = [f for f in formats if f not in EXTENSIONS]
    if unknown:
        raise ValueError(f"unknown report formats {unknown}; choose from {sorted(EXTENSIONS)}")
    tables = summary_tables(
        table, metric, mode, baseline=baseline, statuses=statuses, study=study,
        context=context, style=style,
    )  # fmt: skip
    out = as_location(out_dir)
    out.mkdir()
    written = []
    for name, report in tables.items():
        for fmt in (f for f in formats if f != "html"):
            path = out / f"{name}.{EXTENSIONS[fmt]}"
            path.write_text(render(report, fmt))
            written.append(path)
    if "html" in formats:
        page = out / "index.html"
        page.write_text(study_page(study, list(tables.values()), figures, context))
        written.append(page)
    return written


def _trials_table(
    scores: list[TrialScore], metric: str, tests: list[str], style: TableStyle
) -> ReportTable:
    keys = varying_keys(s.config for s in scores)
    score_col = f"best {metric}"
    errors = ["error"] if any(s.error for s in scores) else []  # failed trials are results too
    rows = [
        [s.trial_id, s.seed, s.status, *(s.config.get(k) for k in keys), s.score, s.best_epoch]
        + [s.test.get(c) for c in tests]
        + ([s.error] if errors else [])
        for s in scores
    ]
    columns = ["trial", "seed", "status", *keys, score_col, "best epoch", *tests, *errors]
    caption = (
        f"Trials ranked by {score_col} (best over epochs); test metrics of the model "
        f"selected at the best epoch. {_convention(style)}"
    )
    result = ReportTable("trials", caption, columns, rows, decimals=style.decimals)
    _label_keys(result, keys, style)
    result.clip = {"error": 60}
    result.percent = _percent_columns(result, [score_col, *tests], style)
    return result


def _configs_table(
    scores: list[TrialScore],
    metric: str,
    mode: Mode,
    tests: list[str],
    baseline: Mapping[str, Any] | None,
    statuses: set[str],
    style: TableStyle,
) -> ReportTable:
    groups = group_by_config(s for s in scores if s.status in statuses)
    # The selection score, and the test accuracy the paper-style tables report.
    stats = [Stat(metric, mode, lambda s: s.score)]
    if "test/acc" in tests and metric != "test/acc":
        stats.append(Stat("test/acc", "max", lambda s: s.test.get("test/acc")))
    base = find_baseline(groups, baseline) if baseline else None
    means = {id(g): [MeanStd.of(g.samples(st.value).values()) for st in stats] for g in groups}
    sign = -1.0 if mode == "max" else 1.0
    groups.sort(key=lambda g: _rank(means[id(g)][0], sign, g.config))
    keys = varying_keys(g.config for g in groups)
    result = ReportTable("configs", "", [*keys, "seeds"], [], decimals=style.decimals)
    _label_keys(result, keys, style)
    for g in groups:
        row = [g.config.get(k) for k in keys] + [len(g.samples(stats[0].value))]
        result.rows.append(row)
    for s, st in enumerate(stats):
        cells = [means[id(g)][s] for g in groups]
        _add_stat(result, st, cells, groups, base)
        emphasize(result, st, cells, groups, style.highlight)
    result.percent = _percent_columns(result, [st.name for st in stats], style)
    result.caption = _configs_caption(metric, mode, statuses, baseline, style)
    return result


def _add_stat(
    table: ReportTable,
    stat: Stat,
    cells: list[MeanStd | None],
    groups: list[ConfigGroup],
    base: ConfigGroup | None,
) -> None:
    """Appends the stat's mean ± std column and, with a baseline, its p and Holm-p columns."""
    table.columns.append(stat.name)
    if base is None:
        for row, cell in zip(table.rows, cells, strict=True):
            row.append(cell)
        return
    p_col, holm_col = f"p {stat.name}", f"p Holm {stat.name}"
    table.columns += [p_col, holm_col]
    table.pvalues |= {p_col, holm_col}
    table.sublabels |= {stat.name: "mean ± std", p_col: "p", holm_col: "p (Holm)"}
    table.groups.append((stat.name, [stat.name, p_col, holm_col]))
    others = {i: g for i, g in enumerate(groups) if g is not base}
    tests, adjusted = compare(base, others, stat)
    for i, (row, cell) in enumerate(zip(table.rows, cells, strict=True)):
        if groups[i] is base:
            row += [cell, "baseline", "baseline"]
        elif tests[i].p is None:
            row += [cell, tests[i].reason, tests[i].reason]
        else:
            row += [cell, tests[i].p, adjusted[i]]
    refused = sum(t.p is None for t in tests.values())
    note = (
        f"{refused} of {len(tests)} configurations share fewer than {MIN_PAIRS} seeds with the "
        "baseline: not tested (the p cell gives n)."
    )
    if refused and note not in table.notes:
        table.notes.append(note)


def _rank(cell: MeanStd | None, sign: float, config: dict[str, Any]) -> tuple[Any, ...]:
    # Best mean first, groups without a score last; the config text breaks ties.
    return (cell is None, sign * cell.mean if cell else 0.0, repr(sorted(config.items())))


def _label_keys(table: ReportTable, keys: list[str], style: TableStyle) -> None:
    table.keys = {k: k for k in keys}
    if style.labels == "keys":
        return
    table.labels = short_labels(keys)
    legend = [f"{table.labels[k]} = {k}" for k in keys if table.labels[k] != k]
    if legend:
        table.notes.append("Keys: " + "; ".join(legend) + ".")


def _configs_caption(
    metric: str,
    mode: Mode,
    statuses: set[str],
    baseline: Mapping[str, Any] | None,
    style: TableStyle,
) -> str:
    text = (
        f"Configurations (seed excluded) of {', '.join(sorted(statuses))} trials, best first by "
        f"{metric} (each trial's best epoch, {mode}); mean ± sample std over seeds."
    )
    if baseline:
        given = ", ".join(f"{k.removeprefix('config.')}={v}" for k, v in baseline.items())
        text += (
            f" Test: one-sided paired t-test against the baseline ({given}) over shared seeds, "
            f"run with n ≥ {MIN_PAIRS} pairs only; p uncorrected, p (Holm) Holm-corrected "
            "across the configurations tested."
        )
    if style.highlight == "best":
        text += (
            " Bold: best mean; underlined: not significantly worse than the best (one-sided "
            f"paired t-test, n ≥ {MIN_PAIRS}, Holm-corrected, α = {ALPHA})."
        )
    else:
        text += f" Bold: significantly better than the baseline (p Holm < {ALPHA}); "
        text += "underlined: best mean."
    return f"{text} {_convention(style)}"


def _convention(style: TableStyle) -> str:
    if not style.percent:
        return "Metrics and config values with 3 significant digits."
    return (
        f"Accuracies in % ({style.decimals} decimal{'s' if style.decimals != 1 else ''}), "
        "other numbers with 3 significant digits."
    )


def _percent_columns(table: ReportTable, candidates: list[str], style: TableStyle) -> set[str]:
    if not style.percent:
        return set()
    percent = set()
    for name in candidates:
        if "acc" not in name:
            continue
        j = table.columns.index(name)
        values = [v.mean if isinstance(v, MeanStd) else v for v in (r[j] for r in table.rows)]
        numbers = [v for v in values if isinstance(v, float) and not math.isnan(v)]
        if all(0.0 <= v <= 1.0 for v in numbers):
            percent.add(name)
    return percent
