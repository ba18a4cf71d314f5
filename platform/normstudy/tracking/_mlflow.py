"""MLflow calls: one outbox operation at a time, each idempotent, with the study's run-id map.

One experiment per study, a parent run for the study, a child run per trial. Replaying an
operation that already reached the server changes nothing: runs are looked up by tag before
they are created (a create whose answer was lost makes no second run), metric points keep their
original timestamp and step (MLflow's SQL store keeps one row per identical (key, value,
timestamp, step): an identical point logged again is dropped), params are logged only where
missing, tags and end states are set to the same values again.

The experiment is marked a model-training one (`EXPERIMENT_KIND`), so MLflow's UI opens its runs
table rather than its GenAI pages. A local store (sqlite) keeps artifacts proxied
(``mlflow-artifacts:/<study>``): the runs record no absolute path, the files lie under the
home's ``mlartifacts/``, and whatever serves the home (``normstudy ui``) serves them, wherever
the home was moved or synced to.
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
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
PROXIED = "mlflow-artifacts:"


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

    def run_id(self, trial_id: str) -> str | None:
        """The trial's run id, once its run exists (read from any thread)."""
        run_id = self.state["children"].get(trial_id)
        return str(run_id) if run_id else None

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
            for key, value in EXPERIMENT_KIND.items():  # one made by an older normstudy
                if exp.tags.get(key) != value:
                    c.set_experiment_tag(exp.experiment_id, key, value)
            return str(exp.experiment_id)
        location = f"{PROXIED}/{self.study}" if self._local_store() else None
        try:
            return str(c.create_experiment(self.study, location, tags=EXPERIMENT_KIND))
        except MlflowException:  # made meanwhile (or by a create whose answer was lost)
            exp = c.get_experiment_by_name(self.study)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def _local_store(self) -> bool:
        return self.uri.startswith(("sqlite:", "file:"))

    def _log_text(self, run_id: str, text: str, name: str) -> None:
        """``log_text``; for a local store with proxied artifacts, the file is written where
        the server proxying them (``--artifacts-destination`` the home's mlartifacts) reads."""
        from urllib.parse import urlparse

        if self._local_store():
            uri = self.c().get_run(run_id).info.artifact_uri
            if uri.startswith(PROXIED):
                parts = [p for p in urlparse(uri).path.split("/") if p]
                target = self.artifact_root
                for part in [*parts, *name.split("/")]:
                    target = target / part
                target.write_text(text)
                return
        self.c().log_text(run_id, text, name)

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
        have = self.c().get_experiment(experiment).tags if op.get("experiment_tags") else {}
        for k, v in op.get("experiment_tags", {}).items():  # e.g. the UI's view of the runs
            if have.get(k) != v:
                self.c().set_experiment_tag(experiment, k, v)
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
        trial, parent = op["trial_id"], self._parent()
        key = {"normstudy.trial_id": trial, "mlflow.parentRunId": parent}
        run = self._get(self.state["children"].get(trial)) or self._find(key)
        name = op.get("name") or trial
        if run is None:
            tags = {**op["tags"], **key, "normstudy.role": "trial"}
            experiment = self.state.get("experiment_id") or self._experiment()
            run = self.c().create_run(experiment, op["t"], tags=tags, run_name=name)
        else:  # resumed: its tags say so again (e.g. normstudy.status)
            self._op_tags({"trial_id": trial, "tags": op["tags"]}, run.info.run_id)
            if run.info.run_name != name:
                self.c().update_run(run.info.run_id, name=name)
        self._resume(run)
        self.state["children"][trial] = run.info.run_id
        self._save()
        self._log_params(run, op["params"])

    def _log_params(self, run: Any, params: dict[str, str]) -> None:
        """Params the run lacks, in the given order (MLflow's are immutable: a key it has keeps
        its value)."""
        from mlflow.entities import Param

        have = run.data.params
        for key in params.keys() & have.keys():
            if have[key] != params[key]:
                self.notes.append(f"param {key} of run {run.info.run_id} kept its value")
        missing = [Param(k, v) for k, v in params.items() if k not in have]
        for part in _chunks(missing, 100):
            self.c().log_batch(run.info.run_id, params=part)

    def _op_metrics(self, op: Op) -> None:
        from mlflow.entities import Metric

        points = [Metric(k, float(v), op["t"], op["step"]) for k, v in op["metrics"].items()]
        for part in _chunks(points, 1000):
            self.c().log_batch(self._child(op["trial_id"]), metrics=part)

    def _op_tags(self, op: Op, run_id: str | None = None) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(k, str(v)) for k, v in op["tags"].items()]
        for part in _chunks(tags, 100):
            self.c().log_batch(run_id or self._child(op["trial_id"]), tags=part)

    def _op_artifacts(self, op: Op) -> None:
        run_id = self._child(op["trial_id"])
        for name, text in op["files"].items():
            self._log_text(run_id, text, name)

    def _op_end_trial(self, op: Op) -> None:
        from mlflow.entities import Metric

        run_id = self._child(op["trial_id"])
        step = int(op.get("step", 0))  # an outbox from before steps were sent: 0
        summary = [Metric(k, float(v), op["t"], step) for k, v in op["summary"].items()]
        if summary:
            self.c().log_batch(run_id, metrics=summary)
        if op.get("tags"):
            self._op_tags(op, run_id)
        self.c().set_terminated(run_id, status=op["status"], end_time=op["t"])

    def _op_end_study(self, op: Op) -> None:
        from mlflow.entities import Metric, RunTag

        parent, best = self._parent(), op.get("best")
        metrics = [Metric(k, float(v), op["t"], 0) for k, v in op.get("metrics", {}).items()]
        if metrics:
            self.c().log_batch(parent, metrics=metrics)
        if op.get("params"):
            self._log_params(self.c().get_run(parent), op["params"])
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
                self._log_text(parent, json.dumps(best, indent=2), "best_config.json")
        self.c().set_terminated(parent, status=op["status"], end_time=op["t"])
