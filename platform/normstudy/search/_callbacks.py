"""Driver-side Tune callbacks: Parquet rows, MLflow runs, and the live terminal view."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from normstudy.redact import redact
from normstudy.spec import resolve_config
from normstudy.spec._metrics import PLAIN

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from normstudy.home import StudyPaths
    from normstudy.results import ResultsSink
    from normstudy.search._links import OptunaLinks
    from normstudy.spec import StudySpec
    from normstudy.storage import Location
    from normstudy.tracking import StudyTracker

# Keys of a Tune result that are our metrics: "group/name" plus these.
_PLAIN_METRICS = PLAIN


def for_mlflow(metrics: dict[str, float]) -> dict[str, float]:
    """Per-epoch metrics as MLflow gets them: the running best ``best/<m>`` under
    ``running_best/<m>``, as ``best/<m>`` is the trial's summary, logged once at its end."""
    return {
        f"running_best/{k.removeprefix('best/')}" if k.startswith("best/") else k: v
        for k, v in metrics.items()
    }


def metrics_of(result: dict[str, Any]) -> dict[str, float]:
    """The trial's own numeric metrics in a Tune result (Tune adds bookkeeping keys)."""
    out = {}
    for key, value in result.items():
        if (
            ("/" in key or key in _PLAIN_METRICS)
            and isinstance(value, int | float)
            and not (isinstance(value, bool))
        ):
            out[key] = float(value)
    return out


class _NotPickled:
    """Tune pickles the run config (callbacks included) into its experiment state; these
    callbacks hold threads and consoles, and are given anew on resume, so they pickle empty."""

    def __getstate__(self) -> dict[str, Any]:
        return {}


