"""Optuna's own plots of a study's search, from its Optuna storage.

`optuna.visualization.matplotlib` draws with pyplot: each figure is closed once taken. Its
functions are marked experimental; their warnings are silenced here, once.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

MAX_CONTOUR_PARAMS = 4
"""A contour grid over more keys is unreadable and slow: the most important ones are drawn."""


def optuna_figures(
    study: optuna.Study, metrics: Sequence[str]
) -> Iterator[tuple[str, str, Figure | str]]:
    """(stem, title, figure or the reason it is skipped) of each plot that fits the study:
    parameter importances, slice and contour for one objective; for several, importances per
    objective and the Pareto front."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    params = sorted({p for t in done for p in t.params})
    if len(done) < 2:
        yield "optuna", "Optuna plots", f"{len(done)} completed Optuna trials (2 needed)"
        return
    multi = len(study.directions) > 1
    targets = [(i, m) for i, m in enumerate(metrics)] if multi else [(None, metrics[0])]
    for index, name in targets:
        target = (lambda t, i=index: t.values[i]) if index is not None else None
        stem = f"-{name.replace('/', '-')}" if multi else ""
        yield _draw(
            f"optuna-importances{stem}",
            f"parameter importances (fANOVA) for {name}",
            "plot_param_importances",
            study,
            target=target,
            target_name=name,
        )
    if multi:
        yield _draw(
            "optuna-pareto",
            "Pareto front: " + " vs ".join(metrics),
            "plot_pareto_front",
            study,
            target_names=list(metrics),
        )
        return
    yield _draw("optuna-slice", f"{metrics[0]} vs each parameter", "plot_slice", study)
    if len(params) < 2:
        yield "optuna-contour", "contour", "one searched parameter: no contour"
        return
    shown = _most_important(study, params)
    yield _draw("optuna-contour", f"{metrics[0]} contours", "plot_contour", study, params=shown)


def study_keys(study: optuna.Study) -> list[str]:
    """The parameters the study's trials were given."""
    return sorted({p for t in study.get_trials(deepcopy=False) for p in t.params})


def _most_important(study: optuna.Study, params: list[str]) -> list[str]:
    if len(params) <= MAX_CONTOUR_PARAMS:
        return params
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranked = optuna.importance.get_param_importances(study)
    return list(ranked)[:MAX_CONTOUR_PARAMS]


def _draw(stem: str, title: str, kind: str, study: Any, **kwargs: Any) -> tuple[str, str, Any]:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # headless; a session that chose a backend keeps it
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = getattr(plots, kind)(study, **kwargs)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. a constant parameter
        plt.close("all")
        return stem, title, f"{kind}: {e}"
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    figure = first.figure
    plt.close(figure)  # pyplot forgets it; the Figure itself still saves
    _tidy(figure, len(axes.flat) if hasattr(axes, "flat") else 1, study_keys(study))
    return stem, title, figure


def _tidy(figure: Figure, panels: int, keys: Sequence[str]) -> None:
    """Short labels for the searched keys, and room for them: Optuna sizes every plot
    6.4 x 4.8 in and labels axes with the full keys, which overlap in a contour grid."""
    from normstudy.report._labels import labels

    names = labels(keys)
    for ax in figure.axes:
        ax.set_xlabel(names.get(ax.get_xlabel(), ax.get_xlabel()))
        ax.set_ylabel(names.get(ax.get_ylabel(), ax.get_ylabel()))
        texts = [t.get_text() for t in ax.get_yticklabels()]
        if any(t in names for t in texts):  # importances: a bar per key
            ax.set_yticks(ax.get_yticks(), [names.get(t, t) for t in texts])
    if panels == 1:
        figure.tight_layout()
        return
    # Only scaled: Optuna places the colorbar of a grid by hand, a new layout would cover it.
    side = max(1, round(panels**0.5))
    figure.set_size_inches(3.2 * side + 1.6, 2.8 * side + 0.8)
