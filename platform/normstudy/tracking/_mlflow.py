"""MLflow calls: one outbox operation at a time, each idempotent, with the study's run-id map.

One experiment per study, a parent run for the study, a child run per trial. Replaying an
operation that already reached the server changes nothing: runs are looked up by tag before
they are created (a create whose answer was lost makes no second run), metric points keep their
original timestamp and step (MLflow's SQL store keeps one row per identical (key, value,
timestamp, step): an identical point logged again is dropped), params are logged only where
missing, tags and end states are set to the same values again.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from normstudy.tracking._client import UndeliverableError, client

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from normstudy.storage import Location
    from normstudy.tracking._outbox import Op

MAX_PARAM_LEN = 6000


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class RunSender:
    """Sends outbox operations to the MLflow server at ``uri``; keeps run ids in ``state_file``."""

    def __init__(self, *, uri: str, study: str, artifact_root: Location, state_file: Location):
        self.uri, self.study = uri, study
        self.artifact_root, self.state_file = artifact_root, state_file
        self.notes: list[str] = []  # what was left out of an operation that went through
        self._client: MlflowClient | None = None
        self.state: dict[str, Any] = {"children": {}}
        try:
            if state_file.exists():
                self.state = {"children": {}, **json.loads(state_file.read_text())}
        except (OSError, ValueError) as e:  # runs are found by tag instead
            self.notes.append(f"cannot read {state_file} ({type(e).__name__}); runs found by tag")

    def c(self) -> MlflowClient:
        if self._client is None:
            self._client = client(self.uri)
        return self._client

    def probe(self) -> None:
        """Raises unless the server answers."""
        self.c().search_experiments(max_results=1)

    def send(self, op: Op) -> None:
        handler = getattr(self, f"_op_{op.get('op')}", None)
        if handler is None:
            raise UndeliverableError(f"unknown operation {op.get('op')!r}")
        handler(op)

    # -- runs: found by id, else by tag, else created ----------------------------------------
    def _save(self) -> None:
        self.state_file.write_text(json.dumps(self.state, indent=1))

    def _get(self, run_id: str | None) -> Any:
        """The run, or None when there is none by that id (deleted, or another store's id)."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            return None
        try:
            run = self.c().get_run(run_id)
        except MlflowException as e:
            if e.get_http_status_code() == 404:
                return None
            raise
        return run if run.info.lifecycle_stage == "active" else None

    def _find(self, tags: dict[str, str], order: str = "ASC") -> Any:
        """The first run (by start time) in the study's experiment that has these tags."""
        if any("'" in v for v in tags.values()):
            return None
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        experiment = self.state.get("experiment_id") or self._experiment()
        order_by = [f"attributes.start_time {order}"]
        runs = self.c().search_runs([experiment], query, max_results=1, order_by=order_by)
        return runs[0] if runs else None

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        c = self.c()
        exp = c.get_experiment_by_name(self.study)
        if exp is not None:
            return str(exp.experiment_id)
        location = None
        if self.uri.startswith(("sqlite:", "file:")):
            root = self.artifact_root / self.study  # a bucket home keeps artifacts there too
            location = root.local_path.as_uri() if root.is_local else root.uri
        try:
            return str(c.create_experiment(self.study, artifact_location=location))
        except MlflowException:  # made meanwhile (or by a create whose answer was lost)
            exp = c.get_experiment_by_name(self.study)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def _resume(self, run: Any) -> None:
        if run.info.status != "RUNNING":
            self.c().update_run(run.info.run_id, status="RUNNING")

    def _parent(self) -> str:
        if not self.state.get("parent"):  # run-id map lost: the study's latest parent run
            run = self._find({"normstudy.role": "study", "normstudy.study": self.study}, "DESC")
            if run is None:
                raise UndeliverableError("the study has no MLflow run")
            self.state["parent"] = run.info.run_id
        return str(self.state["parent"])

    def _child(self, trial_id: str) -> str:
        run_id = self.state["children"].get(trial_id)
        if run_id:
            return str(run_id)
        run = self._find({"normstudy.trial_id": trial_id, "mlflow.parentRunId": self._parent()})
        if run is None:
            raise UndeliverableError(f"no MLflow run for trial {trial_id}")
        self.state["children"][trial_id] = run.info.run_id
        self._save()
        return str(run.info.run_id)

    # -- operations ------------------------------------------------------------------------
    def _op_start_study(self, op: Op) -> None:
        experiment = self._experiment()
        self.state["experiment_id"] = experiment
        key = {"normstudy.role": "study", "normstudy.study": self.study}
        key["normstudy.study_uid"] = op["uid"]
        run = self._get(self.state.get("parent"))
        if run is None or run.info.experiment_id != experiment:
            run = self._find(key)
        if run is None:
            tags = {**op["tags"], **key}
            run = self.c().create_run(experiment, op["t"], tags=tags, run_name=self.study)
        self._resume(run)
        self.state["parent"] = run.info.run_id
        self._save()

    def _op_start_trial(self, op: Op) -> None:
        from mlflow.entities import Param

        trial, parent = op["trial_id"], self._parent()
        key = {"normstudy.trial_id": trial, "mlflow.parentRunId": parent}
        run = self._get(self.state["children"].get(trial)) or self._find(key)
        if run is None:
            tags = {**op["tags"], **key, "normstudy.role": "trial"}
            experiment = self.state.get("experiment_id") or self._experiment()
            run = self.c().create_run(experiment, op["t"], tags=tags, run_name=trial)
        self._resume(run)
        self.state["children"][trial] = run.info.run_id
        self._save()
        have = run.data.params
        params = [Param(k, v) for k, v in op["params"].items() if k not in have]
        for part in _chunks(params, 100):
            self.c().log_batch(run.info.run_id, params=part)

    def _op_metrics(self, op: Op) -> None:
        from mlflow.entities import Metric

        points = [Metric(k, float(v), op["t"], op["step"]) for k, v in op["metrics"].items()]
        for part in _chunks(points, 1000):
            self.c().log_batch(self._child(op["trial_id"]), metrics=part)

    def _op_tags(self, op: Op) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(k, str(v)) for k, v in op["tags"].items()]
        for part in _chunks(tags, 100):
            self.c().log_batch(self._child(op["trial_id"]), tags=part)

    def _op_artifacts(self, op: Op) -> None:
        run_id = self._child(op["trial_id"])
        for name, text in op["files"].items():
            self.c().log_text(run_id, text, name)

    def _op_end_trial(self, op: Op) -> None:
        from mlflow.entities import Metric

        run_id = self._child(op["trial_id"])
        summary = [Metric(k, float(v), op["t"], 0) for k, v in op["summary"].items()]
        if summary:
            self.c().log_batch(run_id, metrics=summary)
        self.c().set_terminated(run_id, status=op["status"], end_time=op["t"])

    def _op_end_study(self, op: Op) -> None:
        from mlflow.entities import RunTag

        parent, best = self._parent(), op.get("best")
        if best is not None:  # best.* names a run: only set when that run exists
            try:
                run_id = self._child(str(best.get("trial_id")))
            except UndeliverableError as e:
                self.notes.append(f"end study run: best.* tags left out ({e})")
            else:
                names = {"trial_id": best.get("trial_id"), "run_id": run_id}
                names |= {k: best.get(k) for k in ("score", "metric")}
                tags = [RunTag(f"best.{k}", str(v)) for k, v in names.items()]
                self.c().log_batch(parent, tags=tags)
                self.c().log_text(parent, json.dumps(best, indent=2), "best_config.json")
        self.c().set_terminated(parent, status=op["status"], end_time=op["t"])
