"""Reading a study's results: all trial files as one table, and each trial's best epoch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from normstudy.results._files import (
    DamagedResultWarning,
    Listing,
    iter_tables,
    list_files,
    retrying,
)
from normstudy.results._schema import BASE_SCHEMA, concat_promoted
from normstudy.results._schema_file import load_schema
from normstudy.results._scores import Mode, ScoreReducer, carried_columns
from normstudy.storage import Location, as_location

__all__ = ["DamagedResultWarning", "Mode"]


def read_results(results_dir: str | Path | Location, columns: list[str] | None = None) -> pa.Table:
    """All rows of a results directory as one table, typed by the study's stored schema.

    A dataset written before schemas were stored (version 1) is read by promoting each
    file's types (int with float -> float64, other mixes -> string). Damaged files are left
    out with a `DamagedResultWarning` naming them; temp files of unfinished writes are ignored.

    Args:
        results_dir: The directory `ResultsSink` writes to; it may be missing or empty.
        columns: Only these columns (those the dataset has); default all.

    Returns:
        Rows ordered by trial_id then epoch; an empty table with the base columns when there
        are no trials.
    """
    directory = as_location(results_dir)
    if columns is not None:  # the order needs these
        columns = list(dict.fromkeys(["trial_id", "epoch", *columns]))

    def read() -> pa.Table:
        schema, tables = _scan(directory, columns)
        table = pa.concat_tables([schema.empty_table(), *tables])
        return table.sort_by([("trial_id", "ascending"), ("epoch", "ascending")])

    return retrying(read)


def read_schema(results_dir: str | Path | Location) -> pa.Schema:
    """The dataset's schema (the base columns when it has no files yet)."""
    directory = as_location(results_dir)
    schema, _ = load_schema(directory)
    if schema is not None:
        return schema
    return retrying(lambda: _scan(directory, None)[0])


def _scan(directory: Location, columns: list[str] | None) -> tuple[pa.Schema, Iterator[pa.Table]]:
    """The schema of the selected columns, and the dataset's rows in tables of that schema."""
    listing = list_files(directory)
    schema, _ = load_schema(directory)
    if schema is None:  # version 1: each file typed by its own values
        table = _legacy_table(listing)
        names = [c for c in columns or table.column_names if c in table.column_names]
        return table.select(names).schema, iter([table.select(names)])
    names = [c for c in columns or schema.names if c in schema.names]
    selected = pa.schema([schema.field(c) for c in names])
    return selected, iter_tables(listing, schema, names)


def _legacy_table(listing: Listing) -> pa.Table:
    tables = []
    for file in [*listing.trials.values(), *listing.parts]:
        table = next(iter_tables(Listing({"x": file}, []), _file_schema(file)), None)
        if table is not None:
            tables.append(table)
    return concat_promoted([BASE_SCHEMA.empty_table(), *tables])


def _file_schema(file: Location) -> pa.Schema:
    try:
        with file.fs.open_input_file(file.fs_path) as f:
            return pq.read_schema(f)
    except (pa.ArrowInvalid, OSError):
        return pa.schema([])  # damaged: the read names it


@dataclass(frozen=True)
class TrialScore:
    """One trial summarized by its best epoch for a metric.

    Attributes:
        trial_id: The trial.
        seed: Its training seed (None if not recorded).
        status: Its latest status.
        score: Best value of the metric over its epochs (NaN skipped); None if it has none.
        best_epoch: The (earliest) epoch reaching ``score``.
        epochs: Number of epochs reported.
        config: Its config as dotted keys without the ``config.`` prefix; nulls left out.
        test: Its non-null ``test/*`` metrics (reported once, for the best-validation model).
        attempts: How many times it ran (a retried trial ran more than once), once it ended.
        error: Its last error as 'Type: message' when its status is 'error'.
    """

    trial_id: str
    seed: int | None
    status: str | None
    score: float | None
    best_epoch: int | None
    epochs: int
    config: dict[str, Any] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    attempts: int | None = None
    error: str | None = None


