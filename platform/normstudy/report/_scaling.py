"""Scaling figures from plain tables: the optimum vs scale with a power-law fit, and a metric
vs a scale axis per variant with error bars (000's norm-batch sweep, 001's γ² vs batch size).

They take plain rows, not a study: a study's ``scale:`` section (to come) reduces its results
to these rows and registers a figure kind that calls them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class PowerFit:
    """``y = a · x^b`` fitted by least squares on log y vs log x, with R² of that fit."""

    a: float
    b: float
    r2: float

    def __call__(self, x: float) -> float:
        return self.a * x**self.b


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerFit:
    """Least squares on (log x, log y); needs two or more distinct positive x and positive y.

    Example:
        >>> fit = fit_power_law([1, 2, 4], [3, 6, 12])
        >>> round(fit.a, 6), round(fit.b, 6)
        (3.0, 1.0)
    """
    if len(x) != len(y) or len({v for v in x}) < 2 or min(*x, *y) <= 0:
        raise ValueError("a power-law fit needs two or more distinct x, and x, y > 0")
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((v - mx) ** 2 for v in lx)
    b = sum((u - mx) * (v - my) for u, v in zip(lx, ly, strict=True)) / sxx
    log_a = my - b * mx
    ss_res = sum((v - log_a - b * u) ** 2 for u, v in zip(lx, ly, strict=True))
    ss_tot = sum((v - my) ** 2 for v in ly)
    return PowerFit(math.exp(log_a), b, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0)


def optimum_vs_scale(
    scales: Sequence[float],
    optima: Sequence[float],
    *,
    scale_label: str = "scale",
    optimum_label: str = "optimum",
    fit: bool = True,
) -> Figure:
    """The best value of a hyperparameter at each scale point (dots) and the power-law fit
    (a line labelled with it), on log-log axes.

    Args:
        scales: The scale points (e.g. batch sizes).
        optima: The optimal value found at each.
        scale_label: The x axis label.
        optimum_label: The y axis label.
        fit: Draw the fit (when it is defined: two or more distinct positive scales).
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 3.8), layout="constrained")
    ax = figure.subplots()
    ax.scatter(list(scales), list(optima), zorder=3, label="optimum")
    if fit and len(set(scales)) >= 2 and min(*scales, *optima) > 0:
        power = fit_power_law(scales, optima)
        xs = _geometric(min(scales), max(scales), 50)
        label = f"fit {power.a:.3g}·x^{power.b:.3g} (R² {power.r2:.3f})"
        ax.plot(xs, [power(v) for v in xs], color="C1", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(scale_label)
    ax.set_ylabel(optimum_label)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return figure


def metric_vs_scale(
    rows: Iterable[Mapping[str, Any]],
    *,
    metric_label: str = "metric",
    scale_label: str = "scale",
    log_x: bool = True,
) -> Figure:
    """A metric against a scale axis, a line with error bars (± std) per variant.

    Args:
        rows: Mappings with ``variant``, ``scale``, ``mean`` and ``std`` (None: no bar).
        metric_label: The y axis label.
        scale_label: The x axis label.
        log_x: A log scale axis (batch sizes, widths).
    """
    from matplotlib.figure import Figure

    by_variant: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(str(row["variant"]), []).append(row)
    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = figure.subplots()
    for variant, points in by_variant.items():
        points = sorted(points, key=lambda r: r["scale"])
        errors = [r.get("std") or 0.0 for r in points]
        ax.errorbar(
            [r["scale"] for r in points],
            [r["mean"] for r in points],
            yerr=errors,
            marker="o",
            capsize=3,
            label=variant,
        )
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(scale_label)
    ax.set_ylabel(metric_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return figure


def _geometric(low: float, high: float, count: int) -> list[float]:
    step = (math.log(high) - math.log(low)) / (count - 1)
    return [math.exp(math.log(low) + i * step) for i in range(count)]
