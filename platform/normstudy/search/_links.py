"""The driver's view of the Optuna storage: which Optuna trial a Tune trial is, and its links.

The searcher records each Optuna trial's Tune trial id (`TUNE_TRIAL_ATTR`) when it suggests it;
the study callback finds the trial number by that id (for MLflow run names and tags, and the
Parquet column ``optuna_trial``) and records the MLflow run id once the tracker knows it. Only
Optuna's public storage interface is used. A storage that cannot be read leaves the links out:
they are a convenience, never a reason to stop a study.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from normstudy.search._searcher import MLFLOW_RUN_ATTR, TUNE_TRIAL_ATTR

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

log = logging.getLogger(__name__)


class OptunaLinks:
    """Looks up and annotates the trials of Optuna study ``study`` in the storage at ``url``."""

    def __init__(self, *, url: str, study: str) -> None:
        self.url, self.study = url, study
        self._storage: BaseStorage | None = None
        self._study_id: int | None = None
        self._numbers: dict[str, int] = {}
        self._linked: set[str] = set()

    def __getstate__(self) -> dict[str, object]:  # held by a callback that Tune pickles
        return {"url": self.url, "study": self.study, "_storage": None, "_study_id": None,
                "_numbers": {}, "_linked": set()}  # fmt: skip

    def _open(self) -> tuple[BaseStorage, int]:
        if self._storage is None or self._study_id is None:
            import optuna

            storage = optuna.storages.RDBStorage(self.url)
            self._study_id = storage.get_study_id_from_name(self.study)
            self._storage = storage
        return self._storage, self._study_id

    def number(self, tune_trial_id: str) -> int | None:
        """The Optuna trial number of a Tune trial, or None when the storage has none."""
        if tune_trial_id not in self._numbers:
            try:
                storage, study_id = self._open()
                for t in storage.get_all_trials(study_id, deepcopy=False):
                    owner = t.user_attrs.get(TUNE_TRIAL_ATTR)
                    if isinstance(owner, str):
                        self._numbers[owner] = t.number
            except Exception as e:
                log.warning("cannot read the Optuna storage %s: %s", self.study, e)
        return self._numbers.get(tune_trial_id)

    def link_run(self, tune_trial_id: str, run_id: str) -> None:
        """Records the MLflow run id on the (still running) Optuna trial, once."""
        number = self.number(tune_trial_id)
        if number is None or tune_trial_id in self._linked:
            return
        try:
            storage, study_id = self._open()
            trial = storage.get_trial_id_from_study_id_trial_number(study_id, number)
            # A finished trial takes no attrs (one that failed before its run existed): its
            # MLflow run names its Optuna trial still.
            if not storage.get_trial(trial).state.is_finished():
                storage.set_trial_user_attr(trial, MLFLOW_RUN_ATTR, run_id)
        except Exception as e:
            log.warning("Optuna trial %s: run id not recorded: %s", number, e)
        self._linked.add(tune_trial_id)
