"""Reports of a study's results: best trials, per-trial and per-configuration tables with
mean ± std over seeds and paired significance tests (Holm-corrected), rendered as Markdown, CSV,
LaTeX and a standalone HTML page; figures (learning curves, score vs hyperparameters, Optuna's
plots, scaling) as PNG and PDF.

Imports neither torch nor ray (and scipy and matplotlib only when a test runs or a figure is
drawn), so `best` and `report` start fast.
"""

from normstudy.report._best import best_table
from normstudy.report._compare import ALPHA
from normstudy.report._context import Highlight, StudyContext, TableStyle
from normstudy.report._figures import (
    FigureInput,
    WrittenFigures,
    axis_of,
    figure_kinds,
    register_figure,
    write_figures,
)
from normstudy.report._labels import label, register_label
from normstudy.report._latex import latex_document
from normstudy.report._page import FigureFile, study_page
from normstudy.report._plots import Axis, epoch_metrics, learning_curves, score_vs_params
from normstudy.report._progress import Progress, format_duration, study_progress
from normstudy.report._render import ReportTable, render
from normstudy.report._scaling import PowerFit, fit_power_law, metric_vs_scale, optimum_vs_scale
from normstudy.report._stats import (
    MIN_PAIRS,
    ConfigGroup,
    MeanStd,
    PairedTest,
    find_baseline,
    group_by_config,
    holm,
    paired_pvalue,
    paired_test,
    varying_keys,
)
from normstudy.report._tables import summary_tables, write_report

__all__ = [
    "ALPHA",
    "MIN_PAIRS",
    "Axis",
    "ConfigGroup",
    "FigureFile",
    "FigureInput",
    "Highlight",
    "MeanStd",
    "PairedTest",
    "PowerFit",
    "Progress",
    "ReportTable",
    "StudyContext",
    "TableStyle",
    "WrittenFigures",
    "axis_of",
    "best_table",
    "epoch_metrics",
    "figure_kinds",
    "find_baseline",
    "fit_power_law",
    "format_duration",
    "group_by_config",
    "holm",
    "label",
    "latex_document",
    "learning_curves",
    "metric_vs_scale",
    "optimum_vs_scale",
    "paired_pvalue",
    "paired_test",
    "register_figure",
    "register_label",
    "render",
    "score_vs_params",
    "study_page",
    "study_progress",
    "summary_tables",
    "varying_keys",
    "write_figures",
    "write_report",
]
