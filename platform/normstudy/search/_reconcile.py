"""Before a resume: Optuna trials that Tune's saved state never recorded.

A driver killed hard (SIGKILL, a lost head) can have asked Optuna for a trial after Tune last
saved its experiment state. The restored study knows nothing of that trial: Optuna would keep it
RUNNING forever and the searcher would fill its slot with a new suggestion. Instead the orphan
is told FAIL and its configuration is enqueued, so the next suggestion is that configuration
again (as a new trial, from scratch: its checkpoints belong to a trial Tune no longer knows).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from normstudy.home import StudyPaths
    from normstudy.spec import StudySpec

REQUEUED_FROM = "normstudy.requeued_from"
LOST_ERROR = (
    "LostTrial: the driver was killed before Tune saved this trial; its configuration runs "
    "again as a new trial"
)


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


def tune_trials(paths: StudyPaths) -> list[Any] | None:
    """The trials of Tune's saved experiment state; None when nothing is saved (yet)."""
    from ray.tune import ExperimentAnalysis

    # It warns about each trial's missing result.json: Parquet holds results, not Tune's logs.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    try:
        return list(ExperimentAnalysis(paths.tune.uri).trials)
    except (OSError, ValueError, RuntimeError):
        return None


def _known_configs(paths: StudyPaths) -> list[dict[str, Any]]:
    """The sampled configurations of every trial in Tune's saved experiment state."""
    return [_flat(dict(trial.config)) for trial in tune_trials(paths) or []]


def lost_results(paths: StudyPaths) -> list[str]:
    """Trials the results show running that Tune's saved state does not have: a driver killed
    hard started them after Tune last saved, so no resume continues them."""
    from normstudy.results import read_results

    table = read_results(paths.results).select(["trial_id", "status"]).to_pylist()
    running = {r["trial_id"] for r in table if r["status"] == "running"}
    if not running:
        return []
    known = {t.trial_id for t in tune_trials(paths) or []}
    return sorted(running - known)


def settle_lost_results(paths: StudyPaths, trial_ids: list[str]) -> None:
    """Marks lost trials' results as errors (their Optuna trials are told FAIL and their
    configurations rerun: see `requeue_orphans`), so no table waits for them."""
    from normstudy.results import ResultsSink

    sink = ResultsSink(paths.results)
    for trial_id in trial_ids:
        sink.update(trial_id, [], status="error", fields={"error": LOST_ERROR})


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
