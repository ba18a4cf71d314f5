"""A small study end to end through a real local Ray, Optuna, and a real `mlflow server` process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests._loopback import S3Store, spawn, stop, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_TRIALS = 4
EPOCHS = 3
FAST = [
    "--set",
    f"search.num_samples={N_TRIALS}",
    "--set",
    f"train.epochs={EPOCHS}",
    "--set",
    "train.max_steps_per_epoch=4",
    "--set",
    "dataset.image_size=8",
    "--set",
    "search.scheduler.name=fifo",
    "--set",
    "search.n_startup_trials=2",
    "--set",
    "train.schedule.warmup_epochs=0",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    args = [
        str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'db.sqlite'}",
        "--artifacts-destination", (folder / "artifacts").as_uri(),
    ]  # fmt: skip
    proc = spawn(args, folder / "server.log", dict(os.environ))
    try:
        wait_for_port(port, proc, folder / "server.log", "mlflow server")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def _normstudy(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "normstudy", *args],
        capture_output=True,
        text=True,
        timeout=900,
        **kw,
    )  # type: ignore[call-overload]


def _rows(home: Path, study: str) -> list[dict]:
    from normstudy.results import read_results

    return read_results(home / study / "results").to_pylist()


# ASHA on the validation loss: at this size every trial's accuracy is at chance, while its loss
# tells trials apart, so the scheduler stops some. One trial at a time keeps the order (and so
# which trials ASHA stops) the same in every run.
ASHA_TRIALS = 6
ASHA = [
    *FAST,
    "--set", f"search.num_samples={ASHA_TRIALS}", "--set", "search.max_concurrent=1",
    "--set", "search.scheduler.name=asha", "--set", "search.scheduler.grace_period=1",
    "--set", "search.metric=val/loss", "--set", "search.mode=min",
]  # fmt: skip
SCORE = "best/val/loss"


@dataclass
class Study:
    home: Path
    rows: list[dict[str, Any]]
    tracking: str


@pytest.fixture(scope="module")
def asha_study(
    tmp_path_factory: pytest.TempPathFactory, quickstart_path: Path, mlflow_server: str
) -> Study:
    home = tmp_path_factory.mktemp("asha") / "home"
    proc = _normstudy(
        "run", str(quickstart_path), "--home", str(home), "--tracking-uri", mlflow_server, *ASHA
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The output ends with where its quick figures are.
    figures = home / "quickstart" / "reports" / "figures"
    assert proc.stdout.strip().splitlines()[-1] == f"figures: {figures}"
    assert sorted(p.name for p in figures.iterdir()) == ["curves.png", "params.png"]
    return Study(home, _rows(home, "quickstart"), mlflow_server)


def _by_trial(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: r["epoch"]):
        out.setdefault(row["trial_id"], []).append(row)
    return out


def test_parquet_of_an_asha_study(asha_study: Study) -> None:
    rows = asha_study.rows
    keys = [(r["trial_id"], r["epoch"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate (trial, epoch) rows"
    trials = _by_trial(rows)
    assert len(trials) == ASHA_TRIALS
    status = {t: r[0]["status"] for t, r in trials.items()}
    assert set(status.values()) == {"completed", "stopped"}, "ASHA stopped no trial"
    for trial_id, epochs in trials.items():
        done = len(epochs) == EPOCHS
        assert done == (status[trial_id] == "completed")
        assert [r["epoch"] for r in epochs] == list(range(1, len(epochs) + 1))
    assert all(isinstance(r["config.train.lr"], float) for r in rows)
    assert all(r["optuna_trial"] is not None and r["mlflow_run_id"] for r in rows)
    numbers = {t: r[0]["optuna_trial"] for t, r in trials.items()}
    assert sorted(numbers.values()) == list(range(ASHA_TRIALS))


def test_optuna_storage_has_the_states_and_values_of_the_parquet(asha_study: Study) -> None:
    """What Optuna's own tools (optuna-dashboard, plots) read: PRUNED for ASHA-stopped trials,
    every epoch's metric as its intermediate value, named objectives, the links."""
    import optuna

    storage = f"sqlite:///{asha_study.home / 'quickstart' / 'optuna.db'}"
    study = optuna.load_study(study_name="quickstart", storage=storage)
    assert study.metric_names == ["val/loss"]
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    trials = _by_trial(asha_study.rows)
    assert len(study.trials) == len(trials)
    state_of = {"completed": "COMPLETE", "stopped": "PRUNED"}
    for ot in study.trials:
        epochs = trials[ot.user_attrs["normstudy.tune_trial_id"]]
        assert ot.number == epochs[0]["optuna_trial"]
        assert ot.user_attrs["normstudy.mlflow_run_id"] == epochs[0]["mlflow_run_id"]
        assert ot.state.name == state_of[epochs[0]["status"]]
        assert ot.intermediate_values == pytest.approx({r["epoch"]: r["val/loss"] for r in epochs})
        last = epochs[-1]
        # COMPLETE: the best over its epochs; PRUNED: Optuna's rule, the last intermediate value
        expected = last[SCORE] if ot.state.name == "COMPLETE" else last["val/loss"]
        assert ot.value == pytest.approx(expected)


