"""Before a resume: Optuna trials that Tune's saved state never recorded.

A driver killed hard (SIGKILL, a lost head) can have asked Optuna for a trial after Tune last
saved its experiment state. The restored study knows nothing of that trial: Optuna would keep it
RUNNING forever and the searcher would fill its slot with a new suggestion. Instead the orphan
is told FAIL and its configuration is enqueued, so the next suggestion is that configuration
again (as a new trial, from scratch: its checkpoints belong to a trial Tune no longer knows).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from normstudy.home import StudyPaths
    from normstudy.spec import StudySpec

REQUEUED_FROM = "normstudy.requeued_from"


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, int | float):
        return math.isclose(a, float(b), rel_tol=1e-12, abs_tol=0.0)
    return bool(a == b)


def _known_configs(paths: StudyPaths) -> list[dict[str, Any]]:
    """The sampled configurations of every trial in Tune's saved experiment state."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(paths.tune.uri)
    except (OSError, ValueError, RuntimeError):  # nothing saved yet: every trial is unknown
        return []
    return [_flat(dict(trial.config)) for trial in analysis.trials]


def requeue_orphans(spec: StudySpec, paths: StudyPaths, storage_url: str) -> list[int]:
    """Tells FAIL every RUNNING Optuna trial whose parameters no trial of Tune's saved state
    has, enqueues its parameters, and returns the orphans' trial numbers."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=spec.name, storage=storage_url)
    except KeyError:  # no Optuna study yet
        return []
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    known = _known_configs(paths)
    orphans = []
    for trial in running:
        params = trial.params
        if any(all(k in c and _same(v, c[k]) for k, v in params.items()) for c in known):
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(params, user_attrs={REQUEUED_FROM: trial.number})
        orphans.append(trial.number)
    return orphans
