"""Bounded field types of the study description: every number has a range a trial can use.

Floats are finite everywhere through ``allow_inf_nan=False`` on the section base classes; the
types here add upper bounds to counts and sizes, the seed range, and a check for the free-form
values (``model.kwargs``, plugin options, categorical choices) that no typed field covers.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field

SEED_MAX = 2**32 - 1
"""Seeds reach NumPy's ``seed`` (which takes 0 .. 2**32 − 1) and Optuna's samplers."""
INT_MAX = 2**63 - 1
"""Integers in free-form values end up in int64 Parquet columns and torch tensors."""
EXACT_INT_MAX = 2**53
"""Integer search ranges: Optuna's samplers work in floats, exact only up to 2**53."""

Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Epochs = Annotated[int, Field(ge=1, le=100_000)]
EpochCount = Annotated[int, Field(ge=0, le=100_000)]
BatchSize = Annotated[int, Field(ge=1, le=1_000_000)]
SampleCount = Annotated[int, Field(ge=0, le=100_000_000)]
TrialCount = Annotated[int, Field(ge=1, le=1_000_000)]
StepCount = Annotated[int, Field(ge=1, le=1_000_000_000)]
Workers = Annotated[int, Field(ge=1, le=10_000)]
PathText = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")]
"""A file system path: no NUL byte (which no OS accepts)."""

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_\-]{0,99}")
"""Study and variant names: they name folders, MLflow experiments and Parquet values."""


def json_problem(value: Any, where: str = "") -> str | None:
    """Why ``value`` is not JSON-like (None, bool, str, int64 integers, finite floats, lists
    and string-keyed mappings of them), naming the spot as ``where``; None when it is."""
    at = f"{where}: " if where else ""
    if value is None or isinstance(value, bool | str):
        return None
    if isinstance(value, int):
        return f"{at}integer out of range (|n| ≤ 2**63 − 1)" if abs(value) > INT_MAX else None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{at}{value} is not a finite number"
    if isinstance(value, list | tuple):
        items = (json_problem(item, f"{where}[{i}]") for i, item in enumerate(value))
        return next((p for p in items if p), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{at}key {key!r} must be a string"
            problem = json_problem(item, f"{where}.{key}" if where else key)
            if problem:
                return problem
        return None
    return f"{at}a {type(value).__name__} value: use a number, string, list or mapping"


def _json_like(value: Any) -> Any:
    problem = json_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def check_finite_tree(value: Any, where: str) -> None:
    """Raise naming ``where.<path>`` unless ``value`` is JSON-like: for raw input checked
    before it is typed (plugin options dumped to JSON would turn inf into null)."""
    problem = json_problem(value, where)
    if problem:
        raise ValueError(problem)


JsonLike = Annotated[Any, AfterValidator(_json_like)]
"""A free-form value: JSON-like, finite floats, int64 integers."""
