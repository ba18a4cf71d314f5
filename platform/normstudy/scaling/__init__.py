"""Scaling studies: an independent search per scale point (batch size, model, norm batch...),
the optimum of each searched key vs scale with a power-law fit, and the smallest point's
optimum transferred to the larger ones.

`normstudy run` runs a study with a ``scale:`` section through `run_scaling`; `normstudy report`
writes `scaling_tables`. The analysis imports no torch.
"""

from normstudy.scaling._analysis import (
    Configuration,
    Fit,
    Interval,
    PointOptimum,
    PowerLaw,
    ScalingAnalysis,
    TransferPoint,
    analyze,
    best_configuration,
    bootstrap_draws,
    bootstrap_optimum,
    configurations,
    power_law_fit,
)
from normstudy.scaling._figures import metric_rows, scaling_figures, write_scaling_figures
from normstudy.scaling._report import load_analysis, scaling_tables, write_scaling_report
from normstudy.scaling._run import ScalingOutcome, run_scaling
from normstudy.scaling._specs import optimum, point_specs, transfer_spec

__all__ = [
    "Configuration",
    "Fit",
    "Interval",
    "PointOptimum",
    "PowerLaw",
    "ScalingAnalysis",
    "ScalingOutcome",
    "TransferPoint",
    "analyze",
    "best_configuration",
    "bootstrap_draws",
    "bootstrap_optimum",
    "configurations",
    "load_analysis",
    "metric_rows",
    "optimum",
    "point_specs",
    "power_law_fit",
    "run_scaling",
    "scaling_figures",
    "scaling_tables",
    "transfer_spec",
    "write_scaling_figures",
    "write_scaling_report",
]
