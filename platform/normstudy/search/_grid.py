"""Optuna's grid sampler as Tune drives it (ask/tell, not Optuna's optimize loop)."""

from __future__ import annotations

from typing import Any

import optuna


class TuneGridSampler(optuna.samplers.GridSampler):  # type: ignore[misc]
    """Optuna's grid sampler without its ``study.stop()`` once the grid is covered: that call
    is for Optuna's own optimize loop and raises under Tune's ask/tell (after the trial's state
    is stored, so only a misleading warning came of it); Tune ends the study after
    ``num_samples`` trials."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        try:
            super().after_trial(study, trial, state, values)
        except RuntimeError as e:
            if "Study.stop" not in str(e):
                raise
