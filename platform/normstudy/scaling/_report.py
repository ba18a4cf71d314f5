"""A scaling study's tables: the optimum per scale point, the power-law fits, the transfer."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normstudy.report import MeanStd, ReportTable, label, render
from normstudy.scaling._analysis import LEVEL, RESAMPLES, ScalingAnalysis, analyze

if TYPE_CHECKING:
    from normstudy.report import FigureFile
    from normstudy.report._render import Format
    from normstudy.spec import StudySpec
    from normstudy.storage import Location

TABLES = ("scaling_optima", "scaling_fit", "scaling_transfer")


def load_analysis(spec: StudySpec, home: Location, *, seed: int = 0) -> ScalingAnalysis:
    """The analysis of scaling study ``spec`` from its parts' Parquet results in ``home``."""
    from normstudy.home import StudyPaths
    from normstudy.results import read_results, trial_scores
    from normstudy.spec._scale import point_name, scale_points, transfer_name

    metric, mode = spec.search.metrics[0], spec.search.modes[0]

    def scores(study: str) -> list[Any]:
        return trial_scores(read_results(StudyPaths(home, study).results), metric, mode)

    points = [scores(point_name(spec.name, i)) for i in range(len(scale_points(spec)))]
    return analyze(spec, points, scores(transfer_name(spec.name)), seed=seed)


def scaling_tables(analysis: ScalingAnalysis) -> dict[str, ReportTable]:
    """``scaling_optima``, ``scaling_fit`` and (once the transfer phase ran)
    ``scaling_transfer``."""
    tables = {"scaling_optima": _optima(analysis), "scaling_fit": _fit(analysis)}
    if analysis.transfer:
        tables["scaling_transfer"] = _transfer(analysis)
    return tables


def write_scaling_report(
    analysis: ScalingAnalysis,
    out_dir: str | Path | Location,
    formats: Iterable[Format] = ("md",),
    figures: Sequence[FigureFile] = (),
) -> list[Location]:
    """Writes each table per format into ``out_dir`` (a folder or s3:// / gs:// URI); HTML is
    one standalone page, ``index.html``, with every table and the given figures."""
    from normstudy.report import study_page
    from normstudy.report._render import EXTENSIONS
    from normstudy.storage import as_location

    formats = list(formats)
    tables = scaling_tables(analysis)
    out = as_location(out_dir)
    out.mkdir()
    written = []
    for name, table in tables.items():
        for fmt in (f for f in formats if f != "html"):
            path = out / f"{name}.{EXTENSIONS[fmt]}"
            path.write_text(render(table, fmt))
            written.append(path)
    if "html" in formats:
        page = out / "index.html"
        page.write_text(study_page(analysis.study, list(tables.values()), figures))
        written.append(page)
    return written


_PERCENTILES = f"{100 * (1 - LEVEL) / 2:g}%", f"{100 * (1 + LEVEL) / 2:g}%"


def _optima(a: ScalingAnalysis) -> ReportTable:
    score = f"best {a.metric}"
    with_interval = [k for k in a.keys if any(k in p.intervals for p in a.points)]
    columns = ["point", *a.axes, "study", "configurations", score]
    for key in a.keys:
        columns += [key] + ([f"{key} {q}" for q in _PERCENTILES] if key in with_interval else [])
    rows = []
    for p in a.points:
        row: list[Any] = [p.index, *(p.point[x] for x in a.axes), p.study, p.configurations]
        row.append(p.score)
        for key in a.keys:
            row.append(p.optimum.get(key))
            if key in with_interval:
                interval = p.intervals.get(key)
                row += [interval.low, interval.high] if interval else [None, None]
        rows.append(row)
    caption = (
        f"{a.study}: the optimum of each searched key per scale point (the configuration with "
        f"the best mean {a.metric} over its seeds, {a.mode}), with a {LEVEL:.0%} bootstrap "
        f"interval ({RESAMPLES} resamples of the point's configurations and their seeds)."
    )
    keys = {c: c for c in a.axes} | {k: k for k in a.keys}
    keys |= {f"{k} {q}": k for k in with_interval for q in _PERCENTILES}
    labels = {c: label(c) for c in [*a.axes, *a.keys]}
    labels |= {f"{k} {q}": f"{label(k)} {q}" for k in with_interval for q in _PERCENTILES}
    table = ReportTable("scaling_optima", caption, columns, rows, labels=labels, keys=keys)
    table.percent = _percent(a.metric, [p.score for p in a.points], score)
    table.study = a.study
    return table


def _fit(a: ScalingAnalysis) -> ReportTable:
    low, high = (f"b {q}" for q in _PERCENTILES)
    columns = ["key", "axis", "points", "a", "b", low, high, "R²", "note"]
    rows = []
    for f in a.fits:
        law = f.law
        interval = law.b_interval if law else None
        rows.append(
            [f.key, f.axis, len(f.scales)]
            + ([law.a, law.b] if law else [None, None])
            + ([interval.low, interval.high] if interval else [None, None])
            + [law.r2 if law else None, f.note]
        )
    caption = (
        f"{a.study}: power law h*(s) = a·s^b of each key's optimum against each numeric scale "
        f"axis (least squares on log h* vs log s; the other axes at the smallest point's "
        f"values); {LEVEL:.0%} interval of b from the t distribution with n − 2 dof."
    )
    table = ReportTable("scaling_fit", caption, columns, rows, study=a.study)
    table.notes = [f"{k}: {label(k)}" for k in dict.fromkeys(f.key for f in a.fits)]
    return table


def _transfer(a: ScalingAnalysis) -> ReportTable:
    own, moved = f"optimum {a.metric}", f"transferred {a.metric}"
    columns = ["point", *a.axes, own, moved, "transferred − optimum", "seeds"]
    rows = []
    for t in a.transfer:
        gap = t.transferred.mean - t.own.mean if t.own and t.transferred else None
        seeds = t.own.n if t.own else None
        rows.append([t.index, *(t.point[x] for x in a.axes), t.own, t.transferred, gap, seeds])
    caption = (
        f"{a.study}: at each scale point, its own optimum and the smallest point's optimum "
        f"(transferred), each re-run over the study's seeds: mean ± sample std of {a.metric} "
        "(each trial's best over epochs)."
    )
    table = ReportTable(
        "scaling_transfer", caption, columns, rows, labels={x: label(x) for x in a.axes},
        keys={x: x for x in a.axes}, study=a.study,
    )  # fmt: skip
    values = [c.mean for t in a.transfer for c in (t.own, t.transferred) if c is not None]
    table.percent = _percent(a.metric, values, own) | _percent(a.metric, values, moved)
    if table.percent:
        table.percent.add("transferred − optimum")
    return table


def _percent(metric: str, values: Iterable[float | MeanStd | None], column: str) -> set[str]:
    numbers = [v for v in values if isinstance(v, float) and not math.isnan(v)]
    return {column} if "acc" in metric and all(0.0 <= v <= 1.0 for v in numbers) else set()
