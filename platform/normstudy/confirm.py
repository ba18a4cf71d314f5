"""`normstudy confirm`: re-run a search's best configurations and a baseline over many seeds.

A search ranks configurations on one seed (or a few): its best is partly luck. The confirm
study takes the top K configurations of a finished (or running) search by their score, plus an
optional baseline, and runs each over the first N MD5 seeds (004's protocol), every epoch, no
early stopping: a grid over (configuration × seed), so configurations are compared seed by seed
(paired). It is a study of its own (``HOME/<study>-confirm/``, its own MLflow experiment whose
study run is tagged with the search it confirms); its report is the paper's table.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from normstudy.results import TrialScore
    from normstudy.spec import StudySpec

BASELINE = "baseline"
SUFFIX = "-confirm"


class ConfirmError(ValueError):
    """The confirm study cannot be built as asked (names the option and the fix)."""


def ranked_configurations(
    spec: StudySpec, scores: list[TrialScore]
) -> list[tuple[dict[str, Any], float, int]]:
    """The search's configurations (its searched values, seed left out), best first, each with
    its mean score over the trials (seeds) that ran it and how many did."""
    keys = [k for k in spec.search.space if k != "seed"]
    groups: dict[str, tuple[dict[str, Any], list[float]]] = {}
    for s in scores:
        if s.score is None or not math.isfinite(s.score):
            continue
        values = {k: s.config.get(k) for k in keys}
        entry = groups.setdefault(json.dumps(values, sort_keys=True, default=str), (values, []))
        entry[1].append(s.score)
    ranked = [(values, sum(v) / len(v), len(v)) for values, v in groups.values()]
    sign = -1.0 if spec.search.modes[0] == "max" else 1.0
    return sorted(ranked, key=lambda r: sign * r[1])


def confirm_spec(
    spec: StudySpec,
    scores: list[TrialScore],
    *,
    top: int,
    seeds: int,
    baseline: dict[str, Any],
) -> StudySpec:
    """The confirm study of search study ``spec`` given its trials' ``scores``."""
    from normstudy.spec import SpecError, validate_data

    if spec.confirms:
        raise ConfirmError(f"{spec.name!r} is itself a confirm study; confirm its search")
    if top < 1:
        raise ConfirmError(f"--top must be at least 1, got {top}")
    if not 2 <= seeds <= 1000:
        raise ConfirmError(
            f"--seeds must be 2 to 1000 (a paired test needs 3 or more), got {seeds}"
        )
    ranked = ranked_configurations(spec, scores)
    if top > len(ranked):
        raise ConfirmError(
            f"--top {top}: study {spec.name!r} has {len(ranked)} configurations with a score "
            f"so far; ask for at most {len(ranked)}"
        )
    configs = {f"top{i + 1}": values for i, (values, _, _) in enumerate(ranked[:top])}
    if baseline:
        configs[BASELINE] = dict(baseline)
    data = spec.model_dump(mode="json")
    data.update(
        name=_name(spec.name),
        description=f"{spec.name}: top {top} configurations"
        + (" and a baseline" if baseline else "")
        + f" over {seeds} MD5 seeds",
        confirms=spec.name,
        configs=configs,
        seeds={"count": seeds},
    )
    search = data["search"]
    search.update(
        sampler="grid",
        space={"configuration": {"type": "grid", "values": list(configs)}},
        scheduler={"name": "fifo"},
    )
    # every configuration × every seed; stated, so that the saved study.yaml says it too
    search["num_samples"] = len(configs) * seeds
    try:
        return validate_data(data, f"the confirm study of {spec.name}")
    except SpecError as e:
        problems = "; ".join(e.problems).replace(f"configs.{BASELINE}", "--baseline")
        raise ConfirmError(problems) from None


def _name(study: str) -> str:
    if len(study) + len(SUFFIX) > 100:
        raise ConfirmError(f"study name {study!r} is too long to add {SUFFIX!r}")
    return study + SUFFIX
