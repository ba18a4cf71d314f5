"""Report tables: per-trial and per-configuration summaries of a study, and writing them.

Number convention of the exported tables (stated in every caption): accuracy columns (name
contains "acc", all values in [0, 1]) in percent with 2 decimals, other numbers with 4 decimals,
aggregates as mean ± sample std over seeds. CSV holds the raw, unscaled values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from normstudy.report._render import (
    EXTENSIONS,
    Format,
    ReportTable,
    render,
    write_text_atomic,
)
from normstudy.report._stats import (
    ConfigGroup,
    MeanStd,
    Mode,
    find_baseline,
    group_by_config,
    paired_pvalue,
    varying_keys,
)
from normstudy.results import TrialScore, trial_scores

ALPHA = 0.05
"""Significance level of the paired test against the baseline."""


def summary_tables(
    table: pa.Table | Sequence[TrialScore],
    metric: str,
    mode: Mode,
    *,
    baseline: Mapping[str, Any] | None = None,
    statuses: Iterable[str] = ("completed",),
    study: str = "",
) -> dict[str, ReportTable]:
    """The per-trial (``trials``) and per-configuration (``configs``) tables of a study.

    Args:
        table: The results (see `normstudy.results.read_results`), or their per-trial scores
            for ``metric`` (see `normstudy.results.read_scores`).
        metric: The selection metric; a trial's score is its best value over epochs.
        mode: "max" or "min".
        baseline: Config values (dotted keys, ``config.`` prefix optional) singling out the
            baseline configuration; each other configuration gets a one-sided paired t-test
            against it over the seeds they share.
        statuses: Trial statuses aggregated in ``configs`` (``trials`` lists every trial).
        study: Named in the captions.
    """
    if isinstance(table, pa.Table):
        scores = trial_scores(table, metric, mode)
        names = set(table.column_names)
    else:
        scores = list(table)
        names = {k for s in scores for k in s.test}
    tests = [c for c in ("test/acc", "test/loss") if c in names]
    return {
        "trials": _trials_table(scores, metric, tests, study),
        "configs": _configs_table(scores, metric, mode, tests, baseline, set(statuses), study),
    }


def write_report(
    study: str,
    table: pa.Table | Sequence[TrialScore],
    metric: str,
    mode: Mode,
    out_dir: str | Path,
    formats: Iterable[Format] = ("md",),
    *,
    baseline: Mapping[str, Any] | None = None,
    statuses: Iterable[str] = ("completed",),
) -> list[Path]:
    """Writes ``trials.<ext>`` and ``configs.<ext>`` per format into ``out_dir`` (created).

    Args:
        study: Named in the captions.
        table: The results or their scores; metric, mode, baseline, statuses as in
            `summary_tables`.
        metric: The selection metric.
        mode: "max" or "min".
        out_dir: Where to write; each file is replaced atomically.
        formats: Any of md, csv, latex (``.tex``), html.

    Returns:
        The written paths, table by table, in the order of ``formats``.
    """
    formats = list(formats)
    unknown = [f for f in formats if f not in EXTENSIONS]
    if unknown:
        raise ValueError(f"unknown report formats {unknown}; choose from {sorted(EXTENSIONS)}")
    tables = summary_tables(table, metric, mode, baseline=baseline, statuses=statuses, study=study)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, report in tables.items():
        for fmt in formats:
            path = out / f"{name}.{EXTENSIONS[fmt]}"
            write_text_atomic(path, render(report, fmt))
            written.append(path)
    return written


def _trials_table(
    scores: list[TrialScore], metric: str, tests: list[str], study: str
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
        f"{study}: trials ranked by {score_col} (best over epochs); test metrics of the model "
        f"selected at the best epoch. {_CONVENTION}"
    )
    result = ReportTable("trials", caption.lstrip(": "), columns, rows, verbatim=set(keys))
    result.percent = _percent_columns(result, [score_col, *tests])
    return result


@dataclass(frozen=True)
class _Stat:
    """An aggregated column: its name, which direction is better, and a trial's value."""

    name: str
    mode: Mode
    value: Callable[[TrialScore], float | None]


def _configs_table(
    scores: list[TrialScore],
    metric: str,
    mode: Mode,
    tests: list[str],
    baseline: Mapping[str, Any] | None,
    statuses: set[str],
    study: str,
) -> ReportTable:
    groups = group_by_config(s for s in scores if s.status in statuses)
    # The selection score, and the test accuracy the paper-style tables report.
    stats = [_Stat(metric, mode, lambda s: s.score)]
    if "test/acc" in tests and metric != "test/acc":
        stats.append(_Stat("test/acc", "max", lambda s: s.test.get("test/acc")))
    base = find_baseline(groups, baseline) if baseline else None
    cells = {id(g): [MeanStd.of(g.samples(st.value).values()) for st in stats] for g in groups}
    sign = -1.0 if mode == "max" else 1.0
    groups.sort(key=lambda g: _rank(cells[id(g)][0], sign, g.config))
    keys = varying_keys(g.config for g in groups)
    columns = [*keys, "seeds"]
    for st in stats:
        columns += [st.name, f"p {st.name}"] if base else [st.name]
    result = ReportTable("configs", "", columns, [], verbatim=set(keys))
    for r, group in enumerate(groups):
        row: list[Any] = [group.config.get(k) for k in keys]
        row.append(len(group.samples(stats[0].value)))
        for st, cell in zip(stats, cells[id(group)], strict=True):
            row.append(cell)
            if base is not None:
                p = _pvalue(group, base, st)
                row.append(p)
                if isinstance(p, float) and p < ALPHA:
                    result.bold |= {(r, st.name), (r, f"p {st.name}")}
        result.rows.append(row)
    for s, st in enumerate(stats):
        means = {r: c.mean for r, g in enumerate(groups) if (c := cells[id(g)][s]) is not None}
        best = (max if st.mode == "max" else min)(means.values(), default=None)
        result.underline |= {(r, st.name) for r, mean in means.items() if mean == best}
    result.pvalues = {c for c in columns if c.startswith("p ")}
    result.percent = _percent_columns(result, [st.name for st in stats])
    result.caption = _configs_caption(study, metric, mode, statuses, baseline)
    return result


def _pvalue(group: ConfigGroup, base: ConfigGroup, stat: _Stat) -> float | str | None:
    if group is base:
        return "baseline"
    return paired_pvalue(group.samples(stat.value), base.samples(stat.value), stat.mode)


def _rank(cell: MeanStd | None, sign: float, config: dict[str, Any]) -> tuple[Any, ...]:
    # Best mean first, groups without a score last; the config text breaks ties.
    return (cell is None, sign * cell.mean if cell else 0.0, repr(sorted(config.items())))


def _configs_caption(
    study: str, metric: str, mode: Mode, statuses: set[str], baseline: Mapping[str, Any] | None
) -> str:
    text = (
        f"{study}: configurations (seed excluded), {', '.join(sorted(statuses))} trials; "
        f"{metric} is each trial's best over epochs ({mode}); mean ± sample std over seeds; "
        "underlined: best mean."
    )
    if baseline:
        given = ", ".join(f"{_key(k)}={v}" for k, v in baseline.items())
        text += (
            f" p: one-sided paired t-test against the baseline ({given}) over shared seeds; "
            f"bold: p < {ALPHA}."
        )
    return f"{text} {_CONVENTION}".lstrip(": ")


_CONVENTION = "Accuracies in %, other numbers raw."


def _percent_columns(table: ReportTable, candidates: list[str]) -> set[str]:
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


def _key(key: str) -> str:
    return key.removeprefix("config.")
