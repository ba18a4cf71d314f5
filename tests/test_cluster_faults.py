"""The cluster path for real, on loopback: a two-node Ray cluster with token auth, an S3-compatible
store as the study home, an MLflow server with basic auth; `normstudy submit` through the Jobs API,
and the faults a cluster meets: a lost worker node, a stopped driver, an MLflow outage, a wrong
password."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests._loopback import (
    BIN,
    LoopbackCluster,
    MlflowServer,
    S3Store,
    mlflow_with_auth,
    stop,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.cluster]

N_TRIALS = 4
PASSWORD = "pw-" + secrets.token_hex(8)  # planted: must show up nowhere the study writes
TOKEN = secrets.token_hex(16)


def study_args(name: str, epochs: int = 3, steps: int = 4) -> list[str]:
    sets = {
        "name": name,
        "search.num_samples": N_TRIALS,
        "search.max_concurrent": 2,
        "search.scheduler.name": "fifo",
        "search.n_startup_trials": 2,
        "train.epochs": epochs,
        "train.max_steps_per_epoch": steps,
        "train.schedule.warmup_epochs": 0,
        "dataset.image_size": 8,
        "resources.cpus": 1,
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


@dataclass
class Env:
    s3: S3Store
    mlflow: MlflowServer
    cluster: LoopbackCluster
    client_env: dict[str, str]
    folder: Path

    def home(self, name: str) -> str:
        return f"s3://{self.s3.bucket}/homes/{name}"

    def normstudy(
        self, *args: str, timeout: float = 600, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "normstudy", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.client_env, **env},
        )

    def jobs(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(
            self.cluster.address, headers={"Authorization": f"Bearer {TOKEN}"}
        )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, s3: S3Store) -> Iterator[Env]:
    folder = tmp_path_factory.mktemp("cluster")
    mlflow = cluster = None
    saved = {k: os.environ.get(k) for k in s3.env}
    try:
        os.environ.update(s3.env)  # this process reads the home on S3 as the laptop does
        mlflow = mlflow_with_auth(folder, s3, PASSWORD)
        node_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "RAY_"))
        }
        node_env.update(
            {
                **s3.env,
                "PATH": f"{BIN}:{os.environ['PATH']}",
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": TOKEN,
                "RAY_USAGE_STATS_ENABLED": "0",
                # a lost node is noticed in seconds, not the default 30 s
                "RAY_health_check_initial_delay_ms": "0",
                "RAY_health_check_period_ms": "1000",
                "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3",
                # `ray job stop` gives the driver time to save its state (as cluster.yaml does)
                "RAY_JOB_STOP_WAIT_TIME_S": "60",
                "NORMSTUDY_CACHE": str(folder / "head-cache"),
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                "NORMSTUDY_TRACKING_RETRY_S": "2",
            }
        )
        cluster = LoopbackCluster(Path(tempfile.mkdtemp(prefix="nsr", dir="/tmp")), node_env)
        cluster.start()
        client_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
            **s3.env,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": TOKEN,
            "MLFLOW_TRACKING_URI": mlflow.uri,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": PASSWORD,
        }
        yield Env(s3, mlflow, cluster, client_env, folder)
    finally:
        if cluster is not None:
            cluster.stop()
        if mlflow is not None:
            stop(mlflow.proc)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def two_nodes(env: Env) -> Env:
    """Each test starts with the head and one live worker (an earlier test may have lost it)."""
    if not env.cluster.live_workers():
        env.cluster.add_worker()
    return env


def rows(home: str, study: str) -> list[dict[str, Any]]:
    from normstudy.results import read_results
    from normstudy.storage import as_location

    return read_results(as_location(home) / study / "results").to_pylist()


def assert_complete(table: list[dict[str, Any]], epochs: int) -> None:
    keys = [(r["trial_id"], r["epoch"]) for r in table]
    assert len(keys) == len(set(keys)), "duplicate (trial, epoch) rows"
    trials = {r["trial_id"] for r in table}
    assert len(trials) == N_TRIALS
    assert sorted(keys) == sorted((t, e) for t in trials for e in range(1, epochs + 1))
    assert all(r["status"] == "completed" for r in table)


def mlflow_children(env: Env, study: str, order: bool = False) -> list[Any]:
    from mlflow import MlflowClient

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = (
        "admin",
        PASSWORD,
    )
    try:
        client = MlflowClient(env.mlflow.uri)
        exp = client.get_experiment_by_name(study)
        assert exp is not None
        return list(
            client.search_runs(
                [exp.experiment_id],
                "tags.`normstudy.role` = 'trial'",
                order_by=["metrics.`best/val/acc` DESC"] if order else None,
            )
        )
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME")
        os.environ.pop("MLFLOW_TRACKING_PASSWORD")


def wait_job(env: Env, submission_id: str, timeout: float = 600) -> str:
    client = env.jobs()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(submission_id)
        if status.is_terminal():
            return str(status)
        time.sleep(1)
    raise AssertionError(f"job {submission_id} still {status} after {timeout}s")


def submitted_id(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("submitted "))
    return line.split()[1].rstrip(":")


def test_submit_runs_on_both_nodes_and_best_matches_mlflow(
    two_nodes: Env, quickstart_path: Path
) -> None:
    env, study, home = two_nodes, "cl-basic", two_nodes.home("basic")
    proc = env.normstudy(
        "submit", str(quickstart_path), "--address", env.cluster.address, "--home", home,
        *study_args(study), "--follow",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    table = rows(home, study)
    assert_complete(table, 3)
    nodes = {r["node"] for r in table}
    assert len(nodes) == 2, f"trials ran on {nodes}, not on both nodes"

    children = mlflow_children(env, study, order=True)
    assert len(children) == N_TRIALS
    assert {c.data.tags["normstudy.node_id"] for c in children} == nodes
    best = env.normstudy("best", study, "--home", home, "--top", "10", "--format", "json")
    assert best.returncode == 0, best.stderr
    ranked = json.loads(best.stdout)
    assert [r["trial_id"] for r in ranked] == [
        c.data.tags["normstudy.trial_id"] for c in children
    ] or [r["score"] for r in ranked] == pytest.approx(
        [c.data.metrics["best/val/acc"] for c in children]
    )
    status = env.normstudy("status", "--home", home, "--format", "json")
    assert status.returncode == 0, status.stderr
    (record,) = json.loads(status.stdout)
    assert record["study"] == study and record["job"] == "SUCCEEDED"
    assert record["done"] == N_TRIALS and record["best"] == pytest.approx(ranked[0]["score"])

    # The password went nowhere: not in params, tags, the Parquet, the job listing, Ray's files.
    for child in children:
        assert PASSWORD not in json.dumps([child.data.params, child.data.tags])
    assert PASSWORD not in json.dumps(table, default=str)
    listing = json.dumps([j.__dict__ for j in env.jobs().list_jobs()], default=str)
    assert PASSWORD not in listing
    for path in env.cluster.temp_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert PASSWORD.encode() not in path.read_bytes(), f"password in {path}"
    assert PASSWORD not in proc.stdout + proc.stderr


def test_wrong_mlflow_password_fails_at_submit(two_nodes: Env, quickstart_path: Path) -> None:
    env = two_nodes
    before = len(env.jobs().list_jobs())
    proc = env.normstudy(
        "submit", str(quickstart_path), "--address", env.cluster.address,
        "--home", env.home("wrong"), *study_args("cl-wrong"),
        MLFLOW_TRACKING_PASSWORD="not-the-password",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "refused the credentials" in proc.stderr and "MLFLOW_TRACKING_PASSWORD" in proc.stderr
    assert "not-the-password" not in proc.stdout + proc.stderr
    assert len(env.jobs().list_jobs()) == before, "a job was submitted anyway"


def wait_rows(home: str, study: str, ready: Any, timeout: float = 300) -> list[dict[str, Any]]:
    """Polls the study's Parquet on S3 until ``ready(rows)`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table = rows(home, study)
        if ready(table):
            return table
        time.sleep(0.3)
    raise AssertionError(f"the study's results never got ready: {len(table)} rows")


