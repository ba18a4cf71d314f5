"""Atomic, idempotent Parquet files of a trial's per-epoch rows (one file per trial)."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from normstudy.results._schema import STATUSES, rows_to_table, scalar
from normstudy.storage import Location, StorageError, as_location

_READ_TRIES = 5

# A trial id becomes a file name; anything that could escape the directory or hide the
# file (a leading dot marks temp files) is refused.
_TRIAL_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=,+-]*$")


def _same_row(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal apart from status and timestamp; NaN equals NaN, 1 equals 1.0."""
    for key in (set(a) | set(b)) - {"status", "meta.updated_at"}:
        x, y = scalar(a.get(key)), scalar(b.get(key))
        both_nan = isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
        if not both_nan and x != y:
            return False
    return True


class ResultsSink:
    """Writes each trial's rows to ``<results_dir>/<trial_id>.parquet``, atomically.

    A (trial, epoch) appears once per file: a retried or resumed trial that re-reports an
    epoch replaces that row, so repeating an update never duplicates rows.

    Example:
        >>> sink = ResultsSink("studies/demo/results")  # doctest: +SKIP
        >>> row = make_row(study="demo", trial_id="t1", seed=1, epoch=1,  # doctest: +SKIP
        ...                config={"train": {"lr": 0.1}}, metrics={"val/acc": 0.5})
        >>> sink.update("t1", [row], "running")  # doctest: +SKIP
    """

    def __init__(self, results_dir: str | Path | Location) -> None:
        self.results_dir = as_location(results_dir)

    def path(self, trial_id: str) -> Location:
        """The trial's Parquet file (it may not exist yet)."""
        if not _TRIAL_ID.match(trial_id):
            raise ValueError(f"trial_id {trial_id!r} is not usable as a file name")
        return self.results_dir / f"{trial_id}.parquet"

    def load(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's stored rows, ordered by epoch; [] if it has none."""
        path = self.path(trial_id)
        for attempt in range(_READ_TRIES):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return []
            try:
                return pq.read_table(pa.BufferReader(data)).to_pylist()
            except pa.ArrowInvalid as e:
                # Only this sink writes the file, whole: a read that does not parse met a
                # store that answered inconsistently under load; ask again rather than
                # overwrite the trial's earlier epochs with this one alone.
                if attempt == _READ_TRIES - 1:
                    raise StorageError(f"{path}: not readable as Parquet ({e})") from e
                time.sleep(0.2 * 2**attempt)
        return []

    def update(
        self,
        trial_id: str,
        rows: Sequence[Mapping[str, Any]],
        status: str,
        fields: Mapping[str, Any] | None = None,
    ) -> Location:
        """Merges ``rows`` into the trial's file (newest row per epoch wins) and sets its status.

        Args:
            trial_id: The trial; rows without a ``trial_id`` get this one.
            rows: Rows in the results schema (see `make_row`), each with an int ``epoch`` >= 0
                (0: the trial failed before it finished an epoch).
            status: One of running, completed, error, stopped; applied to every row of the trial.
            fields: Per-trial values (``attempts``, ``error``) applied to every row like status.

        Returns:
            The path of the rewritten file.
        """
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        path = self.path(trial_id)
        merged = {row["epoch"]: row for row in self.load(trial_id)}
        now = datetime.now(UTC)
        for row in rows:
            new = _checked(row, trial_id)
            old = merged.get(new["epoch"])
            if new.get("meta.updated_at") is None:
                # An unchanged row keeps its timestamp, so repeating an update is a no-op.
                keep = old is not None and _same_row(old, new)
                new["meta.updated_at"] = old["meta.updated_at"] if old and keep else now
            merged[new["epoch"]] = new
        for row in merged.values():
            row["status"] = status
            row.update(fields or {})
        table = rows_to_table([merged[epoch] for epoch in sorted(merged)])
        path.write_bytes(_parquet_bytes(table))
        return path


def _checked(row: Mapping[str, Any], trial_id: str) -> dict[str, Any]:
    new = dict(row)
    if new.setdefault("trial_id", trial_id) != trial_id:
        raise ValueError(f"row of trial {new['trial_id']!r} given to trial {trial_id!r}")
    epoch = new.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"trial {trial_id!r}: epoch must be an int >= 0, got {epoch!r}")
    return new


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return bytes(buffer.getvalue().to_pybytes())
