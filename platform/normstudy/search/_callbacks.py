"""Driver-side Tune callbacks: Parquet rows, MLflow runs, and the live terminal view."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from normstudy.redact import redact
from normstudy.spec import resolve_config

if TYPE_CHECKING:
    from ray.tune.experiment import Trial
    from rich.console import Console

    from normstudy.results import ResultsSink
    from normstudy.storage import Location
    from normstudy.tracking import StudyTracker

# Keys of a Tune result that are our metrics: "group/name" plus these.
_PLAIN_METRICS = ("lr", "epoch_time_s")


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
    ) -> None:
        self.artifacts_dir, self.variants = artifacts_dir, variants
        self.study, self.base, self.epochs = study, base, epochs
        self.sink, self.tracker, self.meta = sink, tracker, meta
        self.score_keys = score_keys
        self.last_epoch: dict[str, int] = {}
        self.status: dict[str, str] = {}
        self._node: dict[str, str] = {}
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

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        from normstudy.results import flatten_config

        self.status[trial.trial_id] = "running"
        if self.tracker:
            config = self._config(trial)
            tags = {"normstudy.seed": str(config["seed"])}
            params = {k.removeprefix("config."): v for k, v in flatten_config(config).items()}
            self.tracker.trial_started(trial.trial_id, params, tags)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:

        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = metrics_of(result)
        row = self._row(trial, epoch, metrics, result.get("node_id"))
        self.sink.update(trial.trial_id, [row], status="running")
        self.last_epoch[trial.trial_id] = epoch
        if self.tracker:
            node = result.get("node_id")
            if node and self._node.get(trial.trial_id) != node:
                self._node[trial.trial_id] = node
                self.tracker.trial_tags(trial.trial_id, {"normstudy.node_id": str(node)})
            if epoch > self._logged.get(trial.trial_id, 0):
                self.tracker.trial_result(trial.trial_id, metrics, step=epoch)
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
        fields = {"attempts": attempts, "error": error}
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
            self.tracker.trial_ended(trial.trial_id, summary, mlflow_status)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        stopped = self.last_epoch.get(trial.trial_id, 0) < self.epochs
        self._end(trial, "stopped" if stopped else "completed", "FINISHED")

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._end(trial, "error", "FAILED", _error_line(trial))


def _error_line(trial: Trial) -> str:
    """The trial's last error as 'Type: message' (the last line of its traceback)."""
    try:
        text = trial.get_error()
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


class LiveView(_NotPickled, Callback):
    """Trials running / finished / errored and the best score so far, on the terminal."""

    def __init__(self, console: Console, total: int, score_key: str, mode: str) -> None:
        self.console, self.total = console, total
        self.score_key, self.mode = score_key, mode
        self._live: Any = None
        self._last = 0.0

    def _best(self, trials: list[Trial]) -> tuple[float, Trial] | None:
        scored = [
            (float(t.last_result[self.score_key]), t)
            for t in trials
            if t.last_result and isinstance(t.last_result.get(self.score_key), int | float)
        ]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda st: st[0])

    def _render(self, trials: list[Trial]) -> Any:
        from rich.table import Table

        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        table = Table(title=f"trials: {len(trials)}/{self.total} started", expand=False)
        best_of = self.score_key.removeprefix("best/")
        for col in ("running", "finished", "errored", "pending", f"best {best_of}", "trial"):
            table.add_column(col)
        best = self._best(trials)
        table.add_row(
            str(counts.get("RUNNING", 0)),
            str(counts.get("TERMINATED", 0)),
            str(counts.get("ERROR", 0)),
            str(counts.get("PENDING", 0)),
            f"{best[0]:.4f}" if best else "-",
            best[1].trial_id if best else "-",
        )
        return table

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if not self.console.is_terminal or time.monotonic() - self._last < 0.5:
            return
        from rich.live import Live

        if self._live is None:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(self._render(trials), refresh=True)
        self._last = time.monotonic()

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        if not self.console.is_terminal:
            done = sum(t.status in ("TERMINATED", "ERROR") for t in trials) + 1
            last = trial.last_result or {}
            score = last.get(self.score_key)
            shown = f"{score:.4f}" if isinstance(score, int | float) else "-"
            self.console.print(
                f"[{done}/{self.total}] {trial.trial_id} done after {last.get('epoch', '?')} "
                f"epochs: {self.score_key} {shown}",
                highlight=False,
            )

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.console.print(
            f"[red]{trial.trial_id} failed[/red] (see its error.txt in the Tune experiment folder)"
        )

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        if self._live is not None:
            self._live.update(self._render(trials), refresh=True)
            self._live.stop()
