"""A driver killed hard (SIGKILL), then `--resume`: one consistent study in all four stores, no
Ray process left behind; `normstudy doctor` finds and repairs damaged results."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_study_integration import EPOCHS, FAST, _normstudy, _rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 3


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "normstudy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_files(results: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(results.glob("*.parquet"))) >= count:
            return
        time.sleep(0.3)
    raise AssertionError(f"the study ended or hung before {count} trials had results")


def test_a_killed_driver_resumes_into_one_consistent_study(
    tmp_path: Path, quickstart: Path
) -> None:
    import optuna
    import psutil
    from mlflow import MlflowClient
    from ray.tune import ExperimentAnalysis

    from normstudy.search._reconcile import LOST_ERROR, REQUEUED_FROM

    home = tmp_path / "home"
    args = [
        "run", str(quickstart), "--home", str(home), *FAST,
        "--set", f"search.num_samples={N}", "--set", "search.max_concurrent=1",
    ]  # fmt: skip
    proc = _start(args)
    try:
        _wait_for_files(home / "quickstart" / "results", 2, proc)
        ray_procs = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in ray_procs)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # Ray's daemons (the raylet's agents and workers too) and the watcher go with it.
        _, alive = psutil.wait_procs(ray_procs, timeout=30)
        assert not alive, [" ".join(p.cmdline())[:80] for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (home / "quickstart" / "driver.lease").exists()  # the dead driver's lease

    again = _normstudy(*args, "--resume")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "took over the lease" in again.stdout  # the dead driver's
    assert f"process {proc.pid} is gone" in again.stdout
    assert not (home / "quickstart" / "driver.lease").exists()  # released at the end

    # Parquet: N completed trials with every epoch once; a trial Tune never saved is an error.
    rows = _rows(home, "quickstart")
    status = {r["trial_id"]: r["status"] for r in rows}
    completed = sorted(t for t, s in status.items() if s == "completed")
    lost = sorted(t for t, s in status.items() if s != "completed")
    assert len(completed) == N
    assert all(status[t] == "error" for t in lost)
    assert all(r["error"] == LOST_ERROR for r in rows if r["trial_id"] in lost)
    keys = [(r["trial_id"], r["epoch"]) for r in rows if r["trial_id"] in completed]
    assert sorted(keys) == sorted((t, e) for t in completed for e in range(1, EPOCHS + 1))

    # Tune: the completed trials, all terminated.
    trials = ExperimentAnalysis(str(home / "quickstart" / "tune")).trials
    assert sorted(t.trial_id for t in trials) == completed
    assert {t.status for t in trials} == {"TERMINATED"}

    # Optuna: N complete; every failed one is a lost trial whose configuration ran again.
    storage = f"sqlite:///{home / 'quickstart' / 'optuna.db'}"
    otrials = optuna.load_study(study_name="quickstart", storage=storage).trials
    states = [t.state for t in otrials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == N
    failed = [t.number for t in otrials if t.state == optuna.trial.TrialState.FAIL]
    assert len(otrials) == N + len(failed) and len(failed) == len(lost)
    requeued = [t.user_attrs.get(REQUEUED_FROM) for t in otrials]
    assert all(n in requeued for n in failed)

    # MLflow: one child per trial of the results, ended as its trial ended; one parent.
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "quickstart"]
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("normstudy.role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("normstudy.role") == "study"]
    assert sorted(r.data.tags["normstudy.trial_id"] for r in children) == sorted(status)
    want = {"completed": "FINISHED", "error": "FAILED"}
    assert all(r.info.status == want[status[r.data.tags["normstudy.trial_id"]]] for r in children)
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best.run_id"] in {r.info.run_id for r in children}

    doctor = _normstudy("doctor", "quickstart", "--home", str(home))
    assert doctor.returncode == 0, doctor.stdout[-3000:]


def test_doctor_rebuilds_damaged_results_from_checkpoints(tmp_path: Path, quickstart: Path) -> None:
    home = tmp_path / "home"
    done = _normstudy(
        "run", str(quickstart), "--home", str(home), *FAST, "--set", "search.num_samples=2"
    )
    assert done.returncode == 0, done.stderr[-3000:]

    def best() -> list[dict]:
        shown = _normstudy("best", "quickstart", "--home", str(home), "--format", "json")
        key = ("trial_id", "score", "best_epoch", "status", "config", "test")
        return [{k: r[k] for k in key} for r in json.loads(shown.stdout)]

    before = best()
    results = home / "quickstart" / "results"
    (part,) = results.glob("part-*.parquet")  # the run compacted its finished trials
    part.write_bytes(part.read_bytes()[:300])  # truncated: both trials' rows are unreadable

    check = _normstudy("doctor", "quickstart", "--home", str(home))
    assert check.returncode == 1, check.stdout[-3000:]
    assert part.name in check.stdout and "repairable" in check.stdout
    assert len(part.read_bytes()) == 300  # a check writes nothing

    fixed = _normstudy("doctor", "quickstart", "--home", str(home), "--repair")
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    assert fixed.stdout.count("rebuilt") == 2
    assert best() == before
    assert (results / f"{part.name}.damaged").exists()  # the damaged bytes are kept

    # A trial file lost: found, and rebuilt from the checkpoint again.
    lost = sorted(results.glob("*.parquet"))[0]
    assert not lost.name.startswith("part-")
    lost.unlink()
    check = _normstudy("doctor", "quickstart", "--home", str(home))
    assert check.returncode == 1 and lost.stem in check.stdout, check.stdout[-3000:]
    assert _normstudy("doctor", "quickstart", "--home", str(home), "--repair").returncode == 0
    assert best() == before
    assert _normstudy("doctor", "quickstart", "--home", str(home)).returncode == 0
