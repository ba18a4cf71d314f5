"""The durable MLflow outbox against a real ``mlflow server`` process, killed and restarted.

No Ray: the tracker is driven the way the study's Tune callbacks drive it. One server for the
module (its start is the main cost), on one port and one sqlite backend throughout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from normstudy.storage import as_location
from normstudy.tracking import OUTBOX_NAME, StudyTracker, sync_outbox

pytestmark = pytest.mark.integration

EPOCHS = 4
METRICS = ("val/acc", "train/loss")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """An ``mlflow server`` on a fixed port and sqlite file: started, SIGKILLed, restarted."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._start(f"sqlite:///{self.folder / 'db.sqlite'}", self.folder / "artifacts")

    def start_serving(self, home: Path) -> None:
        """Serves a study home as `normstudy ui` does."""
        self._start(f"sqlite:///{home / 'mlflow.db'}", home / "mlartifacts")

    def _start(self, store: str, artifacts: Path) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                store,
                "--artifacts-destination",
                artifacts.as_uri(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "server.log", "a"),  # noqa: SIM115
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1).read()
                return
            except OSError:
                time.sleep(0.3)
        self.stop(signal.SIGKILL)
        pytest.fail("mlflow server did not start: " + (self.folder / "server.log").read_text())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, sig)  # its own session: the server and its workers
            self.proc.wait(timeout=30)
            self.proc = None

    def ensure_started(self) -> None:
        if self.proc is None:
            self.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("mlflow"))
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("NORMSTUDY_TRACKING_RETRY_S", "0.5")


def _tracker(folder: Path, uri: str, study: str) -> StudyTracker:
    return StudyTracker(
        uri=uri,
        study=study,
        artifact_root=as_location(folder / "mlartifacts"),
        state_file=as_location(folder / study / "mlflow_runs.json"),
        tags={"normstudy.study": study},
    )


def _start(tracker: StudyTracker, trial: str) -> None:
    params = {"train.lr": 0.05, "model.name": "test_resnet", "plugins": {"a": [1, 2]}}
    tracker.trial_started(trial, params, {"normstudy.seed": "0"})


def _epochs(tracker: StudyTracker, trial: str, steps: range) -> None:
    for step in steps:
        tracker.trial_result(trial, {"val/acc": step / 10, "train/loss": 1 / step}, step=step)


def _end(tracker: StudyTracker, trial: str) -> None:
    tracker.trial_artifacts(trial, {"curve.csv": "k,err\n1,0.5\n"})
    tracker.trial_ended(trial, {"best/val/acc": 0.4}, "FINISHED")


def _study(tracker: StudyTracker, trials: list[str]) -> None:
    for trial in trials:
        _start(tracker, trial)
        _epochs(tracker, trial, range(1, EPOCHS + 1))
        _end(tracker, trial)
    tracker.study_ended({"trial_id": trials[-1], "score": 0.4, "metric": "val/acc"})


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _outbox_ops(folder: Path, study: str) -> list[dict[str, Any]]:
    file = folder / study / OUTBOX_NAME
    text = file.read_text() if file.exists() else ""
    return [json.loads(line) for line in text.splitlines()]