def one_point_per_epoch(env: Env, children: list[Any], epochs: int) -> None:
    from mlflow import MlflowClient

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = (
        "admin",
        PASSWORD,
    )
    try:
        client = MlflowClient(env.mlflow.uri)
        for child in children:
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/acc")]
            assert sorted(steps) == list(range(1, epochs + 1)), steps
            assert child.info.status == "FINISHED"
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME")
        os.environ.pop("MLFLOW_TRACKING_PASSWORD")


def test_lost_worker_node_trials_finish_from_checkpoints(
    two_nodes: Env, quickstart_path: Path
) -> None:
    env, study, home, epochs = two_nodes, "cl-nodeloss", two_nodes.home("nodeloss"), 8
    (worker,) = env.cluster.live_workers()
    lost_node = worker.node_id()
    submitted = env.normstudy(
        "submit", str(quickstart_path), "--address", env.cluster.address, "--home", home,
        *study_args(study, epochs=epochs, steps=10), "--set", "failure.max_retries=2",
    )  # fmt: skip
    job = submitted_id(submitted)

    def mid_trial_on_worker(table: list[dict[str, Any]]) -> bool:
        return any(r["node"] == lost_node and r["epoch"] < epochs - 2 for r in table)

    before = wait_rows(home, study, mid_trial_on_worker)
    victims = {r["trial_id"] for r in before if r["node"] == lost_node}
    env.cluster.kill_worker(worker)
    assert wait_job(env, job) == "SUCCEEDED"

    table = rows(home, study)
    assert_complete(table, epochs)  # exactly N trials, every epoch once
    nodes_of = {t: {r["node"] for r in table if r["trial_id"] == t} for t in victims}
    # A trial that was on the lost node kept its earlier epochs (from the lost node) and did the
    # rest elsewhere: it went on from its checkpoint rather than starting again.
    assert any(len(nodes) == 2 for nodes in nodes_of.values()), nodes_of
    children = mlflow_children(env, study)
    assert sorted(c.data.tags["normstudy.trial_id"] for c in children) == sorted(
        {r["trial_id"] for r in table}
    )
    one_point_per_epoch(env, children, epochs)


