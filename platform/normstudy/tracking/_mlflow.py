"""MLflow: one experiment per study, a parent run for the study, a child run per trial.

MLflow is never the source of truth (Parquet is) and must never stall a study: every call runs
on a background thread with short HTTP timeouts and no retry storms, failures are collected and
reported at the end.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normstudy.tracking._worker import BackgroundCalls

if TYPE_CHECKING:
    from mlflow import MlflowClient

# Bounded HTTP behaviour; set before mlflow is imported (it reads them at import and per call).
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
MAX_PARAM_LEN = 6000


def _client(uri: str) -> MlflowClient:
    for key, value in HTTP_ENV.items():
        os.environ.setdefault(key, value)
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):  # schema-migration chatter on a new local store
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


class StudyTracker:
    """Logs a study to MLflow in the background. Methods never raise and never block long."""

    def __init__(
        self,
        *,
        uri: str,
        study: str,
        artifact_root: Path,
        state_file: Path,
        tags: dict[str, str],
    ) -> None:
        self.uri, self.study, self.tags = uri, study, tags
        self.artifact_root, self.state_file = artifact_root, state_file
        self._state: dict[str, Any] = (
            json.loads(state_file.read_text()) if state_file.exists() else {"children": {}}
        )
        self._calls = BackgroundCalls("mlflow")
        self._client: MlflowClient | None = None
        self._calls.submit("start study run", self._start_parent)

    @property
    def failures(self) -> list[str]:
        return self._calls.failures

    # -- runs on the background thread ----------------------------------------------------
    def _c(self) -> MlflowClient:
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

    def _save_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state, indent=1))
        tmp.replace(self.state_file)

    def _start_parent(self) -> None:
        c = self._c()
        exp = c.get_experiment_by_name(self.study)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:") or self.uri.startswith("file:"):
                location = (self.artifact_root / self.study).as_uri()
            exp_id = c.create_experiment(self.study, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        self._state["experiment_id"] = exp_id
        if self._state.get("parent"):
            c.update_run(self._state["parent"], status="RUNNING")
        else:
            run = c.create_run(
                exp_id, run_name=self.study, tags={**self.tags, "normstudy.role": "study"}
            )
            self._state["parent"] = run.info.run_id
        self._save_state()

    def _child(self, trial_id: str) -> str | None:
        return self._state["children"].get(trial_id)

    def _start_child(self, trial_id: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        c = self._c()
        existing = self._child(trial_id)
        if existing:
            c.update_run(existing, status="RUNNING")
            return
        run = c.create_run(
            self._state["experiment_id"],
            run_name=trial_id,
            tags={
                **self.tags,
                **tags,
                "mlflow.parentRunId": self._state["parent"],
                "normstudy.role": "trial",
                "normstudy.trial_id": trial_id,
            },
        )
        self._state["children"][trial_id] = run.info.run_id
        self._save_state()
        from mlflow.entities import Param

        items = [
            Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in params.items()
        ]
        items = [Param(p.key, p.value[:MAX_PARAM_LEN]) for p in items]
        for i in range(0, len(items), 100):
            c.log_batch(run.info.run_id, params=items[i : i + 100])

    def _log_metrics(self, trial_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        run_id = self._child(trial_id)
        if run_id is None:
            raise RuntimeError(f"no MLflow run for trial {trial_id}")
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._c().log_batch(run_id, metrics=items)

    def _end_child(self, trial_id: str, summary: dict[str, float], status: str) -> None:
        run_id = self._child(trial_id)
        if run_id is None:
            raise RuntimeError(f"no MLflow run for trial {trial_id}")
        c = self._c()
        for key, value in summary.items():
            c.log_metric(run_id, key, value)
        c.set_terminated(run_id, status=status)

    def _end_parent(self, best: dict[str, Any] | None, status: str) -> None:
        c = self._c()
        parent = self._state["parent"]
        if best is not None:
            for key in ("trial_id", "score", "metric"):
                c.set_tag(parent, f"best.{key}", str(best.get(key)))
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "best_config.json"
                path.write_text(json.dumps(best, indent=2, default=str))
                c.log_artifact(parent, str(path))
        c.set_terminated(parent, status=status)

    # -- public: enqueue and return at once -------------------------------------------------
    def trial_started(self, trial_id: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        self._calls.submit(
            f"start run of {trial_id}", lambda: self._start_child(trial_id, params, tags)
        )

    def trial_result(self, trial_id: str, metrics: dict[str, float], step: int) -> None:
        self._calls.submit(
            f"metrics of {trial_id} epoch {step}",
            lambda: self._log_metrics(trial_id, metrics, step),
        )

    def trial_artifacts(self, trial_id: str, files: dict[str, str]) -> None:
        def log() -> None:
            run_id = self._child(trial_id)
            if run_id is None:
                raise RuntimeError(f"no MLflow run for trial {trial_id}")
            for name, text in files.items():
                self._c().log_text(run_id, text, name)

        self._calls.submit(f"artifacts of {trial_id}", log)

    def trial_ended(self, trial_id: str, summary: dict[str, float], status: str) -> None:
        self._calls.submit(
            f"end run of {trial_id}", lambda: self._end_child(trial_id, summary, status)
        )

    def study_ended(self, best: dict[str, Any] | None, status: str = "FINISHED") -> None:
        self._calls.submit("end study run", lambda: self._end_parent(best, status))

    def close(self, timeout_s: float = 60.0) -> list[str]:
        """Wait (bounded) for queued calls; return what could not be logged."""
        self._calls.close(timeout_s)
        return list(self.failures)
