"""The studies of a scaling study: one search per scale point, then the transfer phase.

The transfer phase is a grid over named configurations (the mechanism `normstudy confirm` uses):
``own-s<i>`` is point i's optimum at point i, ``transfer-s<i>`` the smallest point's optimum at
point i (i ≥ 1), each run over the study's seeds, every epoch. Both columns of the transfer
table then come from the same seeds and the same protocol, not from a search's best-of-N.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from normstudy.spec._scale import point_spec, scale_points, transfer_name

if TYPE_CHECKING:
    from normstudy.results import TrialScore
    from normstudy.spec import StudySpec

OWN = "own"
TRANSFER = "transfer"


def point_specs(spec: StudySpec) -> list[StudySpec]:
    """The search study of each scale point, smallest first."""
    return [point_spec(spec, i) for i in range(len(scale_points(spec)))]


def searched_keys(spec: StudySpec) -> list[str]:
    """The hyperparameters whose optimum a scaling study follows (the seed is replication)."""
    return [k for k in spec.search.space if k != "seed"]


def optimum(spec: StudySpec, scores: list[TrialScore]) -> dict[str, Any] | None:
    """The searched values of the best configuration of a point (mean over its seeds); None
    while no trial has a score."""
    from normstudy.confirm import ranked_configurations

    ranked = ranked_configurations(spec, scores)
    return ranked[0][0] if ranked else None


def config_name(kind: str, index: int) -> str:
    return f"{kind}-s{index}"


def transfer_spec(spec: StudySpec, optima: list[dict[str, Any]]) -> StudySpec:
    """The transfer phase of scaling study ``spec`` given each point's optimum (smallest
    first): ``own-s<i>`` and ``transfer-s<i>`` at every point over the study's seeds."""
    from normstudy.spec import validate_data

    points = scale_points(spec)
    if len(optima) != len(points):
        raise ValueError(f"{len(optima)} optima for {len(points)} scale points")
    configs = {config_name(OWN, 0): {**optima[0], **points[0]}}
    for i, point in enumerate(points[1:], start=1):
        configs[config_name(OWN, i)] = {**optima[i], **point}
        configs[config_name(TRANSFER, i)] = {**optima[0], **point}
    data = spec.model_dump(mode="json", exclude={"scale"})
    data.update(
        name=transfer_name(spec.name),
        description=f"{spec.name}: each scale point's optimum and the smallest point's, "
        f"over {len(spec.seed_list())} seeds",
        scale_of=spec.name,
        configs=configs,
    )
    search = data["search"]
    search.update(
        sampler="grid",
        space={"configuration": {"type": "grid", "values": list(configs)}},
        scheduler={"name": "fifo"},
    )
    # The grid's size, stated: a study.yaml read back (status, resume) then counts the same.
    search["num_samples"] = len(configs) * len(spec.seed_list())
    return validate_data(data, f"the transfer phase of {spec.name}")
