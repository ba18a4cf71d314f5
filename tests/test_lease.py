"""One driver per study: the lease in the study folder, on a local folder and on a real S3
server, with real processes holding, dying and racing for it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from normstudy.storage import (
    LEASE_FILE,
    LeaseHeldError,
    Location,
    StudyLease,
    as_location,
    read_lease,
)

HOLD = """
import sys, time
from normstudy.storage import StudyLease, as_location
lease = StudyLease(as_location(sys.argv[1]))
lease.acquire()
print("held", flush=True)
time.sleep(600)
"""

RACE = """
import os, sys, time
from normstudy.storage import LeaseHeldError, StudyLease, as_location
while not os.path.exists(sys.argv[2]):
    time.sleep(0.005)
lease = StudyLease(as_location(sys.argv[1]))
try:
    lease.acquire()
except LeaseHeldError:
    print("refused", flush=True)
    sys.exit(0)
print("won", flush=True)
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
lease.release()
"""


@pytest.fixture(autouse=True)
def _quick_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMSTUDY_LEASE_HEARTBEAT_S", "0.2")
    monkeypatch.setenv("NORMSTUDY_LEASE_SETTLE_S", "0.2")
    monkeypatch.delenv("NORMSTUDY_LEASE_STALE_S", raising=False)


@pytest.fixture(params=["local", "s3"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "local":
        return as_location(tmp_path / "home") / "study"
    s3 = request.getfixturevalue("s3_env")
    return as_location(f"s3://{s3.bucket}/lease-test/{uuid.uuid4().hex}") / "study"


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    if proc.stdout:
        proc.stdout.close()


@pytest.fixture
def holder(folder: Location) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lease of ``folder``."""
    proc = _python(HOLD, folder.uri)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc
    finally:
        _stop(proc)


def _write_foreign(folder: Location, *, heartbeat_age: float, host: str) -> str:
    token = uuid.uuid4().hex
    now = time.time()
    record = {
        "host": host,
        "pid": 1,
        "started": now - heartbeat_age - 60,
        "heartbeat": now - heartbeat_age,
        "heartbeat_s": 10.0,
        "token": token,
        "command": "normstudy run elsewhere.yaml",
    }
    (folder / LEASE_FILE).write_text(json.dumps(record))
    return token


def test_acquire_writes_the_holder_and_release_deletes_it(folder: Location) -> None:
    with StudyLease(folder) as lease:
        held = read_lease(folder / LEASE_FILE)
        assert held is not None and held.token == lease.token
        assert (held.host, held.pid) == (socket.gethostname(), os.getpid())
        assert held.command and lease.took_over is None and lease.notice is None
    assert not (folder / LEASE_FILE).exists()
    if folder.is_local:
        assert not folder.exists(), "an empty folder made for the lease is left behind"


def test_a_second_acquire_is_refused_naming_the_holder(
    folder: Location, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(LeaseHeldError) as refused:
        StudyLease(folder).acquire()
    message = str(refused.value)
    assert f"pid {holder.pid}" in message and socket.gethostname() in message
    assert "last heartbeat" in message and str(folder / LEASE_FILE) in message
    assert refused.value.holder is not None and refused.value.holder.pid == holder.pid


def test_heartbeat_advances(folder: Location) -> None:
    with StudyLease(folder, heartbeat_s=0.2) as lease:
        first = lease.read()
        time.sleep(1.0)
        later = lease.read()
    assert first is not None and later is not None
    assert later.heartbeat > first.heartbeat
    assert (later.token, later.started) == (first.token, first.started)


def test_a_dead_holder_on_this_host_is_taken_over(
    folder: Location, holder: subprocess.Popen[str]
) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    with StudyLease(folder) as lease:
        assert lease.took_over is not None and lease.took_over.pid == holder.pid
        assert lease.notice is not None
        assert f"process {holder.pid} is gone" in lease.notice
        now = lease.read()
        assert now is not None and now.token == lease.token


def test_an_old_heartbeat_of_another_host_is_taken_over(folder: Location) -> None:
    old = _write_foreign(folder, heartbeat_age=3600, host="elsewhere.invalid")
    with StudyLease(folder) as lease:
        assert lease.took_over is not None and lease.took_over.token == old
        assert lease.notice is not None
        assert "no heartbeat for 60 min" in lease.notice and "elsewhere.invalid" in lease.notice


def test_a_fresh_lease_of_another_host_is_respected(folder: Location) -> None:
    token = _write_foreign(folder, heartbeat_age=5, host="elsewhere.invalid")
    with pytest.raises(LeaseHeldError, match=r"host elsewhere\.invalid, pid 1"):
        StudyLease(folder).acquire()
    still = read_lease(folder / LEASE_FILE)
    assert still is not None and still.token == token


def test_release_deletes_only_our_own_lease(folder: Location) -> None:
    lease = StudyLease(folder, heartbeat_s=0.2)
    lease.acquire()
    try:
        # Another process took over (ours looked stale): our heartbeat notices, and stops.
        theirs = _write_foreign(folder, heartbeat_age=0, host="elsewhere.invalid")
        deadline = time.monotonic() + 10
        while lease.lost is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lease.lost is not None and lease.lost.token == theirs
    finally:
        lease.release()
    left = read_lease(folder / LEASE_FILE)
    assert left is not None and left.token == theirs


def test_one_of_racing_processes_wins(
    folder: Location, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMSTUDY_LEASE_SETTLE_S", "2")  # the default on object stores
    go, done = tmp_path / "go", tmp_path / "done"
    procs = [_python(RACE, folder.uri, str(go), str(done)) for _ in range(4)]
    try:
        time.sleep(2)  # all imported, waiting for the start
        go.touch()
        deadline = time.monotonic() + 120
        while sum(p.poll() is not None for p in procs) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        done.touch()
        outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    finally:
        for p in procs:
            _stop(p)
    assert sorted(outputs) == ["refused", "refused", "refused", "won"]
    assert not (folder / LEASE_FILE).exists()


# -- a real driver -------------------------------------------------------------------------------
N_TRIALS = 2
FAST = [
    "--set", f"search.num_samples={N_TRIALS}",
    "--set", "search.max_concurrent=1",
    "--set", "search.n_startup_trials=2",
    "--set", "search.scheduler.name=fifo",
    "--set", "train.epochs=3",
    "--set", "train.max_steps_per_epoch=4",
    "--set", "train.schedule.warmup_epochs=0",
    "--set", "dataset.image_size=8",
]  # fmt: skip
DRIVER_ENV = {"NORMSTUDY_LEASE_HEARTBEAT_S": "1"}


def _normstudy(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "normstudy", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **DRIVER_ENV},
    )


def _start_driver(quickstart: Path, home: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    args = ["run", str(quickstart), "--home", str(home), *FAST, *extra]
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "normstudy", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **DRIVER_ENV},
            start_new_session=True,  # its group holds the Ray processes it starts
        )


