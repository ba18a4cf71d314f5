"""The files of a results dataset and reading them as one stream of typed tables.

A results folder holds ``<trial_id>.parquet`` (one trial, rewritten on each update) and
``part-NNNNNN.parquet`` (finished trials, compacted; written once, never changed). A trial's
rows come from its own file if it has one, else from the highest-numbered part holding it,
so a compaction interrupted at any point neither loses nor duplicates a row.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from normstudy.results._schema import conform
from normstudy.results._schema_file import TRIALS_KEY
from normstudy.storage import Location, StorageError

PART = re.compile(r"^part-(\d{6})\.parquet$")
_BATCH_ROWS = 65_536
_WINDOW = 256
_TRIES = 5
T = TypeVar("T")


class DamagedResultWarning(UserWarning):
    """A result file that cannot be read (truncated, corrupt) was left out; names the file."""


class _Vanished(Exception):
    """A listed file disappeared (a compaction replaced it): list again and start over."""


@dataclass(frozen=True)
class Listing:
    """The dataset's files: trial files by trial id, parts in ascending order."""

    trials: dict[str, Location]
    parts: list[Location]


def list_files(results_dir: Location) -> Listing:
    trials, parts = {}, []
    for file in results_dir.files(".parquet"):
        if PART.match(file.name):
            parts.append(file)
        else:
            trials[file.name.removesuffix(".parquet")] = file
    return Listing(trials, parts)


def retrying(read: Callable[[], T]) -> T:
    """``read()`` again from a fresh listing when a file vanished while it ran."""
    for attempt in range(_TRIES):
        try:
            return read()
        except _Vanished:
            time.sleep(0.05 * 2**attempt)
    try:
        return read()
    except _Vanished as e:
        raise StorageError(f"{e}: files keep vanishing while read; try again") from None


def iter_tables(
    listing: Listing,
    schema: pa.Schema,
    columns: list[str] | None = None,
    dictionary: Iterable[str] = (),
) -> Iterator[pa.Table]:
    """Every trial's rows, typed by ``schema`` (only ``columns``), in tables of bounded size.

    String columns named in ``dictionary`` come dictionary-encoded from parts (as Parquet
    stores them: a config value repeated on every row of a trial costs an index, not a
    string); trial files are small, and their many tables are gathered into one chunk each
    batch. Damaged files are left out with a `DamagedResultWarning`; a file that vanished
    raises `_Vanished` (see `retrying`).
    """
    target = pa.schema([schema.field(c) for c in columns or schema.names])
    pending: list[pa.Table] = []
    rows = 0
    for table in _trial_tables(listing, target):
        pending.append(table)
        rows += table.num_rows
        if rows >= _BATCH_ROWS:
            yield pa.concat_tables(pending).combine_chunks()
            pending, rows = [], 0
    if pending:
        yield pa.concat_tables(pending).combine_chunks()
    encoded = set(dictionary)
    parts_target = pa.schema(
        [
            pa.field(f.name, pa.dictionary(pa.int32(), f.type)) if f.name in encoded else f
            for f in target
        ]
    )
    seen = set(listing.trials)
    for part in reversed(listing.parts):
        yield from _part_tables(part, parts_target, seen)


def _trial_tables(listing: Listing, target: pa.Schema) -> Iterator[pa.Table]:
    files = list(listing.trials.values())
    # An object store answers many GETs at once; a local disk is read as fast by one thread
    # per core.
    remote = bool(files) and not files[0].is_local
    workers = 16 if remote else os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(files), _WINDOW):  # bounds the tables read ahead
            window = files[start : start + _WINDOW]
            read = pool.map(lambda f: _read_whole(f, target), window)
            for file, table in zip(window, read, strict=True):
                if isinstance(table, Exception):
                    _warn_damaged(file, table)
                elif table is not None:
                    yield table


def read_trial_file(file: Location, target: pa.Schema) -> pa.Table | None:
    """One trial file typed by ``target``; None (with a warning if damaged) when unreadable."""
    try:
        table = _read_whole(file, target)
    except _Vanished:
        return None
    if isinstance(table, Exception):
        _warn_damaged(file, table)
        return None
    return table


def _read_whole(file: Location, target: pa.Schema) -> pa.Table | Exception | None:
    # One GET, then parse: the driver replaces trial files while they are read, and an object
    # store's file read in ranged parts could mix its old and new versions.
    try:
        for attempt in range(2):
            try:
                parquet = pq.ParquetFile(
                    pa.BufferReader(file.read_bytes()), read_dictionary=_encoded(target)
                )
                present = _present(parquet, target)
                # Files are small: Arrow's own threads would only contend with the pool's.
                return conform(parquet.read(columns=present, use_threads=False), target)
            except pa.ArrowInvalid as e:  # a store answering inconsistently: ask once more
                if attempt:
                    return e
                time.sleep(0.2)
    except FileNotFoundError:  # replaced by a compaction: the part holds it now
        raise _Vanished(str(file)) from None
    except OSError as e:
        return e
    return None


def _part_tables(part: Location, target: pa.Schema, seen: set[str]) -> Iterator[pa.Table]:
    """A part's rows of the trials not already read, batch by batch; ``seen`` grows by its
    trials. Parts never change once written, so reading them in ranged parts is safe."""
    try:
        with part.fs.open_input_file(part.fs_path) as file:
            parquet = pq.ParquetFile(file, read_dictionary=_encoded(target))
            trials = part_trials(parquet)
            present = _present(parquet, target)
            skip = pa.array(sorted(seen & trials), pa.string())
            seen |= trials
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=present):
                table = conform(pa.Table.from_batches([batch]), target)
                if len(skip):
                    table = table.filter(pc.invert(pc.is_in(table["trial_id"], value_set=skip)))
                yield table
    except FileNotFoundError:
        raise _Vanished(str(part)) from None
    except (pa.ArrowInvalid, OSError) as e:
        if not part.exists():
            raise _Vanished(str(part)) from None
        _warn_damaged(part, e)


def _present(parquet: pq.ParquetFile, target: pa.Schema) -> list[str]:
    """The columns of ``target`` the file has (``schema_arrow`` is rebuilt on each access)."""
    names = set(parquet.schema_arrow.names)
    return [n for n in target.names if n in names]


def _encoded(target: pa.Schema) -> list[str]:
    return [f.name for f in target if pa.types.is_dictionary(f.type)]


def part_trials(parquet: pq.ParquetFile) -> set[str]:
    """The trials a part holds, from its metadata (else from its trial_id column)."""
    metadata = parquet.metadata.metadata or {}
    if TRIALS_KEY in metadata:
        return set(json.loads(metadata[TRIALS_KEY]))
    return set(pc.unique(parquet.read(columns=["trial_id"])["trial_id"]).to_pylist())


def _warn_damaged(file: Location, error: Exception) -> None:
    warnings.warn(
        f"{file}: not a readable Parquet file ({error}); left out (rerun or --resume the "
        "study to rewrite it, or delete it)",
        DamagedResultWarning,
        stacklevel=4,
    )