class StudyCallback(_NotPickled, Callback):
    """Writes every result to the Parquet sink and MLflow; tracks progress for the live view."""

    def __init__(
        self,
        *,
        study: str,
        base: dict[str, Any],
        epochs: int,
        sink: ResultsSink,
        tracker: StudyTracker | None,
        meta: dict[str, str],
        score_keys: list[str],
        artifacts_dir: Location,
        variants: dict[str, dict[str, dict[str, Any]]],
        links: OptunaLinks | None = None,
    ) -> None:
        self.artifacts_dir, self.variants, self.links = artifacts_dir, variants, links
        self.study, self.base, self.epochs = study, base, epochs
        self.sink, self.tracker, self.meta = sink, tracker, meta
        self.score_keys = score_keys
        self.last_epoch: dict[str, int] = {}
        self.status: dict[str, str] = {}
        self._node: dict[str, str] = {}
        self._ids: dict[str, dict[str, Any]] = {}  # trial -> optuna_trial, mlflow_run_id
        # Epochs are delivered at least once: a trial restored after a lost node or driver may
        # redo an epoch whose row exists. Parquet replaces the row; MLflow must not get a
        # second point for the step, so each trial's highest logged epoch is remembered.
        self._logged = _logged_epochs(sink)

    def _config(self, trial: Trial) -> dict[str, Any]:
        return resolve_config(self.base, dict(trial.config), self.variants)

    def _row(
        self, trial: Trial, epoch: int, metrics: dict[str, float], node: str | None
    ) -> dict[str, Any]:
        from normstudy.results import flatten_config

        config = self._config(trial)
        return {
            "study": self.study,
            "trial_id": trial.trial_id,
            "seed": int(config["seed"]),
            "epoch": epoch,
            "node": node,
            **flatten_config(config),
            **metrics,
            **{f"meta.{k}": v for k, v in self.meta.items()},
        }

    def _links(self, trial: Trial) -> dict[str, Any]:
        """The trial's Optuna trial number and MLflow run id, as far as known (Parquet columns
        ``optuna_trial`` and ``mlflow_run_id``); the run id, once known, goes to Optuna too."""
        ids = self._ids.setdefault(trial.trial_id, {})
        if "optuna_trial" not in ids and self.links is not None:
            # None: the storage has no such trial (a study begun by an older normstudy)
            ids["optuna_trial"] = self.links.number(trial.trial_id)
        if "mlflow_run_id" not in ids and self.tracker is not None:
            run_id = self.tracker.run_id(trial.trial_id)
            if run_id:
                ids["mlflow_run_id"] = run_id
                if self.links is not None:
                    self.links.link_run(trial.trial_id, run_id)
        return {k: v for k, v in ids.items() if v is not None}

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        from normstudy.results import flatten_config
        from normstudy.search._labels import flat, run_name, searched_params, short_names

        self.status[trial.trial_id] = "running"
        if self.tracker:
            config = self._config(trial)
            number = self._links(trial).get("optuna_trial")
            searched = flat(dict(trial.config))
            tags = {"normstudy.seed": str(config["seed"]), "normstudy.status": "running"}
            tags["normstudy.searched"] = ",".join(searched_params(searched))
            if number is not None:
                tags["normstudy.optuna_trial"] = str(number)
            params = searched_params(searched)  # first: they are what tells trials apart
            params |= {k.removeprefix("config."): v for k, v in flatten_config(config).items()}
            names = short_names(searched)
            label = f"t{number:03d}" if number is not None else trial.trial_id
            name = run_name(label, {names[k]: v for k, v in searched.items()})
            self.tracker.trial_started(trial.trial_id, params, tags, name=name)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:

        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = metrics_of(result)
        row = self._row(trial, epoch, metrics, result.get("node_id"))
        self.sink.update(trial.trial_id, [row], status="running", fields=self._links(trial))
        self.last_epoch[trial.trial_id] = epoch
        if self.tracker:
            node = result.get("node_id")
            if node and self._node.get(trial.trial_id) != node:
                self._node[trial.trial_id] = node
                self.tracker.trial_tags(trial.trial_id, {"normstudy.node_id": str(node)})
            if epoch > self._logged.get(trial.trial_id, 0):
                self.tracker.trial_result(trial.trial_id, for_mlflow(metrics), step=epoch)
                self._logged[trial.trial_id] = epoch
        files = result.get("artifacts")
        if isinstance(files, dict) and files:
            self._save_artifacts(trial.trial_id, files)

    def _save_artifacts(self, trial_id: str, files: dict[str, str]) -> None:
        folder = self.artifacts_dir / trial_id
        for name, text in files.items():
            (folder / name).write_text(str(text))
        if self.tracker:
            self.tracker.trial_artifacts(trial_id, {k: str(v) for k, v in files.items()})

    def _end(self, trial: Trial, status: str, mlflow_status: str, error: str | None = None) -> None:
        self.status[trial.trial_id] = status
        # A trial that failed in every attempt made num_failures attempts; one that ended
        # after retries made one more than it failed.
        attempts = trial.num_failures + (0 if status == "error" else 1)
        fields = {"attempts": attempts, "error": error, **self._links(trial)}
        rows = []
        if status == "error" and not self.sink.load(trial.trial_id):
            rows = [self._row(trial, 0, {}, None)]  # failed before any epoch: still a result
        self.sink.update(trial.trial_id, rows, status=status, fields=fields)
        if self.tracker:
            last = trial.last_result or {}
            summary = {
                k: float(last[k])
                for k in self.score_keys
                if isinstance(last.get(k), int | float) and math.isfinite(last[k])
            }
            step = self.last_epoch.get(trial.trial_id, self._logged.get(trial.trial_id, 0))
            tags = {"normstudy.status": status}
            self.tracker.trial_ended(trial.trial_id, summary, mlflow_status, step=step, tags=tags)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        # An ASHA-stopped trial is TERMINATED in Tune, so FINISHED in MLflow; the tag
        # normstudy.status=stopped tells it from a completed one.
        # A trial restored after its last epoch completes with no new result: its epochs are
        # in the results (and Tune's last result) from before the restore.
        reported = (trial.last_result or {}).get("epoch")
        last = max(
            self.last_epoch.get(trial.trial_id, 0),
            self._logged.get(trial.trial_id, 0),
            int(reported) if isinstance(reported, int | float) else 0,
        )
        self._end(trial, "stopped" if last < self.epochs else "completed", "FINISHED")

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._end(trial, "error", "FAILED", _error_line(trial))


def _error_line(trial: Trial) -> str:
    """The trial's last error as 'Type: message' (the last line of its traceback)."""
    try:
        # Tune writes error.txt in the trial's local folder before this callback and syncs it
        # to the study's storage later: read the local file, the synced one only without it.
        local = trial.error_file
        text = Path(local).read_text() if local and Path(local).is_file() else trial.get_error()
    except Exception:  # the error file may be unreadable; the row must be written anyway
        text = None
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return redact(lines[-1])[:1000] if lines else "unknown error (see the Tune trial folder)"


def _logged_epochs(sink: ResultsSink) -> dict[str, int]:
    """Each trial's highest epoch in the results (what the tracker was given before)."""
    from normstudy.results import read_results

    table = read_results(sink.results_dir, ["epoch"]).to_pylist()
    logged: dict[str, int] = {}
    for row in table:
        logged[row["trial_id"]] = max(logged.get(row["trial_id"], 0), int(row["epoch"]))
    return logged


class OptunaSync(Callback):
    """Pushes the Optuna working copy to the home (`_optuna_store.push`) after every finished
    trial and at the end."""

    def __init__(self, spec: StudySpec, paths: StudyPaths) -> None:
        self.spec, self.paths = spec, paths

    def __getstate__(self) -> dict[str, Any]:  # given anew on resume, like the other callbacks
        return {}

    def _push(self) -> None:
        from normstudy.search._optuna_store import push

        push(self.spec, self.paths)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._push()

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._push()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._push()
