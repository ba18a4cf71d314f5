"""A scaling study's figures, drawn with the report's scaling plots: each searched key's optimum
vs each numeric scale axis (bootstrap intervals as error bars, the power-law fit), and the
metric vs each numeric axis per series (own optimum, transferred optimum, each variant)."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from normstudy.report import label, metric_vs_scale, optimum_vs_scale
from normstudy.scaling._analysis import ScalingAnalysis, is_number, line_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from normstudy.report import WrittenFigures
    from normstudy.storage import Location

Drawn = tuple[str, str, "Figure | str"]
OWN, TRANSFERRED = "own optimum", "transferred optimum"


def _slug(key: str) -> str:
    return key.replace(".", "-").replace("/", "-")


def scaling_figures(a: ScalingAnalysis) -> Iterator[Drawn]:
    """(stem, title, figure or why it is skipped) of each scaling figure."""
    yield from _optimum_figures(a)
    yield from _metric_figures(a)


def _optimum_figures(a: ScalingAnalysis) -> Iterator[Drawn]:
    for fit in a.fits:
        stem = f"scaling-{_slug(fit.key)}-vs-{_slug(fit.axis)}"
        title = f"optimal {label(fit.key)} vs {label(fit.axis)}, power-law fit"
        if fit.law is None:
            yield stem, title, fit.note
            continue
        figure = optimum_vs_scale(
            fit.scales, fit.optima, scale_label=label(fit.axis), optimum_label=label(fit.key)
        )
        intervals = [a.points[i].intervals.get(fit.key) for i in fit.indices]
        if all(intervals):
            low = [h - iv.low for h, iv in zip(fit.optima, intervals, strict=True) if iv]
            high = [iv.high - h for h, iv in zip(fit.optima, intervals, strict=True) if iv]
            figure.axes[0].errorbar(
                fit.scales, fit.optima, yerr=[low, high], fmt="none", capsize=3, color="C0"
            )
        yield stem, title, figure


def metric_rows(a: ScalingAnalysis, axis: str) -> list[dict[str, Any]]:
    """The points of the metric figure along ``axis``: ``variant`` (the series), ``scale``,
    ``mean``, ``std`` (over seeds)."""
    rows = []
    indices = line_of(a.axes, a.points, axis)
    transfer = {t.index: t for t in a.transfer}
    for i in indices:
        scale = a.points[i].point[axis]
        cells: dict[str, Any] = {}
        if i in transfer:
            cells |= {OWN: transfer[i].own, TRANSFERRED: transfer[i].transferred}
        elif not a.transfer:
            cells[f"search {OWN}"] = a.points[i].seeds
        cells |= {f"variant {v}": cell for v, cell in a.points[i].variants.items()}
        rows += [
            {"variant": series, "scale": scale, "mean": cell.mean, "std": cell.std}
            for series, cell in cells.items()
            if cell is not None
        ]
    return rows


def _metric_figures(a: ScalingAnalysis) -> Iterator[Drawn]:
    for axis, values in a.axes.items():
        stem = f"scaling-{_slug(a.metric)}-vs-{_slug(axis)}"
        title = f"{a.metric} vs {label(axis)}: mean ± std over seeds"
        if not all(is_number(v) and v > 0 for v in values):
            yield stem, title, f"{axis} is not a positive number axis"
            continue
        rows = metric_rows(a, axis)
        if not rows:
            yield stem, title, "no scored trial yet"
            continue
        numbers = [float(v) for v in values]
        figure = metric_vs_scale(
            rows,
            metric_label=f"best {a.metric}",
            scale_label=label(axis),
            log_x=max(numbers) >= 4 * min(numbers),
        )
        yield stem, title, figure


def write_scaling_figures(
    a: ScalingAnalysis, out: Location, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150
) -> WrittenFigures:
    """Draws every scaling figure and writes each as ``<out>/<stem>.<format>``."""
    from normstudy.report import FigureFile, WrittenFigures

    written = WrittenFigures()
    for stem, title, figure in scaling_figures(a):
        if isinstance(figure, str):
            written.skipped.append(f"{stem}: {figure}")
            continue
        blobs = {fmt: _save(figure, fmt, dpi) for fmt in dict.fromkeys([*formats, "png"])}
        for fmt in formats:
            (out / f"{stem}.{fmt}").write_bytes(blobs[fmt])
            written.paths.append(out / f"{stem}.{fmt}")
        files = tuple(f"{out.name}/{stem}.{fmt}" for fmt in formats)
        written.files.append(FigureFile(stem, title, blobs["png"], files))
    return written


def _save(figure: Figure, fmt: str, dpi: int) -> bytes:
    buffer = io.BytesIO()
    # A fixed date keeps PDFs byte-identical across runs of the same data (as the report's).
    figure.savefig(
        buffer, format=fmt, dpi=dpi, metadata={"CreationDate": None} if fmt == "pdf" else None
    )
    return buffer.getvalue()
