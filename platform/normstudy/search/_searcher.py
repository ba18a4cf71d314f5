"""Ray Tune's OptunaSearch, made to leave an Optuna storage that Optuna's own tools read right.

Ray's searcher (2.60) reports the searched metric (for us the running best, ``best/<m>``) at
Tune's ``training_iteration``, only for results the scheduler did not stop (so never the last
epoch), completes every trial that has a value (ASHA-stopped ones too) and leaves objectives
unnamed. Here instead:

- every epoch's actual metric (``<m>``) is reported at ``step=epoch``, the last one included;
- a trial stopped before its last epoch is told PRUNED (Optuna then takes its last
  intermediate value as its value); a completed one COMPLETE with its best (``best/<m>``);
- the objectives carry the metric names (``set_metric_names``);
- each Optuna trial records its Tune trial id (user attr `TUNE_TRIAL_ATTR`).

This is the one place that reaches OptunaSearch's private state (``_ot_trials``, ``_ot_study``,
``_completed_trials``, ``_setup_study``), as Ray 2.60 has it: the public searcher interface has
no hook for intermediate values or for the state a trial is told with.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)

TUNE_TRIAL_ATTR = "normstudy.tune_trial_id"
MLFLOW_RUN_ATTR = "normstudy.mlflow_run_id"


class StudySearch(OptunaSearch):  # type: ignore[misc]
    """OptunaSearch for one metric ``best/<m>`` of trials that run ``epochs`` epochs.

    Args:
        epochs: Epochs of a trial run to its end; a trial ending before is PRUNED.
        metric_names: The objectives' names in the Optuna study (e.g. ``["val/acc"]``).
        **kwargs: OptunaSearch's arguments (``metric`` is ``best/<m>``).
    """

    def __init__(self, *, epochs: int, metric_names: list[str], **kwargs: Any) -> None:
        self._epochs, self._metric_names = epochs, list(metric_names)
        self._reported: dict[str, int] = {}  # trial id -> last epoch reported
        super().__init__(**kwargs)

    def _setup_study(self, mode: Any) -> None:
        import optuna

        super()._setup_study(mode)
        study: Any = self._ot_study
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what it reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(self._metric_names)

    def _single(self) -> bool:
        return isinstance(self.metric, str)

    def _raw_metric(self) -> str:
        return str(self.metric).removeprefix("best/")

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)
        if trial is not None:
            trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return config

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        value, epoch = result.get(self._raw_metric()), result.get("epoch")
        if not isinstance(value, int | float) or not isinstance(epoch, int):
            return
        if epoch <= self._reported.get(trial_id, 0) or not math.isfinite(value):
            return  # an epoch redone after a restore was reported before
        self._ot_trials[trial_id].report(float(value), epoch)
        self._reported[trial_id] = epoch

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if not self._single():
            return  # Optuna has no intermediate values for several objectives
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._report(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if not self._single() or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        if trial_id not in self._ot_trials:
            return
        from optuna.trial import TrialState

        self._report(trial_id, result or {})  # the last epoch never passes on_trial_result
        value = (result or {}).get(self.metric)
        epoch = (result or {}).get("epoch")
        finished = isinstance(epoch, int) and epoch >= self._epochs
        if error or not result:
            state, value = TrialState.FAIL, None
        elif not finished or not isinstance(value, int | float) or not math.isfinite(value):
            state, value = TrialState.PRUNED, None
        else:
            state = TrialState.COMPLETE
        try:
            study: Any = self._ot_study
            study.tell(self._ot_trials[trial_id], value, state=state)
        except Exception as e:  # Tune must go on; Parquet holds the result anyway
            log.warning("Optuna trial of %s not told %s: %s", trial_id, state.name, e)
        self._completed_trials.add(trial_id)
        self._reported.pop(trial_id, None)
