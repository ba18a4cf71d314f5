"""Compaction: finished trials' files become one part file, so reading a study opens few files.

Order of the steps (each write atomic), so that an interruption anywhere loses and duplicates
nothing for normstudy's reader (see `normstudy.results._files`): (1) write the new part;
(2) rewrite, under new numbers, the older parts holding copies that are no longer the trial's
latest (then delete them); (3) delete the trials' own files. Running it again finishes the job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from normstudy.results._files import PART, Listing, list_files, part_trials, read_trial_file
from normstudy.results._schema import common_type, conform, order_columns
from normstudy.results._schema_file import TRIALS_KEY, load_schema, with_metadata
from normstudy.storage import Location, as_location

ROW_GROUP = 65_536
PART_ROWS = 1_000_000
"""Rows of a part, about: it is built in memory (100 to 200 MB for a million rows)."""


def compact(
    results_dir: str | Path | Location,
    trials: Iterable[str] | None = None,
    *,
    schema: pa.Schema | None = None,
) -> list[Location]:
    """Moves finished trials (status other than running) from their own files into new parts
    of at most about `PART_ROWS` rows each.

    Args:
        results_dir: The results folder.
        trials: Only these trials (default: every trial file).
        schema: The dataset's schema (default: the stored one; a dataset without one is
            left as it is: a study run migrates it first).

    Returns:
        The new parts ([] when there was nothing to move).
    """
    directory = as_location(results_dir)
    schema = schema or load_schema(directory)[0]
    if schema is None:
        return []
    listing = list_files(directory)
    wanted = sorted(listing.trials if trials is None else set(trials) & set(listing.trials))
    pending = iter(wanted)
    number = _next_number(listing)
    parts: list[Location] = []
    moved: list[str] = []
    while True:
        into: list[str] = []
        data = part_bytes(_finished(pending, listing, schema, into), into, schema)
        if not into:
            break
        parts.append(directory / f"part-{number:06d}.parquet")
        parts[-1].write_bytes(data)
        number, moved = number + 1, moved + into
    if parts:
        _rewrite_parts(directory, listing, schema, number)
    for trial_id in moved:
        listing.trials[trial_id].delete()
    return parts


def _finished(
    pending: Iterator[str], listing: Listing, schema: pa.Schema, into: list[str]
) -> Iterator[pa.Table]:
    """Finished trials' tables, one at a time (memory stays bounded), until `PART_ROWS`."""
    rows = 0
    for trial_id in pending:
        table = read_trial_file(listing.trials[trial_id], schema)
        if table is not None and table.num_rows and _is_finished(table):
            into.append(trial_id)
            yield table
            rows += table.num_rows
            if rows >= PART_ROWS:
                return


def _is_finished(table: pa.Table) -> bool:
    return "running" not in pc.unique(table["status"]).to_pylist()


def _next_number(listing: Listing) -> int:
    numbers = [int(m[1]) for p in listing.parts if (m := PART.match(p.name))]
    return max(numbers, default=0) + 1


def _rewrite_parts(directory: Location, listing: Listing, schema: pa.Schema, number: int) -> None:
    """Rewrites, under new numbers, each part that holds copies no longer a trial's latest
    (its latest rows are in its own file or a later part) or that is not typed by ``schema``,
    so that every file has the study's schema and a plain glob sees each row once."""
    newer = set(listing.trials)
    plain = schema.remove_metadata()
    for part in reversed(listing.parts):
        with part.fs.open_input_file(part.fs_path) as file:
            parquet = pq.ParquetFile(file)
            held = part_trials(parquet)
            stale, newer = held & newer, newer | held
            typed = parquet.schema_arrow.remove_metadata().equals(plain)
            if typed and not stale:
                continue
            keep = sorted(held - stale)
            if keep:
                skip = pa.array(sorted(stale), pa.string())
                batches = (
                    pa.Table.from_batches([b]).filter(pc.invert(pc.is_in(b["trial_id"], skip)))
                    for b in parquet.iter_batches(batch_size=ROW_GROUP)
                )
                write_part(directory / f"part-{number:06d}.parquet", batches, keep, schema)
                number += 1
        part.delete()


def conform_files(results_dir: Location, schema: pa.Schema) -> None:
    """Rewrites every file not typed by ``schema`` (a column added or widened) to it."""
    listing = list_files(results_dir)
    plain = schema.remove_metadata()
    for file in listing.trials.values():
        try:
            table = pq.read_table(pa.BufferReader(file.read_bytes()))
        except (FileNotFoundError, pa.ArrowInvalid):
            continue  # gone, or damaged (the reader names it)
        if not table.schema.remove_metadata().equals(plain):
            typed = conform(table, schema).replace_schema_metadata(with_metadata(schema).metadata)
            file.write_bytes(parquet_bytes(typed))
    _rewrite_parts(results_dir, listing, schema, _next_number(listing))


def merge_schemas(schemas: Iterable[pa.Schema]) -> pa.Schema:
    """The union of the columns, each of their common type (int with float -> float64), in
    the results' column order; columns only ever null are left out."""
    types: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        for f in schema:
            types.setdefault(f.name, []).append(f.type)
    merged = {n: common_type(t) for n, t in types.items()}
    names = order_columns(n for n, t in merged.items() if not pa.types.is_null(t))
    return pa.schema([pa.field(n, merged[n]) for n in names])


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return bytes(buffer.getvalue().to_pybytes())


def write_part(
    part: Location, tables: Iterable[pa.Table], trials: list[str], schema: pa.Schema
) -> None:
    """Writes ``tables`` as one part holding ``trials``, atomically (see `part_bytes`)."""
    part.write_bytes(part_bytes(tables, trials, schema))


def part_bytes(tables: Iterable[pa.Table], trials: list[str], schema: pa.Schema) -> bytes:
    """``tables`` (conformed to ``schema``) as one Parquet file in row groups of `ROW_GROUP`
    rows; ``trials`` (read once the tables are consumed) goes into its metadata."""
    typed = with_metadata(schema)
    buffer = pa.BufferOutputStream()
    with pq.ParquetWriter(buffer, typed) as writer:
        for table in _regrouped(conform(t, schema) for t in tables):
            writer.write_table(table.replace_schema_metadata(typed.metadata), ROW_GROUP)
        writer.add_key_value_metadata({TRIALS_KEY: json.dumps(sorted(trials))})
    return bytes(buffer.getvalue().to_pybytes())


def _regrouped(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """Small tables gathered into tables of about `ROW_GROUP` rows (few, large row groups)."""
    pending: list[pa.Table] = []
    rows = 0
    for table in tables:
        pending.append(table)
        rows += table.num_rows
        if rows >= ROW_GROUP:
            yield pa.concat_tables(pending)
            pending, rows = [], 0
    if pending:
        yield pa.concat_tables(pending)