def _assert_logged(
    uri: str, folder: Path, study: str, trials: list[str], *, best: bool = True
) -> None:
    """Exactly one parent and one child per trial; one point per (metric, step); all else."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    assert exp is not None
    parents = client.search_runs([exp.experiment_id], "tags.`normstudy.role` = 'study'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    by_trial = {c.data.tags["normstudy.trial_id"]: c for c in children}
    assert len(children) == len(trials) and set(by_trial) == set(trials)
    for trial, child in by_trial.items():
        assert child.info.status == "FINISHED", trial
        assert child.data.params["train.lr"] == "0.05"
        assert json.loads(child.data.params["plugins"]) == {"a": [1, 2]}
        assert child.data.tags["normstudy.seed"] == "0"
        assert child.data.metrics["best/val/acc"] == pytest.approx(0.4)
        for key in METRICS:
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (trial, key, steps)
        assert [f.path for f in client.list_artifacts(child.info.run_id)] == ["curve.csv"]
    if best:  # the parent's best tag names a run that exists
        best_trial = parent.data.tags["best.trial_id"]
        assert parent.data.tags["best.run_id"] == by_trial[best_trial].info.run_id
    else:
        assert not any(k.startswith("best.") for k in parent.data.tags)
    assert not (folder / study / OUTBOX_NAME).exists()
    state = json.loads((folder / study / "mlflow_runs.json").read_text())
    assert state["parent"] == parent.info.run_id
    assert state["children"] == {t: c.info.run_id for t, c in by_trial.items()}


def test_server_down_from_the_start_then_resume_sends_all(server: Server, tmp_path: Path) -> None:
    server.stop()
    study, trials = "down_from_start", ["t_00000", "t_00001"]
    tracker = _tracker(tmp_path, server.uri, study)
    _study(tracker, trials)
    n_ops = 1 + len(trials) * (EPOCHS + 3) + 1
    _wait(lambda: len(_outbox_ops(tmp_path, study)) == n_ops, "the outbox file")
    ops = _outbox_ops(tmp_path, study)
    assert [o["op"] for o in ops[:3]] == ["start_study", "start_trial", "metrics"]
    assert [o["step"] for o in ops if o["op"] == "metrics"][:EPOCHS] == [1, 2, 3, 4]
    left = tracker.close(timeout_s=10)
    assert len(left) == n_ops and all("kept in" in line for line in left)
    assert len(_outbox_ops(tmp_path, study)) == n_ops  # stays for later

    server.start()
    resumed = _tracker(tmp_path, server.uri, study)  # `run --resume`: sends the old outbox
    _wait(lambda: not (tmp_path / study / OUTBOX_NAME).exists(), "the outbox to drain")
    resumed.study_ended({"trial_id": trials[-1], "score": 0.4, "metric": "val/acc"})
    assert resumed.close(timeout_s=30) == []
    _assert_logged(server.uri, tmp_path, study, trials)


def test_server_killed_mid_study_loses_and_duplicates_nothing(
    server: Server, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    server.ensure_started()
    study, trials = "killed_mid_study", ["t_00000", "t_00001"]
    tracker = _tracker(tmp_path, server.uri, study)
    for trial in trials:
        _start(tracker, trial)
        _epochs(tracker, trial, range(1, 2))
    client = MlflowClient(server.uri)

    def logged(step: int) -> bool:
        runs = json.loads((tmp_path / study / "mlflow_runs.json").read_text())["children"]
        last = runs.get(trials[-1]) and client.get_metric_history(runs[trials[-1]], "val/acc")
        return bool(last) and max(m.step for m in last) == step

    _wait(lambda: (tmp_path / study / "mlflow_runs.json").exists() and logged(1), "epoch 1")
    server.stop(signal.SIGKILL)
    for trial in trials:
        _epochs(tracker, trial, range(2, 4))
    _wait(lambda: len(_outbox_ops(tmp_path, study)) >= 2 * len(trials), "the outbox file")

    server.start()  # same port, same backend store
    _wait(lambda: not (tmp_path / study / OUTBOX_NAME).exists(), "delivery in the study")
    for trial in trials:
        _epochs(tracker, trial, range(4, EPOCHS + 1))
        _end(tracker, trial)
    tracker.study_ended({"trial_id": trials[0], "score": 0.4, "metric": "val/acc"})
    assert tracker.close(timeout_s=30) == []
    _assert_logged(server.uri, tmp_path, study, trials)


def test_replaying_a_delivered_outbox_duplicates_nothing(server: Server, tmp_path: Path) -> None:
    """A crash after sending but before the outbox file was updated (and the run-id map lost
    too): the next tracker of the study sends everything again."""
    server.ensure_started()
    study, trials = "replayed", ["t_00000", "t_00001"]
    dead = f"http://127.0.0.1:{_free_port()}"
    first = _tracker(tmp_path, dead, study)
    _study(first, trials)
    assert first.close(timeout_s=10)
    outbox = tmp_path / study / OUTBOX_NAME
    saved = outbox.read_text()

    state_file = as_location(tmp_path / study / "mlflow_runs.json")
    kw: dict[str, Any] = {"study": study, "artifact_root": as_location(tmp_path / "mlartifacts")}
    sent = sync_outbox(uri=server.uri, state_file=state_file, timeout_s=60, **kw)
    assert (sent.sent, sent.left, sent.problems, sent.unreachable) == (
        len(saved.splitlines()),
        0,
        [],
        None,
    )
    _assert_logged(server.uri, tmp_path, study, trials)

    outbox.write_text(saved)
    (tmp_path / study / "mlflow_runs.json").unlink()
    again = _tracker(tmp_path, server.uri, study)
    again.study_ended({"trial_id": trials[-1], "score": 0.4, "metric": "val/acc"})
    assert again.close(timeout_s=60) == []
    _assert_logged(server.uri, tmp_path, study, trials)


def test_sync_mlflow_command(server: Server, tmp_path: Path, quickstart: Path) -> None:
    import typer
    import yaml
    from typer.testing import CliRunner

    from normstudy import cli_tracking
    from normstudy.home import StudyPaths
    from normstudy.spec import load_spec

    server.ensure_started()
    study, trials = "synced", ["t_00000"]
    spec = load_spec(quickstart, [f"name={study}"])
    paths = StudyPaths(as_location(tmp_path), study)
    paths.spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    dead = f"http://127.0.0.1:{_free_port()}"
    tracker = _tracker(tmp_path, dead, study)
    _study(tracker, trials)
    n_ops = len(tracker.close(timeout_s=10))

    app = typer.Typer()
    app.callback()(lambda: None)  # a group, as in the real CLI
    cli_tracking.register(app)
    runner = CliRunner()
    args = ["sync-mlflow", study, "--home", str(tmp_path), "--tracking-uri"]
    down = runner.invoke(app, [*args, dead])
    assert down.exit_code == 1, down.output
    assert f"0 operations sent, {n_ops} remain" in down.output
    assert "does not answer" in down.output
    up = runner.invoke(app, [*args, server.uri])
    assert up.exit_code == 0, up.output
    assert f"{n_ops} operations sent, 0 remain" in up.output
    _assert_logged(server.uri, tmp_path, study, trials)
    assert runner.invoke(app, [*args, server.uri]).exit_code == 0
    missing = runner.invoke(app, ["sync-mlflow", "nope", "--home", str(tmp_path)])
    assert missing.exit_code == 2


def test_a_refused_operation_is_reported_and_the_rest_goes_through(
    server: Server, tmp_path: Path
) -> None:
    server.ensure_started()
    study, trials = "refused", ["t_00000"]
    tracker = _tracker(tmp_path, server.uri, study)
    tracker.trial_result("ghost", {"val/acc": 0.1}, step=1)  # a trial that never started
    tracker.trial_result("t_00000", {"val/acc": object()}, step=1)  # type: ignore[dict-item]
    _start(tracker, trials[0])
    _epochs(tracker, trials[0], range(1, EPOCHS + 1))
    _end(tracker, trials[0])
    tracker.study_ended({"trial_id": "ghost", "score": 0.9, "metric": "val/acc"})
    lines = tracker.close(timeout_s=30)
    assert len(lines) == 3, lines
    assert any(line.startswith("trial_result: TypeError") for line in lines)
    assert any(line.startswith("metrics of ghost epoch 1: UndeliverableError") for line in lines)
    assert any("best.* tags left out" in line for line in lines)
    _assert_logged(server.uri, tmp_path, study, trials, best=False)


def test_a_model_training_experiment(server: Server, tmp_path: Path) -> None:
    """The experiment's kind and view; run names; the summary once, at the last step; status
    tags; the study run's score, counts and best configuration; no null params."""
    from mlflow import MlflowClient

    server.ensure_started()
    study, trial = "windows", "t_00000"
    tracker = StudyTracker(
        uri=server.uri,
        study=study,
        artifact_root=as_location(tmp_path / "mlartifacts"),
        state_file=as_location(tmp_path / study / "mlflow_runs.json"),
        tags={"normstudy.study": study},
        experiment_tags={"mlflow.sharedViewState.normstudy": '{"orderByAsc": false}'},
    )
    params = {"searched.lr": 0.05, "train.lr": 0.05, "variant": None}
    tracker.trial_started(trial, params, {"normstudy.status": "running"}, name="t000 lr=0.05")
    _epochs(tracker, trial, range(1, 3))  # stopped after 2 of EPOCHS
    tags = {"normstudy.status": "stopped"}
    tracker.trial_ended(trial, {"best/val/acc": 0.2}, "FINISHED", step=2, tags=tags)
    counts = {"best/val/acc": 0.2, "trials": 1, "trials/stopped": 1}
    best = {"trial_id": trial, "score": 0.2, "metric": "best/val/acc"}
    tracker.study_ended(best, metrics=counts, params={"searched.lr": 0.05, "x": None})
    assert tracker.close(timeout_s=30) == []
    assert tracker.run_id(trial)

    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name(study)
    assert exp is not None
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.tags["mlflow.sharedViewState.normstudy"] == '{"orderByAsc": false}'
    (parent,) = client.search_runs([exp.experiment_id], "tags.`normstudy.role` = 'study'")
    assert parent.data.metrics == {"best/val/acc": 0.2, "trials": 1.0, "trials/stopped": 1.0}
    assert parent.data.params == {"searched.lr": "0.05"}
    child = client.get_run(str(tracker.run_id(trial)))
    assert child.info.run_name == "t000 lr=0.05" and child.info.status == "FINISHED"
    assert child.data.params == {"searched.lr": "0.05", "train.lr": "0.05"}
    assert child.data.tags["normstudy.status"] == "stopped"
    history = client.get_metric_history(child.info.run_id, "best/val/acc")
    assert [(m.step, m.value) for m in history] == [(2, 0.2)]  # no point at step 0