def test_mlflow_runs_of_an_asha_study(asha_study: Study) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(asha_study.tracking)
    exp = client.get_experiment_by_name("quickstart")
    assert exp is not None
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags["mlflow.sharedViewState.normstudy"])
    assert view["orderByKey"] == f"metrics.`{SCORE}`" and view["orderByAsc"] is True
    assert "params.`searched.lr`" in view["selectedColumns"]
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # served, not a local path
    (parent,) = client.search_runs([exp.experiment_id], "tags.`normstudy.role` = 'study'")
    children = client.search_runs(
        [exp.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=[f"metrics.`{SCORE}` ASC"],
    )
    trials = _by_trial(asha_study.rows)
    assert len(children) == len(trials)
    for child in children:
        epochs = trials[child.data.tags["normstudy.trial_id"]]
        first, last = epochs[0], epochs[-1]
        assert child.info.run_id == first["mlflow_run_id"]
        assert child.info.run_name.startswith(f"t{first['optuna_trial']:03d} gamma_init=")
        assert child.data.tags["normstudy.optuna_trial"] == str(first["optuna_trial"])
        assert child.data.tags["normstudy.status"] == first["status"]
        assert child.info.status == "FINISHED"  # Tune's TERMINATED, stopped or not
        params = child.data.params
        assert float(params["searched.lr"]) == pytest.approx(first["config.train.lr"])
        assert params["train.lr"] and "plugins.gamma_init.value" in params
        assert "variant" not in params and "None" not in params.values()  # nulls left out
        history = client.get_metric_history(child.info.run_id, SCORE)
        assert [(m.step, m.value) for m in history] == [(last["epoch"], pytest.approx(last[SCORE]))]
        for key in ("val/loss", "running_best/val/loss"):
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, key))
            assert steps == [r["epoch"] for r in epochs], key
        if first["status"] == "completed":
            files = {f.path for f in client.list_artifacts(child.info.run_id)}
            assert {"gamma_sq_per_layer.json", "error_coverage.csv"} <= files

    # `best` reads Parquet; its order equals MLflow's order by the same summary metric.
    best = _normstudy(
        "best", "quickstart", "--home", str(asha_study.home), "--top", str(ASHA_TRIALS),
        "--format", "json",
    )  # fmt: skip
    assert best.returncode == 0, best.stderr
    ranked = json.loads(best.stdout)
    assert [r["score"] for r in ranked] == pytest.approx([c.data.metrics[SCORE] for c in children])
    assert parent.data.tags["best.trial_id"] == ranked[0]["trial_id"]
    assert parent.info.status == "FINISHED"
    metrics = parent.data.metrics
    assert metrics[SCORE] == pytest.approx(ranked[0]["score"])
    assert metrics["trials"] == ASHA_TRIALS
    statuses = [e[0]["status"] for e in trials.values()]
    assert metrics["trials/stopped"] == statuses.count("stopped") > 0
    best_lr = ranked[0]["config"]["train.lr"]
    assert float(parent.data.params["searched.lr"]) == pytest.approx(best_lr)

    report = _normstudy(
        "report", "quickstart", "--home", str(asha_study.home), "--format", "csv",
        "--out", str(asha_study.home.parent / "rep"),
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert list((asha_study.home.parent / "rep").glob("*.csv"))


def test_mlflow_ui_opens_the_trials_sorted_by_the_score(asha_study: Study, tmp_path: Path) -> None:
    """A headless Chromium renders the link `normstudy ui` prints: the model-training runs
    page, one row per trial named by what was searched, the score and searched columns."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no headless browser: apt-get install chromium")
    from mlflow import MlflowClient

    from normstudy.tracking import view_link

    exp = MlflowClient(asha_study.tracking).get_experiment_by_name("quickstart")
    assert exp is not None
    url = view_link(asha_study.tracking, exp.experiment_id)
    args = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--window-size=1600,900", "--virtual-time-budget=20000",
    ]  # fmt: skip
    shot = tmp_path / "runs.png"
    dom = subprocess.run(
        [*args, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True
    ).stdout
    subprocess.run([*args, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    assert shot.stat().st_size > 10_000
    assert "Evaluation runs" not in dom  # the model-training pages, not the GenAI ones
    for row in (r for r in asha_study.rows if r["epoch"] == 1):
        assert f"t{row['optuna_trial']:03d} gamma_init=" in dom
    for column in (SCORE, "searched.lr", "searched.gamma_init"):
        assert column in dom, column


def test_interrupted_study_resumes_without_duplicates(tmp_path: Path, quickstart: Path) -> None:
    home = tmp_path / "home"
    args = [
        sys.executable,
        "-m",
        "normstudy",
        "run",
        str(quickstart),
        "--home",
        str(home),
        *FAST,
        "--set",
        "search.max_concurrent=1",
        "--set",  # epochs long enough that the SIGINT meets the second trial running
        "train.max_steps_per_epoch=40",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results = home / "quickstart" / "results"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(results.glob("*.parquet"))) >= 2:  # one trial done, the next one started
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the study ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted" in output and "--resume" in output
    partial = {r["trial_id"] for r in _rows(home, "quickstart")}
    assert 1 <= len(partial) < N_TRIALS + 1
    running = {r["trial_id"] for r in _rows(home, "quickstart") if r["status"] == "running"}
    assert running, "the interrupted trial should wait to be resumed"

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    (exp_id,) = [e.experiment_id for e in client.search_experiments() if e.name == "quickstart"]
    runs = client.search_runs([exp_id])
    status_of = {r.data.tags.get("normstudy.trial_id", "study"): r.info.status for r in runs}
    assert status_of["study"] == "KILLED"
    assert {status_of[t] for t in running} == {"KILLED"}

    again = _normstudy(
        "run",
        str(quickstart),
        "--home",
        str(home),
        "--resume",
        *FAST,
        "--set",
        "search.max_concurrent=1",
        "--set",
        "train.max_steps_per_epoch=40",
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    rows = _rows(home, "quickstart")
    assert len({r["trial_id"] for r in rows}) == N_TRIALS
    keys = [(r["trial_id"], r["epoch"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate (trial, epoch) rows after resume"
    assert sorted(keys) == sorted({(t, e) for t, _ in keys for e in range(1, EPOCHS + 1)})
    # One Optuna trial per Tune trial: the interrupted one was resumed, not suggested again.
    import optuna

    trials = optuna.load_study(
        study_name="quickstart", storage=f"sqlite:///{home / 'quickstart' / 'optuna.db'}"
    ).trials
    assert len(trials) == N_TRIALS
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    runs = client.search_runs([exp_id])
    assert len(runs) == N_TRIALS + 1
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_resources_beyond_the_machine_fail_fast(tmp_path: Path, quickstart: Path) -> None:
    proc = _normstudy(
        "run", str(quickstart), "--home", str(tmp_path), *FAST, "--set", "resources.cpus=64"
    )
    assert proc.returncode == 2 and "resources.cpus" in proc.stderr
    assert not (tmp_path / "quickstart").exists()


def test_resume_refuses_a_changed_description(tmp_path: Path, quickstart: Path) -> None:
    home = tmp_path / "home"
    first = _normstudy(
        "run",
        str(quickstart),
        "--home",
        str(home),
        *FAST,
        "--set",
        "search.num_samples=1",
        "--set",
        "train.epochs=1",
    )
    assert first.returncode == 0, first.stderr[-3000:]
    again = _normstudy("run", str(quickstart), "--home", str(home), *FAST)
    assert again.returncode == 2 and "--resume" in again.stderr
    changed = _normstudy("run", str(quickstart), "--home", str(home), "--resume", *FAST)
    assert changed.returncode == 2 and "changed" in changed.stderr


def _serve_ui(home: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "normstudy", "ui", "--home", str(home), "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def test_ui_serves_the_runs_of_a_local_study(tmp_path: Path, quickstart: Path) -> None:
    import json
    import urllib.error
    import urllib.request

    home = tmp_path / "home"
    done = _normstudy(
        "run",
        str(quickstart),
        "--home",
        str(home),
        *FAST,
        "--set",
        "search.num_samples=2",
        "--set",
        "train.epochs=1",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    proc, url = _serve_ui(home, "--allowed-hosts", "studies.lab.example:*")
    try:
        deadline = time.monotonic() + 120
        body = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=quickstart",
                    timeout=5,
                ) as response:
                    body = json.load(response)
                break
            except OSError:
                time.sleep(1)
        assert body is not None, "the MLflow UI did not answer"
        exp_id = body["experiment"]["experiment_id"]
        request = urllib.request.Request(
            f"{url}/api/2.0/mlflow/runs/search",
            method="POST",
            data=json.dumps({"experiment_ids": [exp_id]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.load(response)["runs"]
        assert len(runs) == 3  # the study's parent run and one child per trial
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
        # A name given to --allowed-hosts is served; another public name is refused.
        port = url.rsplit(":", 1)[1]
        named = urllib.request.Request(url, headers={"Host": f"studies.lab.example:{port}"})
        with urllib.request.urlopen(named, timeout=10) as response:
            assert response.status == 200
        other = urllib.request.Request(url, headers={"Host": f"elsewhere.example:{port}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(other, timeout=10)
        assert refused.value.code == 403
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_dead_tracking_server_never_stalls_or_fails_the_study(
    tmp_path: Path, quickstart: Path
) -> None:
    """A server that refuses connections, and one that accepts and never answers."""
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_forever() -> None:
        silent.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept_forever, daemon=True).start()
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_TIMEOUT": "2", "NORMSTUDY_TRACKING_FLUSH_S": "5"}
    try:
        for name, uri in [
            ("refused", f"http://127.0.0.1:{_free_port()}"),
            ("silent", f"http://127.0.0.1:{silent.getsockname()[1]}"),
        ]:
            home = tmp_path / name
            proc = _normstudy(
                "run",
                str(quickstart),
                "--home",
                str(home),
                "--tracking-uri",
                uri,
                *FAST,
                "--set",
                "search.num_samples=2",
                env=env,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert "MLflow" in proc.stderr and "logging calls failed" in proc.stderr
            rows = _rows(home, "quickstart")
            assert len({r["trial_id"] for r in rows}) == 2 and len(rows) == 2 * EPOCHS
    finally:
        stop.set()
        silent.close()
        for conn in held:
            conn.close()


def test_a_trial_failing_before_its_first_epoch_is_a_result(
    tmp_path: Path, quickstart: Path
) -> None:
    """A corrupt image in the dataset fails the trial while it loads its data, in every
    attempt: the trial still has a row (status error, the error, the attempts) that `best` and
    `report` show."""
    import json

    from PIL import Image

    data = tmp_path / "images"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (60 * i, 100 if label == "a" else 0, 0)).save(
                data / label / f"{i}.png"
            )
    (data / "b" / "broken.png").write_bytes(b"not a png at all")
    home = tmp_path / "home"
    proc = _normstudy(
        "run", str(quickstart), "--home", str(home), *FAST,
        "--set", "search.num_samples=1", "--set", "dataset.name=imagefolder",
        "--set", f"dataset.path={data}", "--set", "failure.max_retries=1",
    )  # fmt: skip
    assert proc.returncode == 1 and "1 trials failed" in proc.stderr, proc.stderr[-3000:]
    (row,) = _rows(home, "quickstart")
    assert row["status"] == "error" and row["epoch"] == 0 and row["attempts"] == 2
    assert "broken.png" in row["error"] or "UnidentifiedImageError" in row["error"]
    best = _normstudy("best", "quickstart", "--home", str(home), "--format", "json")
    assert best.returncode == 0, best.stderr
    (record,) = json.loads(best.stdout)
    assert record["status"] == "error" and record["error"] == row["error"]
    assert record["score"] is None and record["attempts"] == 2
    report = _normstudy(
        "report", "quickstart", "--home", str(home), "--format", "csv",
        "--out", str(tmp_path / "rep"),
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    trials_csv = next((tmp_path / "rep").glob("*trials*.csv")).read_text()
    assert "error" in trials_csv and row["trial_id"] in trials_csv


def test_planted_secrets_show_up_nowhere(
    tmp_path: Path, quickstart: Path, mlflow_server: str, s3_env: S3Store
) -> None:
    """An AWS secret key in the driver's environment and a password in the tracking URI: the
    study works, and neither is in its output, the study's files (on S3), MLflow's params and
    tags, or any file Ray wrote (Tune would copy AWS keys into trials' runtime_env, which Ray
    logs)."""
    import tempfile
    import uuid

    from mlflow import MlflowClient

    from normstudy.storage import as_location

    aws_secret, password = f"aws-{uuid.uuid4().hex}", f"pw-{uuid.uuid4().hex}"
    uri = mlflow_server.replace("http://", f"http://alice:{password}@")
    home = f"s3://{s3_env.bucket}/secrets/{uuid.uuid4().hex}"
    ray_tmp = tempfile.mkdtemp(prefix="nsr", dir="/tmp")  # Ray's sockets need a short path
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": aws_secret, "RAY_TMPDIR": ray_tmp}
    env["NORMSTUDY_CACHE"] = str(tmp_path / "cache")
    try:
        proc = _normstudy(
            "run", str(quickstart), "--home", home, "--tracking-uri", uri, *FAST,
            "--set", "search.num_samples=2", "--set", "name=secrets", env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert len({r["trial_id"] for r in _rows_at(home, "secrets")}) == 2
        for secret in (aws_secret, password):
            assert secret not in proc.stdout + proc.stderr
            for path in [*Path(ray_tmp).rglob("*"), *(tmp_path / "cache").rglob("*")]:
                if path.is_file() and not path.is_symlink():
                    assert secret.encode() not in path.read_bytes(), f"{secret[:3]} in {path}"
            _assert_not_in_study_files(as_location(home) / "secrets", secret)
        client = MlflowClient(mlflow_server)
        exp = client.get_experiment_by_name("secrets")
        assert exp is not None
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 3
        text = json.dumps([[r.data.params, r.data.tags] for r in runs])
        assert password not in text and aws_secret not in text
    finally:
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)


def _rows_at(home: str, study: str) -> list[dict]:
    from normstudy.results import read_results
    from normstudy.storage import as_location

    return read_results(as_location(home) / study / "results").to_pylist()


def _assert_not_in_study_files(folder: object, secret: str) -> None:
    import pyarrow.fs as pafs

    from normstudy.storage import Location

    assert isinstance(folder, Location)
    infos = folder.fs.get_file_info(pafs.FileSelector(folder.fs_path, recursive=True))
    files = [i for i in infos if i.type == pafs.FileType.File]
    assert files
    for info in files:
        with folder.fs.open_input_stream(info.path) as stream:
            assert secret.encode() not in stream.read(), f"secret in {info.path}"


def test_an_optuna_trial_lost_with_the_driver_is_requeued_not_resuggested(
    tmp_path: Path, quickstart: Path
) -> None:
    """A driver killed hard can leave an Optuna trial that Tune's saved state never recorded.
    On --resume it is told FAIL and its configuration runs again: the study still ends with
    exactly N trials, one of them with the lost trial's parameters."""
    import optuna

    from normstudy.search._space import define_by_run
    from normstudy.spec import load_spec

    home, n = tmp_path / "home", 3
    args = [
        "run", str(quickstart), "--home", str(home), *FAST,
        "--set", f"search.num_samples={n}", "--set", "search.max_concurrent=1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "normstudy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        results = home / "quickstart" / "results"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(results.glob("*.parquet"))) >= 1:
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    # What a killed driver leaves: a RUNNING Optuna trial that Tune never heard of.
    spec = load_spec(quickstart)
    storage = f"sqlite:///{home / 'quickstart' / 'optuna.db'}"
    study = optuna.load_study(study_name="quickstart", storage=storage)
    lost = {"plugins.gamma_init.value": 0.5, "plugins.lr_divisor.gamma": 7.0, "train.lr": 0.01}
    study.enqueue_trial(lost)
    orphan = study.ask()
    space = {k: d.model_dump(mode="json") for k, d in spec.search.space.items()}
    define_by_run(orphan, space, spec.seed_list())
    before = len(study.trials)

    again = _normstudy(*args, "--resume")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "were lost with the last driver" in again.stderr
    trials = optuna.load_study(study_name="quickstart", storage=storage).trials
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == n
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL
    assert len(trials) == n + 1 and before <= n + 1, "a lost trial's slot got a new suggestion"
    rerun = [t for t in trials if t.user_attrs.get("normstudy.requeued_from") == orphan.number]
    assert len(rerun) == 1 and rerun[0].state == optuna.trial.TrialState.COMPLETE
    assert rerun[0].params == pytest.approx(lost)
    rows = _rows(home, "quickstart")
    assert len({r["trial_id"] for r in rows}) == n
    assert all(r["status"] == "completed" for r in rows), [
        (r["trial_id"], r["epoch"], r["status"], r["error"]) for r in rows
    ]
    assert any(r["config.train.lr"] == pytest.approx(0.01) for r in rows)
