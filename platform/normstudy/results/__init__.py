"""The Parquet results dataset: the source of truth of every study.

One row per (trial, epoch) with the trial's flattened config and every reported metric; one file
per trial, rewritten atomically on each update.
"""

from normstudy.results._dataset import (
    DamagedResultWarning,
    TrialScore,
    read_results,
    trial_scores,
)
from normstudy.results._schema import (
    BASE_SCHEMA,
    STATUSES,
    concat_promoted,
    flatten_config,
    make_row,
    order_columns,
    rows_to_table,
)
from normstudy.results._sink import ResultsSink

__all__ = [
    "BASE_SCHEMA",
    "STATUSES",
    "DamagedResultWarning",
    "ResultsSink",
    "TrialScore",
    "concat_promoted",
    "flatten_config",
    "make_row",
    "order_columns",
    "read_results",
    "rows_to_table",
    "trial_scores",
]
