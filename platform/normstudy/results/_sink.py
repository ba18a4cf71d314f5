"""Atomic, idempotent Parquet files of a trial's per-epoch rows (one file per trial), typed by
the study's schema, and compacted into part files once trials finish."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from normstudy.results._compact import compact, conform_files, merge_schemas, parquet_bytes
from normstudy.results._files import PART, list_files, part_trials
from normstudy.results._schema import BASE_SCHEMA, STATUSES, convert, infer_type, scalar
from normstudy.results._schema_file import load_schema, save_schema, with_metadata
from normstudy.storage import Location, StorageError, as_location

if TYPE_CHECKING:
    from normstudy.spec import StudySpec

_READ_TRIES = 5
COMPACT_EVERY = 100
"""Finished trials that a sink gathers before it compacts them into a part."""

# A trial id becomes a file name; anything that could escape the directory or hide the
# file (a leading dot marks temp files) is refused, and so are the names of part files.
_TRIAL_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=,+-]*$")
_PER_TRIAL = {"status", "meta.updated_at", "started_at", "ended_at"}
"""Columns the sink sets on every row of a trial (with the caller's ``fields``)."""


def _same_row(a: Mapping[str, Any], b: Mapping[str, Any], ignore: set[str]) -> bool:
    """Equal apart from the per-trial columns; NaN equals NaN, 1 equals 1.0."""
    for key in (set(a) | set(b)) - ignore:
        x, y = scalar(a.get(key)), scalar(b.get(key))
        both_nan = isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
        if not both_nan and x != y:
            return False
    return True


class ResultsSink:
    """Writes each trial's rows to ``<results_dir>/<trial_id>.parquet``, atomically.

    Every file holds every column of the study's schema, typed alike (see `study_schema`);
    a column the schema lacks is added to it (and to the files written before) on first use.
    A (trial, epoch) appears once: a retried or resumed trial that re-reports an epoch
    replaces that row, so repeating an update never duplicates rows. Every `compact_every`
    finished trials go into one part file (see `compact`).

    Example:
        >>> sink = ResultsSink.for_study("studies/demo/results", spec)  # doctest: +SKIP
        >>> row = make_row(study="demo", trial_id="t1", seed=1, epoch=1,  # doctest: +SKIP
        ...                config={"train": {"lr": 0.1}}, metrics={"val/acc": 0.5})
        >>> sink.update("t1", [row], "running")  # doctest: +SKIP
    """

    def __init__(
        self,
        results_dir: str | Path | Location,
        schema: pa.Schema | None = None,
        *,
        compact_every: int = COMPACT_EVERY,
    ) -> None:
        self.results_dir = as_location(results_dir)
        self.compact_every = compact_every
        self._given = schema
        self._schema: pa.Schema | None = None
        self._finished: set[str] = set()
        self._parts: dict[str, Location] | None = None

    @classmethod
    def for_study(
        cls, results_dir: str | Path | Location, spec: StudySpec, **options: Any
    ) -> ResultsSink:
        """A sink typed by ``spec``'s schema, stored (``_schema.json``) before it returns."""
        from normstudy.results._spec_schema import study_schema

        sink = cls(results_dir, study_schema(spec), **options)
        sink.prepare()
        return sink

    @property
    def schema(self) -> pa.Schema:
        """The study's schema, as stored (see `prepare`)."""
        if self._schema is None:
            self.prepare()
        assert self._schema is not None
        return self._schema

    def prepare(self) -> None:
        """Merges the given schema with the stored one and stores the result; migrates a
        version-1 dataset and finishes a conform that was interrupted."""
        stored, unfinished = load_schema(self.results_dir)
        schema = merge_schemas([self._given or BASE_SCHEMA, stored or BASE_SCHEMA])
        if stored is None:
            listing = list_files(self.results_dir)
            if listing.trials or listing.parts:  # version 1: each file typed by its values
                from normstudy.results._dataset import read_results

                legacy = read_results(self.results_dir).schema
                schema, unfinished = merge_schemas([schema, legacy]), True
        self._schema = stored
        if unfinished or stored is None or not schema.equals(stored):
            self._evolve(schema)

    def _evolve(self, schema: pa.Schema) -> None:
        # The schema first, marked: a reader types older files by it, and a conform cut
        # short is finished by the next prepare().
        save_schema(self.results_dir, schema, conforming=True)
        self._schema = schema
        conform_files(self.results_dir, schema)
        save_schema(self.results_dir, schema)
        self._parts = None

    def path(self, trial_id: str) -> Location:
        """The trial's Parquet file (it may not exist yet)."""
        if not _TRIAL_ID.match(trial_id) or PART.match(f"{trial_id}.parquet"):
            raise ValueError(f"trial_id {trial_id!r} is not usable as a file name")
        return self.results_dir / f"{trial_id}.parquet"

    def load(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's stored rows (from its file, else from a part), by epoch; [] if none."""
        path = self.path(trial_id)
        for attempt in range(_READ_TRIES):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return self._load_compacted(trial_id)
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

    def _load_compacted(self, trial_id: str) -> list[dict[str, Any]]:
        if self._parts is None:
            self._parts = {}
            for part in list_files(self.results_dir).parts:  # ascending: the last one wins
                with part.fs.open_input_file(part.fs_path) as file:
                    self._parts.update(dict.fromkeys(part_trials(pq.ParquetFile(file)), part))
        holder = self._parts.get(trial_id)
        if holder is None:
            return []
        table = pq.read_table(
            holder.fs_path, filesystem=holder.fs, filters=[("trial_id", "=", trial_id)]
        )
        return table.sort_by("epoch").to_pylist()

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
            fields: Per-trial values (``attempts``, ``error``, ``optuna_trial``,
                ``mlflow_run_id``) applied to every row like status.

        Returns:
            The path of the rewritten file.
        """
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        path = self.path(trial_id)
        old_rows = self.load(trial_id)
        merged = {row["epoch"]: row for row in old_rows}
        now = datetime.now(UTC)
        ignore = _PER_TRIAL | set(fields or {})
        for row in rows:
            new = _checked(row, trial_id)
            old = merged.get(new["epoch"])
            if new.get("meta.updated_at") is None:
                # An unchanged row keeps its timestamp, so repeating an update is a no-op.
                keep = old is not None and _same_row(old, new, ignore)
                new["meta.updated_at"] = old["meta.updated_at"] if old and keep else now
            merged[new["epoch"]] = new
        times = _times(old_rows, status, now)
        for row in merged.values():
            row.update(status=status, **times)
            row.update(fields or {})
        table = self._table([merged[epoch] for epoch in sorted(merged)])
        path.write_bytes(parquet_bytes(table))
        self._count_finished(trial_id, status)
        return path

    def _count_finished(self, trial_id: str, status: str) -> None:
        if status == "running":
            self._finished.discard(trial_id)
            return
        self._finished.add(trial_id)
        if self.compact_every > 0 and len(self._finished) >= self.compact_every:
            self.compact(sorted(self._finished))

    def compact(self, trials: Iterable[str] | None = None) -> list[Location]:
        """Moves finished trials (default: all) into new part files; see `compact`."""
        trials = None if trials is None else list(trials)
        parts = compact(self.results_dir, trials, schema=self.schema)
        self._finished.clear() if trials is None else self._finished.difference_update(trials)
        self._parts = None
        return parts

    def _table(self, rows: list[dict[str, Any]]) -> pa.Table:
        """``rows`` typed by the schema; new columns (or int columns given floats) extend it."""
        rows = [{k: scalar(v) for k, v in r.items()} for r in rows]
        schema = self.schema
        found: dict[str, pa.DataType] = {}
        for name in dict.fromkeys(k for r in rows for k in r):
            values = [r.get(name) for r in rows]
            if name not in schema.names:
                found[name] = infer_type(name, values)
            elif pa.types.is_integer(schema.field(name).type) and any(
                isinstance(v, float) for v in values
            ):
                found[name] = pa.float64()
        wider = merge_schemas([schema, pa.schema(found)]) if found else schema
        table = _typed(rows, wider)  # raises before a bad value changes the schema
        if not wider.equals(schema):
            self._evolve(wider)
        return table


def _typed(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    arrays = []
    for f in schema:
        values = [convert(f.name, r.get(f.name), f.type) for r in rows]
        try:
            arrays.append(pa.array(values, type=f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise TypeError(f"column {f.name!r}: {e}") from e
    return pa.Table.from_arrays(arrays, schema=with_metadata(schema))


def _times(old_rows: list[dict[str, Any]], status: str, now: datetime) -> dict[str, Any]:
    """started_at: when the trial's first row was written; ended_at: when it reached its
    current final status (kept when repeated), None while it runs."""
    started = min((r["started_at"] for r in old_rows if r.get("started_at")), default=now)
    if status == "running":
        return {"started_at": started, "ended_at": None}
    previous = old_rows[-1] if old_rows else {}
    same = previous.get("status") == status and previous.get("ended_at")
    return {"started_at": started, "ended_at": previous["ended_at"] if same else now}


def _checked(row: Mapping[str, Any], trial_id: str) -> dict[str, Any]:
    new = dict(row)
    if new.setdefault("trial_id", trial_id) != trial_id:
        raise ValueError(f"row of trial {new['trial_id']!r} given to trial {trial_id!r}")
    epoch = new.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"trial {trial_id!r}: epoch must be an int >= 0, got {epoch!r}")
    return new
