"""A study's results schema, derived from its typed spec: the same in every file of the study.

A ``config.*`` column is typed by the pydantic field it flattens (``float`` -> float64 whatever
values a trial holds, ``Literal``/``str`` -> string, ``X | None`` -> X, lists -> JSON string);
a searched key whose field is free-form (``model.kwargs.*``) is typed by its distribution
(uniform/loguniform -> float64, int -> int64, categorical/grid -> the choices' common type).
Metrics are float64: every metric some trial of the study may report (`study_metrics`).
"""

from __future__ import annotations

import datetime
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pydantic import BaseModel

from normstudy.results._schema import BASE_SCHEMA, common_type, infer_type, order_columns

if TYPE_CHECKING:
    from normstudy.spec import StudySpec
    from normstudy.spec._distributions import _Dist

_SCALARS: dict[Any, pa.DataType] = {
    bool: pa.bool_(),
    int: pa.int64(),
    float: pa.float64(),
    str: pa.string(),
    datetime.datetime: pa.timestamp("us", tz="UTC"),
}


def study_schema(spec: StudySpec) -> pa.Schema:
    """The Arrow schema of ``spec``'s results: base columns, typed config columns, metrics.

    Example:
        >>> study_schema(load_spec("searchspaces/quickstart.yaml")).field("config.train.lr")
        ... # doctest: +SKIP
        pyarrow.Field<config.train.lr: double>
    """
    from normstudy.spec import study_metrics
    from normstudy.spec._space import resolve_config

    columns: dict[str, list[pa.DataType]] = {}
    base = spec.trial_base()
    variants: list[str | None] = list(spec.variants) or [None]
    for variant in variants:
        config = resolve_config(base, {"variant": variant} if variant else {}, spec.variants)
        for name, dtype in _config_columns(config).items():
            columns.setdefault(name, []).append(dtype)
    for key, dist in spec.search.space.items():
        name = f"config.{key}"
        columns[name] = [_field_type(key.split(".")) or _distribution_type(dist)]
    types_ = {n: common_type(t) for n, t in columns.items()}
    types_.update({m: pa.float64() for m in study_metrics(spec)})
    types_.update({f.name: f.type for f in BASE_SCHEMA})
    names = order_columns(n for n, t in types_.items() if not pa.types.is_null(t))
    return pa.schema([pa.field(n, types_[n]) for n in names])


def _config_columns(config: Mapping[str, Any]) -> dict[str, pa.DataType]:
    """The ``config.*`` columns `flatten_config` makes of ``config``, typed by their fields."""
    from normstudy.spec import TrialConfig

    out: dict[str, pa.DataType] = {}
    _walk(TrialConfig, config, "config", out)
    return out


def _walk(annotation: Any, value: Any, name: str, out: dict[str, pa.DataType]) -> None:
    if not isinstance(value, Mapping):
        out[name] = _leaf_type(annotation) or infer_type(name, [value])
        return
    for key, item in value.items():
        out_name = f"{name}.{key}"
        if name == "config.plugins":
            from normstudy.plugins import get_plugin

            _walk(get_plugin(key).Options, item, out_name, out)
        else:
            _walk(_member(annotation, key), item, out_name, out)


def _member(annotation: Any, key: str) -> Any:
    """The annotation of ``key`` inside a model or a ``dict[str, X]`` (Any when unknown)."""
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(key)
        return field.annotation if field else Any
    if typing.get_origin(annotation) is dict:
        return typing.get_args(annotation)[1]
    return Any


def _field_type(parts: list[str]) -> pa.DataType | None:
    """The type of the field a searched key names; None for a free-form one."""
    from normstudy.plugins import get_plugin
    from normstudy.spec import TrialConfig

    if parts[0] == "plugins" and len(parts) == 3:
        return _leaf_type(_member(get_plugin(parts[1]).Options, parts[2]))
    annotation: Any = TrialConfig
    for part in parts:
        annotation = _member(annotation, part)
    return _leaf_type(annotation)


def _unwrap(annotation: Any) -> Any:
    """``Annotated[X, ...]`` -> X; ``X | None`` -> X (a union of several stays a union)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return annotation


def _leaf_type(annotation: Any) -> pa.DataType | None:
    """A scalar field's Arrow type; None when the field is free-form (Any)."""
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if origin is typing.Literal:
        return _values_type(typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        found = [_leaf_type(a) for a in typing.get_args(annotation) if a is not type(None)]
        return None if None in found else common_type(t for t in found if t is not None)
    if origin in (list, tuple, set, frozenset, dict) or annotation in (list, tuple, dict):
        return pa.string()  # flatten_config stores containers as JSON
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.string()
    return None


def _values_type(values: typing.Iterable[Any]) -> pa.DataType:
    found = infer_type("config.", [v for v in values if v is not None])
    return pa.string() if pa.types.is_null(found) else found


def _distribution_type(dist: _Dist) -> pa.DataType:
    from normstudy.spec._distributions import IntRange, LogUniform, Uniform

    if isinstance(dist, Uniform | LogUniform):
        return pa.float64()
    if isinstance(dist, IntRange):
        return pa.int64()
    return _values_type(dist.candidates())