def test_stopped_driver_resumes_on_submit(two_nodes: Env, quickstart_path: Path) -> None:
    env, study, home, epochs = two_nodes, "cl-stop", two_nodes.home("stop"), 4
    args = [
        "submit", str(quickstart_path), "--address", env.cluster.address, "--home", home,
        *study_args(study, epochs=epochs, steps=10),
    ]  # fmt: skip
    job = submitted_id(env.normstudy(*args))

    def one_done_one_running(table: list[dict[str, Any]]) -> bool:
        status = {r["trial_id"]: r["status"] for r in table}
        return "completed" in status.values() and "running" in status.values()

    wait_rows(home, study, one_done_one_running)
    env.jobs().stop_job(job)
    assert wait_job(env, job) == "STOPPED"
    partial = {r["trial_id"] for r in rows(home, study)}
    assert len(partial) < N_TRIALS or any(r["status"] == "running" for r in rows(home, study))

    again = env.normstudy(*args, "--follow")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-3000:]
    assert "resumes" in again.stdout
    table = rows(home, study)
    assert_complete(table, epochs)
    assert partial <= {r["trial_id"] for r in table}

    import optuna

    from normstudy.storage import as_location

    db = env.folder / "stop-optuna.db"
    (as_location(home) / study / "optuna.db").download_to(db)
    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{db}").trials
    assert len(trials) == N_TRIALS, "a configuration was suggested again"
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    children = mlflow_children(env, study)
    assert len(children) == N_TRIALS, env.jobs().get_job_logs(job)[-6000:]
    one_point_per_epoch(env, children, epochs)


def test_mlflow_outage_is_backfilled(two_nodes: Env, quickstart_path: Path) -> None:
    env, study, home, epochs = two_nodes, "cl-outage", two_nodes.home("outage"), 16
    job = submitted_id(
        env.normstudy(
            "submit", str(quickstart_path), "--address", env.cluster.address, "--home", home,
            *study_args(study, epochs=epochs, steps=20),
        )
    )  # fmt: skip
    wait_rows(home, study, lambda table: len(table) >= 1)
    env.mlflow.kill()
    try:
        # the study goes on while the server is gone (a restart takes 20-40 s here: the
        # study must outlast it, see the assertion below)
        wait_rows(home, study, lambda table: len(table) >= 3, timeout=300)
    finally:
        env.mlflow.start()
    back = len(rows(home, study))
    assert wait_job(env, job) == "SUCCEEDED"
    assert_complete(rows(home, study), epochs)
    # what this test is about: the running study sends what waited once the server is back
    # (one that ends in an outage keeps it for --resume: test_tracking_outbox.py)
    assert back < N_TRIALS * epochs, "the study ended in the outage: make it longer"
    children = mlflow_children(env, study)
    assert len(children) == N_TRIALS, env.jobs().get_job_logs(job)[-3000:]
    one_point_per_epoch(env, children, epochs)


def test_a_local_run_never_attaches_to_a_cluster_on_the_machine(
    two_nodes: Env, quickstart_path: Path, tmp_path: Path
) -> None:
    """Without RAY_ADDRESS a study runs on a fresh local Ray instance, even where `ray start`
    recorded a cluster in the temp dir Ray looks in (it used to attach to it silently)."""
    env = two_nodes
    assert env.cluster.head is not None
    cluster_nodes = {env.cluster.head.node_id(), *(w.node_id() for w in env.cluster.live_workers())}
    local = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_TRACKING"))
    }
    local.update({"RAY_TMPDIR": str(env.cluster.temp_dir), "RAY_AUTH_MODE": "disabled"})
    home = tmp_path / "home"
    proc = subprocess.run(
        [
            sys.executable, "-m", "normstudy", "run", str(quickstart_path), "--home", str(home),
            *study_args("cl-local", epochs=1), "--set", "search.num_samples=1",
        ],
        capture_output=True, text=True, timeout=600, env=local,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = rows(str(home), "cl-local")
    assert row["node"] and row["node"] not in cluster_nodes