def _stop_driver(proc: subprocess.Popen[bytes]) -> None:
    """Ends the driver and whatever it left in its process group (Ray's daemons)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _wait_until(done: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 300
    while not done():
        assert proc.poll() is None, "the driver ended early:\n" + log.read_text()[-3000:]
        assert time.monotonic() < deadline, "timed out:\n" + log.read_text()[-3000:]
        time.sleep(0.2)


def _trials(home: Path) -> dict[str, str]:
    from normstudy.results import read_results

    table = read_results(as_location(home) / "quickstart" / "results").to_pylist()
    return {r["trial_id"]: r["status"] for r in table}


@pytest.mark.integration
@pytest.mark.slow
def test_a_second_driver_is_refused_while_the_first_runs(tmp_path: Path, quickstart: Path) -> None:
    home, log = tmp_path / "home", tmp_path / "first.log"
    study = home / "quickstart"
    # Long enough for every refused command below to meet it running.
    first = _start_driver(quickstart, home, log, "--set", "train.epochs=25")
    try:
        _wait_until(
            lambda: (study / LEASE_FILE).exists() and (study / "study.yaml").exists(), first, log
        )
        commands = [
            ["run", quickstart, "--home", home, "--resume", *FAST],
            ["run", quickstart, "--home", home, *FAST],
            ["run", quickstart, "--home", home, "--overwrite", *FAST],
            ["sync-mlflow", "quickstart", "--home", home],
            ["doctor", "quickstart", "--home", home, "--repair"],
        ]
        for args in commands:
            refused = _normstudy(*args)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert f"pid {first.pid}" in refused.stderr and "last heartbeat" in refused.stderr
            assert str(study / LEASE_FILE) in refused.stderr
            assert (study / "study.yaml").exists(), "--overwrite deleted a running study"
        (running,) = json.loads(_normstudy("status", "--home", home, "--format", "json").stdout)
        assert running["running_now"] and f"pid {first.pid}" in running["job"]
        assert first.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        _stop_driver(first)
    assert list(_trials(home).values()) == ["completed"] * N_TRIALS
    assert not (study / LEASE_FILE).exists()
    (ended,) = json.loads(_normstudy("status", "--home", home, "--format", "json").stdout)
    assert ended["done"] == ended["of"] == N_TRIALS and not ended["running_now"]
    assert ended["elapsed_s"] > 0
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "normstudy",
            "status",
            "--home",
            str(home),
            "--watch",
            "--every",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
    )
    try:
        time.sleep(8)
        assert watch.poll() is None, "--watch should keep refreshing"
        watch.send_signal(signal.SIGINT)
        shown, _ = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0 and "quickstart" in shown and f"{N_TRIALS}/{N_TRIALS}" in shown


# A killed driver's lease taken over by --resume: tests/test_driver_crash.py.
