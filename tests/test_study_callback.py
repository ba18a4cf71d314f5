"""The driver callback delivers each epoch once to MLflow, however often Tune delivers it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from normstudy.results import ResultsSink, read_results
from normstudy.search._callbacks import StudyCallback
from normstudy.spec import load_spec
from normstudy.storage import as_location


class RecordingTracker:
    def __init__(self) -> None:
        self.points: list[tuple[str, int]] = []
        self.tags: list[tuple[str, dict[str, str]]] = []

    def trial_result(self, trial_id: str, metrics: dict[str, float], step: int) -> None:
        self.points.append((trial_id, step))

    def trial_tags(self, trial_id: str, tags: dict[str, str]) -> None:
        self.tags.append((trial_id, tags))

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def _callback(quickstart: Path, results: Path, tracker: RecordingTracker) -> StudyCallback:
    spec = load_spec(quickstart)
    return StudyCallback(
        study=spec.name,
        base=spec.trial_base(),
        epochs=4,
        sink=ResultsSink(results),
        tracker=tracker,  # type: ignore[arg-type]
        meta={},
        score_keys=["best/val/acc"],
        artifacts_dir=as_location(results.parent / "artifacts"),
        variants={},
    )


def _result(epoch: int, node: str) -> dict[str, Any]:
    return {"epoch": epoch, "val/acc": 0.1 * epoch, "best/val/acc": 0.1 * epoch, "node_id": node}


def test_a_redone_epoch_is_logged_once_and_its_row_replaced(
    quickstart: Path, tmp_path: Path
) -> None:
    trial = SimpleNamespace(trial_id="t1", config={})
    tracker = RecordingTracker()
    callback = _callback(quickstart, tmp_path / "results", tracker)
    for epoch in (1, 2, 3):
        callback.on_trial_result(0, [], trial, _result(epoch, "node-a"))  # type: ignore[arg-type]
    # the node is lost; Tune restores the trial from its epoch-2 checkpoint on another node
    for epoch in (3, 4):
        callback.on_trial_result(0, [], trial, _result(epoch, "node-b"))  # type: ignore[arg-type]
    assert tracker.points == [("t1", 1), ("t1", 2), ("t1", 3), ("t1", 4)]
    assert tracker.tags == [
        ("t1", {"normstudy.node_id": "node-a"}),
        ("t1", {"normstudy.node_id": "node-b"}),
    ]
    rows = read_results(tmp_path / "results").to_pylist()
    assert [(r["epoch"], r["node"]) for r in rows] == [
        (1, "node-a"), (2, "node-a"), (3, "node-b"), (4, "node-b"),
    ]  # fmt: skip

    # A new driver (--resume) knows what was logged from the results.
    again = RecordingTracker()
    resumed = _callback(quickstart, tmp_path / "results", again)
    resumed.on_trial_result(0, [], trial, _result(4, "node-b"))  # type: ignore[arg-type]
    assert again.points == []


class LinkingTracker(RecordingTracker):
    """Records what the callback tells MLflow; its runs exist from the first epoch on."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[tuple[str, dict[str, Any], dict[str, str], str | None]] = []
        self.metrics: list[dict[str, float]] = []
        self.ended: list[tuple[str, dict[str, float], str, int, dict[str, str]]] = []

    def run_id(self, trial_id: str) -> str | None:
        return f"run-{trial_id}" if self.metrics else None

    def trial_started(self, trial_id: str, params: dict, tags: dict, name: str | None) -> None:
        self.started.append((trial_id, params, tags, name))

    def trial_result(self, trial_id: str, metrics: dict[str, float], step: int) -> None:
        super().trial_result(trial_id, metrics, step)
        self.metrics.append(metrics)

    def trial_ended(
        self, trial_id: str, summary: dict, status: str, *, step: int, tags: dict
    ) -> None:
        self.ended.append((trial_id, summary, status, step, tags))


class FakeLinks:
    def __init__(self) -> None:
        self.linked: list[tuple[str, str]] = []

    def number(self, tune_trial_id: str) -> int | None:
        return 7

    def link_run(self, tune_trial_id: str, run_id: str) -> None:
        self.linked.append((tune_trial_id, run_id))


def test_a_stopped_trial_in_mlflow_optuna_and_parquet(quickstart: Path, tmp_path: Path) -> None:
    config = {"train": {"lr": 0.0684}, "plugins": {"gamma_init": {"value": 0.2134}}}
    trial = SimpleNamespace(trial_id="t1", config=config, num_failures=0, last_result=None)
    tracker, links = LinkingTracker(), FakeLinks()
    callback = _callback(quickstart, tmp_path / "results", tracker)
    callback.links = links  # type: ignore[assignment]
    callback.on_trial_start(0, [], trial)  # type: ignore[arg-type]
    for epoch in (1, 2):
        callback.on_trial_result(0, [], trial, _result(epoch, "n"))  # type: ignore[arg-type]
    trial.last_result = _result(2, "n")
    callback.on_trial_complete(0, [], trial)  # type: ignore[arg-type]  # epochs=4: stopped

    ((_, params, tags, name),) = tracker.started
    assert name == "t007 lr=0.0684 gamma_init=0.213"
    assert params["searched.lr"] == 0.0684 and params["searched.gamma_init"] == 0.2134
    assert list(params)[:2] == ["searched.lr", "searched.gamma_init"]  # ahead of the config
    assert params["train.lr"] == 0.0684
    assert tags["normstudy.optuna_trial"] == "7" and tags["normstudy.status"] == "running"
    assert tags["normstudy.searched"] == "searched.lr,searched.gamma_init"
    assert all("best/val/acc" not in m and "running_best/val/acc" in m for m in tracker.metrics)
    assert tracker.ended == [
        ("t1", {"best/val/acc": 0.2}, "FINISHED", 2, {"normstudy.status": "stopped"})
    ]
    assert links.linked == [("t1", "run-t1")]
    rows = read_results(tmp_path / "results").to_pylist()
    assert {(r["status"], r["optuna_trial"], r["mlflow_run_id"]) for r in rows} == {
        ("stopped", 7, "run-t1")
    }
