"""Reading a study's results: all trial files as one table, and each trial's best epoch."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from normstudy.results._schema import BASE_SCHEMA, concat_promoted
from normstudy.storage import Location, as_location

Mode = Literal["max", "min"]


class DamagedResultWarning(UserWarning):
    """A result file that cannot be read (truncated, corrupt) was left out; names the file."""


def read_results(results_dir: str | Path | Location) -> pa.Table:
    """All trial files of a results directory as one table.

    Trials may have different config or metric columns: a column a trial lacks is null in its
    rows, and a column typed differently across trials is promoted (int with float -> float64,
    anything else mixed -> string). Temp files of unfinished writes are ignored.

    Args:
        results_dir: The directory `ResultsSink` writes to; it may be missing or empty.

    Returns:
        Rows ordered by trial file name then epoch; an empty table with the base columns
        when there are no trials.
    """
    directory = as_location(results_dir)
    tables = [t for f in directory.files(".parquet") if (t := _read_file(f)) is not None]
    return concat_promoted([BASE_SCHEMA.empty_table(), *tables])


def _read_file(file: Location) -> pa.Table | None:
    # One GET, then parse: reading an object store's file in ranged parts could mix the old
    # and the new version of a file the driver replaces meanwhile.
    try:
        try:
            return pq.read_table(pa.BufferReader(file.read_bytes()))
        except pa.ArrowInvalid:  # a store answering inconsistently under load: ask once more
            time.sleep(0.2)
            return pq.read_table(pa.BufferReader(file.read_bytes()))
    except FileNotFoundError:  # replaced or deleted between listing and reading
        return None
    except (pa.ArrowInvalid, OSError) as e:
        warnings.warn(
            f"{file}: not a readable Parquet file ({e}); left out (rerun or --resume the "
            "study to rewrite it, or delete it)",
            DamagedResultWarning,
            stacklevel=3,
        )
        return None


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
    """Each trial's best value of ``metric``, best trial first.

    Ties are broken by trial_id so the order is deterministic; trials with no value of the
    metric come last.

    Example:
        >>> best = trial_scores(read_results(d), "val/acc", "max")[0]  # doctest: +SKIP
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if table.num_rows and metric not in table.column_names:
        metrics = [n for n in table.column_names if "/" in n]
        if metrics:
            raise ValueError(f"no metric {metric!r} in the results; they have {metrics}")
        # No trial reported an epoch yet (e.g. every one failed first): none has a score.
        table = table.append_column(metric, pa.nulls(table.num_rows, pa.float64()))
    config_cols = [n for n in table.column_names if n.startswith("config.")]
    test_cols = [n for n in table.column_names if n.startswith("test/")]
    wanted = ["trial_id", "seed", "status", "epoch", "attempts", "error", *config_cols, *test_cols]
    data = table.select(list(dict.fromkeys([*wanted, metric] if table.num_rows else wanted)))
    columns = data.to_pydict()
    rows_of: dict[str, list[int]] = {}
    for i, trial_id in enumerate(columns["trial_id"]):
        rows_of.setdefault(trial_id, []).append(i)
    scores = [
        _score(trial_id, rows, columns, metric, mode, config_cols, test_cols)
        for trial_id, rows in rows_of.items()
    ]
    sign = -1.0 if mode == "max" else 1.0
    return sorted(
        scores,
        key=lambda s: (
            (0, sign * s.score, s.trial_id) if s.score is not None else (1, 0.0, s.trial_id)
        ),
    )


def _score(
    trial_id: str,
    rows: list[int],
    columns: dict[str, list[Any]],
    metric: str,
    mode: Mode,
    config_cols: list[str],
    test_cols: list[str],
) -> TrialScore:
    rows = sorted(rows, key=lambda i: columns["epoch"][i] or 0)
    best, best_epoch = None, None
    values = columns.get(metric) or [None] * len(columns["epoch"])
    for i in rows:
        value = values[i]
        if value is None or math.isnan(value):
            continue
        # Strictly better only, so the earliest epoch wins a tie.
        if best is None or (value > best if mode == "max" else value < best):
            best, best_epoch = value, columns["epoch"][i]
    config = {
        n.removeprefix("config."): v
        for n in config_cols
        if (v := _last(columns[n], rows)) is not None
    }
    return TrialScore(
        trial_id=trial_id,
        seed=_last(columns["seed"], rows),
        status=columns["status"][rows[-1]],
        score=best,
        best_epoch=best_epoch,
        epochs=len(rows),
        config=config,
        test={n: v for n in test_cols if (v := _last(columns[n], rows)) is not None},
        attempts=_last(columns["attempts"], rows),
        error=_last(columns["error"], rows),
    )


def _last(values: list[Any], rows: list[int]) -> Any:
    """The trial's last non-null value in a column."""
    return next((values[i] for i in reversed(rows) if values[i] is not None), None)
