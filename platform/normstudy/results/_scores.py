"""Each trial's best epoch for a metric, computed with Arrow over batches of rows.

Rows arrive in tables of bounded size; each is reduced to a few rows per trial (its epoch
count, latest epoch and status, best value with the earliest epoch reaching it, and its latest
rows for the per-trial columns), and those partial results are reduced again at the end.
Only one row per trial ever reaches Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

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
        self._stats: list[pa.Table] = []
        self._best: list[pa.Table] = []
        self._rows: list[pa.Table] = []

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        table = table.sort_by([("trial_id", "ascending"), ("epoch", "ascending")])
        stats = _ordered(table, [("epoch", "max"), ("epoch", "count"), ("status", "last")])
        stats = stats.rename_columns(_STATS)
        self._stats.append(stats)
        self._best.append(_best(table, self.metric, "epoch", self.mode))
        # The trial's latest row in this table (per-trial values) and rows with test metrics
        # (reported for each new best model): the latest value of each is among them.
        latest = pc.take(stats["last_epoch"], pc.index_in(table["trial_id"], stats["trial_id"]))
        keep = pc.equal(table["epoch"], latest)
        for name in self._tests:
            keep = pc.or_(keep, pc.is_valid(table[name]))
        self._rows.append(table.filter(keep).select(["trial_id", "epoch", *self.carried]))

    def result(self) -> pa.Table:
        """trial_id, seed, status, score, best_epoch, epochs, attempts, error, config.*, test/*:
        ranked best first (ties by trial_id), trials without a score last."""
        if not self._stats:
            return _empty(self.carried)
        stats = pa.concat_tables(self._stats).sort_by(
            [("trial_id", "ascending"), ("last_epoch", "ascending")]
        )
        stats = _ordered(stats, [("last_epoch", "max"), ("epochs", "sum"), ("status", "last")])
        best = _best(pa.concat_tables(self._best), "score", "best_epoch", self.mode)
        rows = pa.concat_tables(self._rows).sort_by(
            [("trial_id", "ascending"), ("epoch", "ascending")]
        )
        values = _ordered(rows, [(c, "last") for c in self.carried])
        joined = stats.rename_columns(_STATS).join(best, "trial_id").join(values, "trial_id")
        order = "descending" if self.mode == "max" else "ascending"
        unscored = joined.append_column("unscored", pc.is_null(joined["score"]))
        ranked = unscored.sort_by(
            [("unscored", "ascending"), ("score", order), ("trial_id", "ascending")]
        )
        head = ["trial_id", "seed", "status", "score", "best_epoch", "epochs", "attempts", "error"]
        return ranked.select([c for c in head if c in ranked.column_names] + _rest(self.carried))


def _rest(carried: list[str]) -> list[str]:
    return [c for c in carried if c not in ("seed", "attempts", "error")]


def _ordered(table: pa.Table, aggregations: list[tuple[str, str]]) -> pa.Table:
    """Per-trial aggregates in row order (``last`` is the last non-null value), trial_id first."""
    grouped = table.group_by("trial_id", use_threads=False).aggregate(aggregations)
    names = [c for c in grouped.column_names if c != "trial_id"]
    plain = [n for n, _ in aggregations]
    return grouped.select(["trial_id", *names]).rename_columns(["trial_id", *plain])


def _best(table: pa.Table, value: str, epoch: str, mode: Mode) -> pa.Table:
    """trial_id, score, best_epoch: the best non-NaN value and the earliest epoch reaching it."""
    column = table[value].cast(pa.float64())
    valid = table.filter(pc.and_(pc.is_valid(column), pc.invert(pc.is_nan(column))))
    order = "descending" if mode == "max" else "ascending"
    valid = valid.sort_by([("trial_id", "ascending"), (value, order), (epoch, "ascending")])
    best = _ordered(valid, [(value, "first"), (epoch, "first")])
    return best.rename_columns(["trial_id", "score", "best_epoch"])


def _empty(carried: list[str]) -> pa.Table:
    fields = [
        pa.field("trial_id", pa.string()),
        pa.field("status", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("best_epoch", pa.int64()),
        pa.field("epochs", pa.int64()),
    ]
    return pa.schema(fields).empty_table()
