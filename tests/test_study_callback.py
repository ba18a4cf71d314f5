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
