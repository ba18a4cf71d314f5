"""Scaling studies: the ``scale:`` axes, their points, and the study each point runs.

A scale point is one value per axis (the cartesian product of the axes, in the order listed:
the first point is the smallest). Each point runs the parent study with those values set in its
base config: its own folder, Optuna study, MLflow experiment and lease, named ``<name>-s<i>``.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from normstudy.spec._model import StudySpec

POINT_INFIX = "-s"
TRANSFER_SUFFIX = "-transfer"
MAX_POINTS = 64
_NOT_SCALABLE = ("variant", "configuration", "seed")


def scale_points(spec: StudySpec) -> list[dict[str, Any]]:
    """The scale points (one value per axis), smallest first; ``[]`` for a plain study."""
    if not spec.scale:
        return []
    axes = spec.scale
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def point_name(study: str, index: int) -> str:
    return f"{study}{POINT_INFIX}{index}"


def transfer_name(study: str) -> str:
    return study + TRANSFER_SUFFIX


def describe_point(point: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in point.items())


def point_data(spec: StudySpec, index: int) -> dict[str, Any]:
    """The raw description of scale point ``index``: the parent with the point's values set."""
    from normstudy.spec._load import apply_override

    point = scale_points(spec)[index]
    data = spec.model_dump(mode="json", exclude={"scale"})
    for key, value in point.items():
        apply_override(data, key, value)
    data.update(
        name=point_name(spec.name, index),
        description=f"{spec.name} at {describe_point(point)}",
        scale_of=spec.name,
        scale_point=point,
    )
    return data


def point_spec(spec: StudySpec, index: int) -> StudySpec:
    """The study scale point ``index`` of ``spec`` runs (validated)."""
    from normstudy.spec._load import validate_data

    return validate_data(point_data(spec, index), f"scale point {index} of {spec.name}")


def check_scale(spec: StudySpec) -> None:
    """Every axis names a config field that is not searched, its values are listed smallest
    first, and every scale point is a valid study."""
    if spec.scale_of:
        if spec.scale:
            raise ValueError(f"scale: a part of scaling study {spec.scale_of!r} has no axes")
        return
    if len(spec.name) + len(TRANSFER_SUFFIX) > 100:
        raise ValueError(f"name: too long to add {TRANSFER_SUFFIX!r} for the scale points")
    for key, values in spec.scale.items():
        _check_axis(spec, key, values)
    points = scale_points(spec)
    if len(points) > MAX_POINTS:
        raise ValueError(f"scale: {len(points)} points (at most {MAX_POINTS}): fewer values")
    from normstudy.spec._load import SpecError

    for index, point in enumerate(points):
        try:
            point_spec(spec, index)
        except SpecError as err:
            raise ValueError(
                f"scale point {index} ({describe_point(point)}): {'; '.join(err.problems)}"
            ) from None


def _check_axis(spec: StudySpec, key: str, values: list[Any]) -> None:
    from normstudy.spec._space import _check_key

    where = f"scale[{key!r}]"
    if key in _NOT_SCALABLE:
        raise ValueError(f"{where}: a scale axis is a config field (e.g. 'train.batch_size')")
    _check_key(spec, key, where)
    if key.startswith("plugins.") and key.split(".")[1] not in spec.plugins:
        raise ValueError(f"{where}: scale options of plugins under 'plugins:', not a variant's")
    if key in spec.search.space:
        raise ValueError(
            f"{where}: also in search.space; a scale axis is fixed at each point, the search "
            "runs at every point"
        )
    if len({(type(v), v) for v in values}) != len(values):
        raise ValueError(f"{where}: a value is listed twice")
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) == len(values) and numbers != sorted(numbers):
        raise ValueError(
            f"{where}: list the values from smallest to largest (the first point's optimum is "
            "the one transferred to the others)"
        )
