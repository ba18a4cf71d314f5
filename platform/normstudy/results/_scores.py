"""Each trial's best epoch for a metric, computed with Arrow over batches of rows.

Rows arrive in tables of bounded size; each is reduced to a few rows per trial (its epoch
count, latest epoch and status, best value with the earliest epoch reaching it, and its latest
rows for the per-trial columns), and those partial results are reduced again at the end.
Each reduction sorts by trial and takes the first or last row of each trial's run. Only one
row per trial ever reaches Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Mode = Literal["max", "min"]
_STATS = ["trial_id", "last_epoch", "epochs", "status"]


def carried_columns(names: Iterable[str]) -> list[str]:
    """Per-trial columns a score carries: seed, attempts, error, config.*, test/*."""
    names = list(names)
    fixed = [n for n in ("seed", "attempts", "error") if n in names]
    return fixed + [n for n in names if n.startswith(("config.", "test/"))]


class ScoreReducer:
    """Feeds on tables of rows (trial_id, epoch, status, the metric, carried columns); gives
    one row per trial, best first (see `result`)."""

    def __init__(self, metric: str, mode: Mode, carried: list[str]) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.metric, self.mode, self.carried = metric, mode, carried
        self._tests = [c for c in carried if c.startswith("test/")]
        self._per_trial = [c for c in carried if c not in self._tests]
        self._stats: list[pa.Table] = []
        self._best: list[pa.Table] = []
        self._latest: list[pa.Table] = []
        self._tested: list[pa.Table] = []

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        # Sort only the narrow columns; the wide per-trial ones are filtered down first.
        narrow = table.select(["trial_id", "epoch", "status", self.metric])
        order = pc.sort_indices(narrow, [("trial_id", "ascending"), ("epoch", "ascending")])
        narrow = narrow.take(order)
        starts, ends = _runs(narrow["trial_id"])
        last = narrow.take(ends - 1)
        counts = pa.array(ends - starts, pa.int64())
        stats = [last["trial_id"], last["epoch"], counts, _decoded(last["status"])]
        self._stats.append(pa.table(stats, names=_STATS))
        self._best.append(_best(narrow, self.metric, "epoch", self.mode))
        # Per-trial values from the trial's latest row in this table; test metrics (reported
        # for each new best model) from the rows that have any.
        latest = np.repeat(last["epoch"].to_numpy(), ends - starts)
        is_latest = np.zeros(len(table), bool)
        is_latest[order.to_numpy()] = narrow["epoch"].to_numpy() == latest
        self._latest.append(_kept(table, self._per_trial, pa.array(is_latest)))
        if self._tests:
            tested = pc.is_valid(table[self._tests[0]])
            for name in self._tests[1:]:
                tested = pc.or_(tested, pc.is_valid(table[name]))
            self._tested.append(_kept(table, self._tests, tested))

    def result(self) -> pa.Table:
        """trial_id, seed, status, score, best_epoch, epochs, attempts, error, config.*, test/*:
        ranked best first (ties by trial_id), trials without a score last."""
        if not self._stats:
            return _empty()
        stats = _sorted(pa.concat_tables(self._stats), ("last_epoch", "ascending"))
        starts, ends = _runs(stats["trial_id"])
        epochs = np.add.reduceat(stats["epochs"].to_numpy(), starts)
        last = stats.take(ends - 1)
        trials = last["trial_id"]
        columns = {"trial_id": trials, "status": last["status"]}
        best = _best(pa.concat_tables(self._best), "score", "best_epoch", self.mode)
        at = pc.index_in(trials, value_set=best["trial_id"])
        columns.update(score=best["score"].take(at), best_epoch=best["best_epoch"].take(at))
        columns["epochs"] = pa.array(epochs, pa.int64())
        for names, kept in ((self._per_trial, self._latest), (self._tests, self._tested)):
            rows = _sorted(pa.concat_tables(kept), ("epoch", "ascending")) if names else None
            for name in names:
                columns[name] = _latest(rows, name, trials)
        order = ["trial_id", "seed", "status", "score", "best_epoch", "epochs", "attempts"]
        names = [n for n in [*order, "error"] if n in columns] + _rest(self.carried)
        table = pa.table([columns[n] for n in names], names=names)
        direction = "descending" if self.mode == "max" else "ascending"
        unscored = pc.is_null(table["score"])
        ranked = table.append_column("_unscored", unscored).sort_by(
            [("_unscored", "ascending"), ("score", direction), ("trial_id", "ascending")]
        )
        return ranked.drop_columns(["_unscored"])


def _kept(table: pa.Table, names: list[str], mask: pa.Array) -> pa.Table:
    """The rows of ``mask`` with trial_id, epoch and ``names``, dictionaries decoded."""
    rows = table.select(["trial_id", "epoch", *names]).filter(mask)
    return pa.table([_decoded(c) for c in rows.columns], names=rows.column_names)


def _decoded(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A dictionary-encoded column (see `iter_tables`) as plain values: batches from trial
    files and from parts then concatenate."""
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def _rest(carried: list[str]) -> list[str]:
    return [c for c in carried if c not in ("seed", "attempts", "error")]


def _sorted(table: pa.Table, *then: tuple[str, str]) -> pa.Table:
    """By trial_id, then ``then``: each trial's rows in one run (see `_runs`)."""
    return table.sort_by([("trial_id", "ascending"), *then])


def _runs(keys: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) rows of each run of equal keys in a sorted column.

    Every aggregate the reduction needs is the first or last row of a run once the rows are
    sorted (the best value needs a sort anyway), so each result lines up with the others
    without a join.
    """
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    n = len(keys)
    if not n:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = pc.not_equal(keys.slice(1), keys.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.concatenate([[True], change]))
    return starts, np.append(starts[1:], n).astype(np.int64)


def _latest(rows: pa.Table, name: str, trials: pa.Array) -> pa.Array:
    """Each trial's last non-null value of ``name`` (rows sorted by trial_id, epoch)."""
    valid = rows.select(["trial_id", name]).filter(pc.is_valid(rows[name]))
    _, ends = _runs(valid["trial_id"])
    last = valid.take(ends - 1)
    return last[name].take(pc.index_in(trials, value_set=last["trial_id"]))


def _best(table: pa.Table, value: str, epoch: str, mode: Mode) -> pa.Table:
    """trial_id, score, best_epoch: the best non-NaN value and the earliest epoch reaching it."""
    column = table[value].cast(pa.float64())
    valid = table.filter(pc.and_(pc.is_valid(column), pc.invert(pc.is_nan(column))))
    order = "descending" if mode == "max" else "ascending"
    valid = _sorted(valid, (value, order), (epoch, "ascending"))
    first = valid.take(_runs(valid["trial_id"])[0])
    names = ["trial_id", "score", "best_epoch"]
    return pa.table([first["trial_id"], first[value].cast(pa.float64()), first[epoch]], names=names)


def _empty() -> pa.Table:
    fields = [
        pa.field("trial_id", pa.string()),
        pa.field("status", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("best_epoch", pa.int64()),
        pa.field("epochs", pa.int64()),
    ]
    return pa.schema(fields).empty_table()
