"""One file with a study's rows, or one row per trial at its best epoch, for other tools."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from normstudy.results._compact import parquet_bytes
from normstudy.results._dataset import read_results, score_table
from normstudy.results._scores import Mode
from normstudy.storage import Location, as_location

ExportFormat = Literal["parquet", "csv", "jsonl"]
FORMATS: tuple[ExportFormat, ...] = ("parquet", "csv", "jsonl")


def export_results(
    results_dir: str | Path | Location,
    out: str | Path | Location,
    format: ExportFormat = "parquet",
    *,
    per_trial: tuple[str, Mode] | None = None,
) -> int:
    """Writes the study's rows (typed as stored) to one file, atomically; returns the rows.

    Args:
        results_dir: The study's results folder.
        out: The file to write (a local path, s3:// or gs:// URI).
        format: parquet, csv or jsonl (one JSON object per line, NaN as null).
        per_trial: (metric, mode): instead of every epoch, one row per trial: its score
            (``score``: best value of the metric, ``best_epoch``, ``epochs``), its config and
            test metrics, and the other metrics at its best epoch; failed trials included.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    table = read_results(results_dir)
    if per_trial is not None:
        table = _best_epochs(table, score_table(results_dir, *per_trial))
    as_location(out).write_bytes(_encode(table, format))
    return table.num_rows


def _best_epochs(rows: pa.Table, scores: pa.Table) -> pa.Table:
    """``scores`` with the metrics (other than test/*) of each trial's best epoch."""
    taken = set(scores.column_names)
    metrics = [n for n in rows.column_names if "/" in n and n not in taken]
    at_best = rows.select(["trial_id", "epoch", *metrics]).rename_columns(
        ["trial_id", "best_epoch", *metrics]
    )
    joined = scores.join(at_best, ["trial_id", "best_epoch"], join_type="left outer")
    rank = pc.index_in(joined["trial_id"], value_set=scores["trial_id"])  # the scores' order
    joined = joined.append_column("_rank", rank).sort_by("_rank").drop_columns(["_rank"])
    return joined.select([*scores.column_names, *metrics])


def _encode(table: pa.Table, format: ExportFormat) -> bytes:
    if format == "parquet":
        return parquet_bytes(table)
    if format == "csv":
        buffer = pa.BufferOutputStream()
        pacsv.write_csv(table, buffer)
        return bytes(buffer.getvalue().to_pybytes())
    text = io.StringIO()
    for batch in table.to_batches(max_chunksize=65_536):
        for row in batch.to_pylist():
            text.write(json.dumps({k: _plain(v) for k, v in row.items()}) + "\n")
    return text.getvalue().encode("utf-8")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