def test_a_moved_local_home_serves_its_artifacts(tmp_path: Path) -> None:
    """A local store records proxied artifact locations, no absolute path: the home, moved,
    served by `mlflow server` as `normstudy ui` starts it, still serves every file."""
    from mlflow import MlflowClient

    home, study = tmp_path / "home", "moved"
    uri = f"sqlite:///{home / 'mlflow.db'}"
    tracker = _tracker(home, uri, study)
    _study(tracker, ["t_00000"])
    assert tracker.close(timeout_s=30) == []
    exp = MlflowClient(uri).get_experiment_by_name(study)
    assert exp is not None and exp.artifact_location == f"mlflow-artifacts:/{study}"
    assert str(home) not in json.dumps([r.info.artifact_uri for r in _runs(uri, exp)])

    moved = tmp_path / "elsewhere"
    home.rename(moved)
    srv = Server(tmp_path)
    srv.start_serving(moved)
    try:
        client = MlflowClient(srv.uri)
        exp = client.get_experiment_by_name(study)
        assert exp is not None
        for run in client.search_runs([exp.experiment_id]):
            files = [f.path for f in client.list_artifacts(run.info.run_id)]
            if run.data.tags.get("normstudy.role") == "trial":
                assert files == ["curve.csv"]
                local = client.download_artifacts(run.info.run_id, "curve.csv", str(tmp_path))
                assert Path(local).read_text() == "k,err\n1,0.5\n"
            else:
                assert files == ["best_config.json"]
    finally:
        srv.stop()


def _runs(uri: str, exp: Any) -> list[Any]:
    from mlflow import MlflowClient

    return list(MlflowClient(uri).search_runs([exp.experiment_id]))