def trial_scores(table: pa.Table, metric: str, mode: Mode) -> list[TrialScore]:
    """Each trial's best value of ``metric`` in ``table``, best trial first.

    Ties are broken by trial_id so the order is deterministic; trials with no value of the
    metric come last. Per-trial values (config, seed, attempts, error) are the trial's latest
    non-null ones, ``test`` its latest value of each test metric.

    Example:
        >>> best = trial_scores(read_results(d), "val/acc", "max")[0]  # doctest: +SKIP
    """
    return to_scores(_reduce(table, metric, mode))


def read_scores(
    results_dir: str | Path | Location,
    metric: str,
    mode: Mode,
    *,
    keys: Iterable[str] | None = None,
) -> list[TrialScore]:
    """`trial_scores` of a results directory, reading only the columns it needs, in batches
    (memory grows with the number of trials, not of rows).

    Args:
        results_dir: The results folder.
        metric: The metric; a trial's score is its best value over its epochs.
        mode: "max" or "min".
        keys: When given, each score's config holds only the keys whose values differ
            between trials and these (dotted, no ``config.`` prefix): what a table of the
            best trials shows, without a dict of every key for every trial.
    """
    table = score_table(results_dir, metric, mode)
    if keys is not None:
        table = _varying(table, {f"config.{k}" for k in keys})
    return to_scores(table)


def _varying(table: pa.Table, kept: set[str]) -> pa.Table:
    """Without the config columns that hold one value (null counts) in every row."""
    constant = [
        n
        for n in table.column_names
        if n.startswith("config.")
        and n not in kept
        and pc.count_distinct(table[n], mode="all").as_py() <= 1
    ]
    return table.drop_columns(constant)


def score_table(results_dir: str | Path | Location, metric: str, mode: Mode) -> pa.Table:
    """One row per trial (trial_id, seed, status, score, best_epoch, epochs, attempts, error,
    config.*, test/*), best first: `read_scores` as a table."""
    directory = as_location(results_dir)

    def read() -> pa.Table:
        schema, _ = load_schema(directory)
        if schema is None:  # version 1: typed by promotion first
            return _reduce(read_results(directory), metric, mode)
        reducer = _reducer(schema, metric, mode, True)
        wanted = ["trial_id", "epoch", "status", metric, *reducer.carried]
        names = [n for n in wanted if n in schema.names]
        strings = [n for n in names[1:] if pa.types.is_string(schema.field(n).type)]
        for table in iter_tables(list_files(directory), schema, names, strings):
            if metric not in table.column_names:
                table = table.append_column(metric, pa.nulls(len(table), pa.float64()))
            reducer.add(table)
        return reducer.result()

    return retrying(read)


def _reduce(table: pa.Table, metric: str, mode: Mode) -> pa.Table:
    reducer = _reducer(table.schema, metric, mode, bool(table.num_rows))
    if metric not in table.column_names:
        table = table.append_column(metric, pa.nulls(len(table), pa.float64()))
    for batch in table.to_batches(max_chunksize=65_536):
        reducer.add(pa.Table.from_batches([batch], schema=table.schema))
    return reducer.result()


def _reducer(schema: pa.Schema, metric: str, mode: Mode, has_rows: bool) -> ScoreReducer:
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if has_rows and metric not in schema.names:
        metrics = [n for n in schema.names if "/" in n]
        if metrics:
            raise ValueError(f"no metric {metric!r} in the results; they have {metrics}")
    return ScoreReducer(metric, mode, carried_columns(schema.names))


def to_scores(table: pa.Table) -> list[TrialScore]:
    """`TrialScore` objects of a `score_table`."""
    scores = []
    for row in table.to_pylist():
        scores.append(
            TrialScore(
                trial_id=row["trial_id"],
                seed=row.get("seed"),
                status=row["status"],
                score=row["score"],
                best_epoch=row["best_epoch"],
                epochs=row["epochs"],
                config={
                    k.removeprefix("config."): v
                    for k, v in row.items()
                    if k.startswith("config.") and v is not None
                },
                test={k: v for k, v in row.items() if k.startswith("test/") and v is not None},
                attempts=row.get("attempts"),
                error=row.get("error"),
            )
        )
    return scores
