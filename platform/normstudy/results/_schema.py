"""The results row schema: base columns, per-epoch rows, and typing values into Arrow columns.

A study's full schema (config and metric columns typed from its spec) is built in
`normstudy.results._spec_schema`; this module types rows against a schema, and keeps the
value-based promotion that reads datasets written before schemas were stored (version 1).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa

STATUSES = ("running", "completed", "error", "stopped")
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_LEADING = [
    pa.field("study", pa.string()),
    pa.field("trial_id", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("epoch", pa.int64()),
    pa.field("status", pa.string()),
    pa.field("node", pa.string()),
    pa.field("attempts", pa.int64()),
    pa.field("error", pa.string()),
    pa.field("started_at", _TIMESTAMP),  # the trial's first start (UTC)
    pa.field("ended_at", _TIMESTAMP),  # when it ended (null while it runs)
    pa.field("optuna_trial", pa.int64()),  # the Optuna trial number (null: not known)
    pa.field("mlflow_run_id", pa.string()),  # the MLflow child run (null: not created yet)
]
_META = [
    pa.field("meta.version", pa.string()),
    pa.field("meta.git_rev", pa.string()),
    pa.field("meta.updated_at", _TIMESTAMP),
]
BASE_SCHEMA = pa.schema(_LEADING + _META)
"""The columns every results table has, whatever the config and the metrics."""

_FIXED_TYPES = {f.name: f.type for f in BASE_SCHEMA}


def flatten_config(config: Mapping[str, Any], prefix: str = "config") -> dict[str, Any]:
    """Flattens a nested config into ``config.<dotted key>`` scalar columns.

    Args:
        config: The trial's resolved config (nested dicts).
        prefix: Prepended to every key.

    Returns:
        One entry per leaf; lists (whatever they hold) become JSON strings, None stays None.

    Example:
        >>> flatten_config({"train": {"lr": 0.1, "milestones": [30, 60]}})
        {'config.train.lr': 0.1, 'config.train.milestones': '[30, 60]'}
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, name))
        else:
            flat[name] = scalar(value)
    return flat


def scalar(value: Any) -> Any:
    """A config or metric value as a Parquet-friendly scalar (containers -> JSON)."""
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        value = value.tolist()  # numpy scalars and arrays become plain Python values
    if value is None or isinstance(value, bool | int | float | str | datetime):
        return value
    if isinstance(value, list | tuple | Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def make_row(
    *,
    study: str,
    trial_id: str,
    seed: int | None,
    epoch: int,
    config: Mapping[str, Any],
    metrics: Mapping[str, float | None],
    git_rev: str | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Builds one (trial, epoch) row in the results schema; status is set by the sink."""
    if version is None:
        from normstudy import __version__ as version
    row: dict[str, Any] = {"study": study, "trial_id": trial_id, "seed": seed, "epoch": epoch}
    row.update(flatten_config(config))
    row.update(metrics)
    row.update({"meta.version": version, "meta.git_rev": git_rev})
    return row


def order_columns(names: Iterable[str]) -> list[str]:
    """Leading columns, then config.*, then metrics, then meta.* (each group sorted)."""
    names = set(names)
    leading = [f.name for f in _LEADING if f.name in names]
    meta = [f.name for f in _META if f.name in names]
    meta += sorted(n for n in names if n.startswith("meta.") and n not in meta)
    config = sorted(n for n in names if n.startswith("config."))
    metrics = sorted(names - set(leading) - set(meta) - set(config))
    return leading + config + metrics + meta


def infer_type(name: str, values: Sequence[Any]) -> pa.DataType:
    """A column's type from its name and values (null when every value is None)."""
    if name in _FIXED_TYPES:
        return _FIXED_TYPES[name]
    if not name.startswith(("config.", "meta.")):
        return pa.float64()  # metrics are always float64, even when a value is an int
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.null()  # promotes to whatever type another trial has for this column
    if kinds == {bool}:
        return pa.bool_()
    if kinds <= {int}:
        return pa.int64()
    if kinds <= {int, float}:
        return pa.float64()
    return pa.string()


def convert(name: str, value: Any, dtype: pa.DataType) -> Any:
    """A scalar as a value of ``dtype`` (containers -> JSON for strings); TypeError if it is not."""
    if value is None:
        return None
    if pa.types.is_string(dtype) and not isinstance(value, str):
        return json.dumps(value, default=str)
    if pa.types.is_floating(dtype):
        if not isinstance(value, int | float):
            raise TypeError(f"column {name!r}: {value!r} is not a number")
        return float(value)
    if pa.types.is_timestamp(dtype) and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


def rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Builds a table with an explicit type per column (missing values are null)."""
    rows = [{k: scalar(v) for k, v in r.items()} for r in rows]
    names = order_columns({*BASE_SCHEMA.names, *(k for r in rows for k in r)})
    fields, arrays = [], []
    for name in names:
        values = [r.get(name) for r in rows]
        dtype = infer_type(name, values)
        fields.append(pa.field(name, dtype))
        arrays.append(pa.array([convert(name, v, dtype) for v in values], type=dtype))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def concat_promoted(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenates tables over the union of their columns, promoting types."""
    types: dict[str, list[pa.DataType]] = {}
    for table in tables:
        for f in table.schema:
            types.setdefault(f.name, []).append(f.type)
    schema = pa.schema([pa.field(n, common_type(types[n])) for n in order_columns(types)])
    return pa.concat_tables([conform(t, schema) for t in tables])


def common_type(dtypes: Iterable[pa.DataType]) -> pa.DataType:
    """The type that holds values of all ``dtypes``: int with float -> float64, other mixes ->
    string, null with anything -> that thing."""
    distinct = {t for t in dtypes if not pa.types.is_null(t)}
    if not distinct:
        return pa.null()
    if len(distinct) == 1:
        return distinct.pop()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in distinct):
        return pa.float64()
    return pa.string()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly the columns of ``schema``: missing ones null, others cast."""
    if table.schema.equals(schema):
        return table
    index = {name: i for i, name in enumerate(table.column_names)}
    columns = []
    for f in schema:
        if f.name not in index:
            columns.append(pa.nulls(table.num_rows, f.type))
        else:
            column = table.column(index[f.name])
            columns.append(column if column.type == f.type else column.cast(f.type))
    return pa.Table.from_arrays(columns, schema=schema)
