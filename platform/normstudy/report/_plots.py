"""Study figures drawn from the Parquet results: learning curves, score vs hyperparameters.

Each function takes plain data (a results table, axis kinds) and returns a matplotlib `Figure`
made without pyplot, so no backend or global state is involved; the caller saves it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from normstudy.report._format import config_value
from normstudy.report._labels import labels as short_labels
from normstudy.report._stats import ConfigGroup, Mode, group_by_config, varying_keys
from normstudy.results import trial_scores

if TYPE_CHECKING:
    import pyarrow as pa
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_PANELS = 12
MAX_CURVES = 8
"""Configurations drawn in learning curves: the best ones (a legend of 50 says nothing)."""


@dataclass(frozen=True)
class Axis:
    """How a searched key is drawn: on a log axis, or as categories (names, booleans)."""

    log: bool = False
    categorical: bool = False


def epoch_metrics(table: pa.Table, first: Sequence[str] = ()) -> list[str]:
    """Metrics reported every epoch (not test/*, reported once, nor the running best/*),
    ``first`` ones first."""
    skip = ("test/", "best/", "config.", "meta.")
    names = [
        n
        for n in table.column_names
        if ("/" in n or n == "lr") and not n.startswith(skip) and table[n].null_count < len(table)
    ]
    return [m for m in first if m in names] + sorted(n for n in names if n not in first)


def _grid(count: int, legend_rows: int = 0, right: float = 0.3) -> tuple[Figure, list[Axes]]:
    """Up to three panels a row, on fixed margins (in inches): constrained layout would measure
    every tick label and double the cost of a figure; ``legend_rows`` leaves room below."""
    from matplotlib.figure import Figure

    cols = min(3, max(count, 1))
    rows = math.ceil(count / cols) if count else 1
    width, height = 4.4 * cols + right, 3.2 * rows + 0.8 + 0.22 * legend_rows
    figure = Figure(figsize=(width, height))
    bottom = 0.6 + (0.22 * legend_rows + 0.25 if legend_rows else 0.0)
    figure.subplots_adjust(
        left=0.75 / width, right=1 - right / width, top=1 - 0.85 / height, bottom=bottom / height,
        wspace=0.45, hspace=0.5,
    )  # fmt: skip
    axes = figure.subplots(rows, cols, squeeze=False).ravel().tolist()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, axes[:count]


def _describe(config: Mapping[str, Any], keys: Sequence[str], names: Mapping[str, str]) -> str:
    return ", ".join(f"{names[k]}={config_value(config.get(k))}" for k in keys) or "all trials"


def learning_curves(
    table: pa.Table,
    metrics: Sequence[str],
    *,
    metric: str,
    mode: Mode,
    top: int = MAX_CURVES,
) -> Figure:
    """Each metric vs epoch, a line per configuration: the mean over its seeds, with a band of
    ± one sample std where two or more seeds reached the epoch.

    Args:
        table: The results (one row per trial and epoch).
        metrics: Per-epoch metrics, one panel each (at most `MAX_PANELS`).
        metric: Ranks the configurations (mean of each trial's best); the ``top`` best are drawn.
        mode: "max" or "min".
        top: How many configurations.
    """
    metrics = list(metrics)[:MAX_PANELS]
    groups = _best_groups(table, metric, mode, top)
    keys = varying_keys(g.config for g in groups)
    names = short_labels(keys)
    columns = table.select(["trial_id", "epoch", *metrics]).to_pydict()
    figure, axes = _grid(len(metrics), legend_rows=math.ceil(len(groups) / 2))
    for group in groups:
        trials = {t.trial_id for t in group.trials}
        rows = [i for i, t in enumerate(columns["trial_id"]) if t in trials]
        for ax, name in zip(axes, metrics, strict=True):
            epochs, mean, std = _per_epoch(rows, columns["epoch"], columns[name])
            (line,) = ax.plot(epochs, mean, label=_describe(group.config, keys, names))
            low = [m - s if s is not None else m for m, s in zip(mean, std, strict=True)]
            high = [m + s if s is not None else m for m, s in zip(mean, std, strict=True)]
            if any(s is not None for s in std):
                ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, lw=0)
    from matplotlib.ticker import MaxNLocator

    for ax, name in zip(axes, metrics, strict=True):
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if axes and groups:
        handles, texts = axes[0].get_legend_handles_labels()
        figure.legend(handles, texts, loc="lower center", ncols=2, fontsize="small", frameon=False)
    figure.suptitle(f"learning curves: mean ± std over seeds, best {len(groups)} by {metric}")
    return figure


def _best_groups(table: pa.Table, metric: str, mode: Mode, top: int) -> list[ConfigGroup]:
    groups = group_by_config(trial_scores(table, metric, mode))
    sign = -1.0 if mode == "max" else 1.0

    def rank(group: ConfigGroup) -> tuple[bool, float]:
        values = list(group.samples(lambda s: s.score).values())
        return (not values, sign * statistics.fmean(values) if values else 0.0)

    return sorted(groups, key=rank)[:top]


def _per_epoch(
    rows: list[int], epochs: list[Any], values: list[Any]
) -> tuple[list[int], list[float], list[float | None]]:
    by_epoch: dict[int, list[float]] = {}
    for i in rows:
        value = values[i]
        if value is not None and not math.isnan(value):
            by_epoch.setdefault(int(epochs[i]), []).append(value)
    order = sorted(by_epoch)
    mean = [statistics.fmean(by_epoch[e]) for e in order]
    std = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else None for e in order]
    return order, mean, std


def score_vs_params(
    table: pa.Table,
    metric: str,
    mode: Mode,
    space: Mapping[str, Axis],
    *,
    statuses: Sequence[str] = ("completed",),
) -> Figure:
    """Each trial's score against each searched key, coloured by the next searched key.

    Trials with other statuses (stopped early, failed with a score) are drawn as crosses. Log
    axes where the key's distribution is log; categories (names, booleans) at evenly spaced
    ticks, and as a legend when they colour.
    """
    scores = [s for s in trial_scores(table, metric, mode) if s.score is not None]
    keys = list(space)[:MAX_PANELS]
    names = short_labels(space)
    figure, axes = _grid(len(keys), right=0.9)
    for k, (ax, key) in enumerate(zip(axes, keys, strict=True)):
        colour = keys[(k + 1) % len(keys)] if len(keys) > 1 else None
        shown = [s for s in scores if s.config.get(key) is not None]
        x = _positions(ax, [s.config[key] for s in shown], space[key])
        points = [(x[i], float(s.score or 0.0), s.config.get(colour or ""), s.status in statuses)
                  for i, s in enumerate(shown)]  # fmt: skip
        mappable = _scatter(ax, points, space[colour] if colour else None)
        ax.set_xlabel(names[key])
        ax.set_ylabel(f"best {metric}")
        ax.grid(alpha=0.3)
        if colour is None:
            continue
        if space[colour].categorical:
            ax.legend(title=names[colour], fontsize="small")
        elif mappable is not None:
            figure.colorbar(mappable, ax=ax, label=names[colour])
    figure.suptitle(f"best {metric} ({mode}) per trial vs each searched key")
    return figure


def _positions(ax: Axes, values: list[Any], axis: Axis) -> list[float]:
    if not axis.categorical:
        if axis.log:
            ax.set_xscale("log")
        return [float(v) for v in values]
    levels = sorted({str(v) for v in values})
    ax.set_xticks(range(len(levels)), levels)
    return [float(levels.index(str(v))) for v in values]


Point = tuple[float, float, Any, bool]
"""x, y, the colouring key's value, and whether the trial has a status that counts."""


def _scatter(ax: Axes, points: list[Point], colour: Axis | None) -> Any:
    """Draws the points, one collection per (status kind[, category]); returns the mappable
    of a numeric colouring."""
    from matplotlib.colors import LogNorm, Normalize

    style: dict[str, Any] = {"s": 28}
    if colour is not None and not colour.categorical:
        known = [float(p[2]) for p in points if p[2] is not None]
        positive = colour.log and min(known, default=1.0) > 0
        style |= {
            "cmap": "viridis",
            "norm": (LogNorm if positive else Normalize)(
                min(known, default=0), max(known, default=1)
            ),
        }
    levels = sorted({str(p[2]) for p in points}) if colour and colour.categorical else [None]
    mappable = None
    for n, level in enumerate(levels):
        for counted in (True, False):
            subset = [
                p for p in points if p[3] is counted and (level is None or str(p[2]) == level)
            ]
            if not subset:
                continue
            extra: dict[str, Any] = {"marker": "o" if counted else "x"}
            if "cmap" in style:
                extra["c"] = [float(p[2]) if p[2] is not None else math.nan for p in subset]
            else:
                extra["color"] = f"C{n}"
            if level is not None and counted:
                extra["label"] = level
            xs, ys = [p[0] for p in subset], [p[1] for p in subset]
            made = ax.scatter(xs, ys, **style, **extra)
            mappable = mappable or (made if "cmap" in style else None)
    return mappable
