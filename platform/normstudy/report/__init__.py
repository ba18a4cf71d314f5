"""Reports of a study's results: best trials, per-trial and per-configuration tables with
mean ± std over seeds and paired significance tests against a baseline.

Imports neither torch nor ray (and scipy only when a test runs), so `best` and `report` start fast.
"""

from normstudy.report._best import best_table
from normstudy.report._progress import Progress, study_progress
from normstudy.report._render import ReportTable, render
from normstudy.report._stats import (
    ConfigGroup,
    MeanStd,
    find_baseline,
    group_by_config,
    paired_pvalue,
    varying_keys,
)
from normstudy.report._tables import ALPHA, summary_tables, write_report

__all__ = [
    "ALPHA",
    "ConfigGroup",
    "MeanStd",
    "Progress",
    "ReportTable",
    "best_table",
    "find_baseline",
    "group_by_config",
    "paired_pvalue",
    "render",
    "study_progress",
    "summary_tables",
    "varying_keys",
    "write_report",
]
