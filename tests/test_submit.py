"""`normstudy submit` refuses bad input on the laptop, before anything reaches a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests._loopback import free_port


def _submit(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "NORMSTUDY_"))}
    return subprocess.run(
        [sys.executable, "-m", "normstudy", "submit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
    )


def test_bad_study_is_refused_before_submitting(quickstart: Path, tmp_path: Path) -> None:
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens: it must not be needed
    proc = _submit(
        str(quickstart), "--address", address, "--home", str(tmp_path), "--set", "train.lr=-1"
    )
    assert proc.returncode == 2 and "train.lr" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_submit_needs_a_shared_home_and_a_tracking_server(quickstart: Path) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    no_home = _submit(str(quickstart), "--address", address)
    assert no_home.returncode == 2 and "--home" in no_home.stderr
    no_server = _submit(str(quickstart), "--address", address, "--home", "s3://bucket/x")
    assert no_server.returncode == 2 and "--tracking-uri" in no_server.stderr


def test_unreachable_cluster_is_one_clear_error(quickstart: Path, tmp_path: Path) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    proc = _submit(str(quickstart), "--address", address, "--home", str(tmp_path / "home"))
    assert proc.returncode == 2, proc.stderr
    assert "cannot reach the Ray cluster" in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_tracking_server_is_refused(quickstart: Path, tmp_path: Path) -> None:
    proc = _submit(
        str(quickstart),
        "--address",
        f"http://127.0.0.1:{free_port()}",
        "--home",
        str(tmp_path / "home"),
        "--tracking-uri",
        f"http://alice:s3cret-pw@127.0.0.1:{free_port()}",
    )
    assert proc.returncode == 2 and "cannot reach the MLflow server" in proc.stderr
    assert "s3cret-pw" not in proc.stderr and "alice:***@" in proc.stderr
