"""The Parquet results dataset: the source of truth of every study.

One row per (trial, epoch) with the trial's flattened config and every reported metric, typed
by one schema per study (derived from its spec, stored in ``results/_schema.json`` and in each
file). A running trial has its own file, rewritten atomically on each update; finished trials
are compacted into part files.
"""

from normstudy.results._compact import compact
from normstudy.results._dataset import (
    DamagedResultWarning,
    TrialScore,
    read_results,
    read_schema,
    read_scores,
    score_table,
    trial_scores,
)
from normstudy.results._export import FORMATS as EXPORT_FORMATS
from normstudy.results._export import export_results
from normstudy.results._schema import (
    BASE_SCHEMA,
    STATUSES,
    concat_promoted,
    flatten_config,
    make_row,
    order_columns,
    rows_to_table,
)
from normstudy.results._schema_file import SCHEMA_FILE, SCHEMA_VERSION, ResultsFormatError
from normstudy.results._sink import ResultsSink
from normstudy.results._spec_schema import study_schema

__all__ = [
    "BASE_SCHEMA",
    "EXPORT_FORMATS",
    "SCHEMA_FILE",
    "SCHEMA_VERSION",
    "STATUSES",
    "DamagedResultWarning",
    "ResultsFormatError",
    "ResultsSink",
    "TrialScore",
    "compact",
    "concat_promoted",
    "export_results",
    "flatten_config",
    "make_row",
    "order_columns",
    "read_results",
    "read_schema",
    "read_scores",
    "rows_to_table",
    "score_table",
    "study_schema",
    "trial_scores",
]
