"""Stops a local Ray instance's processes once the driver that started it is gone.

``ray.init(address="local")`` starts the GCS, a raylet, a monitor, a log monitor and a dashboard
process as children of the driver; the raylet starts the dashboard and runtime-env agents and
the workers. A driver that exits normally stops them (``ray.shutdown`` at exit). A driver
killed hard (SIGKILL, the OOM killer) cannot: Ray's fate sharing stops its own children, but the
raylet's agents live on, re-parented to init, for minutes (seen with Ray 2.60).

So the driver starts this watcher beside Ray: a process of its own session (a Ctrl-C on the
terminal does not reach it) that follows the Ray processes the driver started and their
descendants, and when the driver is gone, stops whatever of them is left: SIGTERM, then SIGKILL
after a grace period. It ends by itself when the Ray processes are gone (``ray.shutdown``).

Run as ``python -m normstudy.search._reaper DRIVER_PID RAY_PID...``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

POLL_S = 0.5
GRACE_S = 3.0


def children_of_this_process() -> set[int]:
    """Pids of this process's descendants (taken before ``ray.init`` to tell Ray's apart)."""
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def start_reaper(ray_pids: set[int]) -> subprocess.Popen[bytes] | None:
    """Starts the watcher over ``ray_pids`` (the processes ``ray.init`` started) for this
    driver; returns it, or None when there is nothing to watch."""
    if not ray_pids:
        return None
    args = [sys.executable, "-m", "normstudy.search._reaper", str(os.getpid())]
    return subprocess.Popen(
        [*args, *map(str, sorted(ray_pids))],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # terminal signals go to the driver's group, not here
        close_fds=True,
    )


def _alive(proc: psutil.Process) -> bool:
    import psutil

    try:  # is_running also checks the creation time: a reused pid is not ours
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _follow(tracked: dict[int, psutil.Process]) -> None:
    """Adds the tracked processes' new descendants (agents, workers) and drops the dead."""
    import psutil

    for proc in list(tracked.values()):
        if not _alive(proc):
            tracked.pop(proc.pid, None)
            continue
        try:
            for child in proc.children(recursive=True):
                tracked.setdefault(child.pid, child)
        except psutil.Error:
            continue


def _stop(tracked: dict[int, psutil.Process]) -> None:
    import psutil

    procs = [p for p in tracked.values() if _alive(p)]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, left = psutil.wait_procs(procs, timeout=GRACE_S)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def watch(driver_pid: int, ray_pids: list[int]) -> None:
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        driver = None
    tracked: dict[int, psutil.Process] = {}
    for pid in ray_pids:
        try:
            tracked[pid] = psutil.Process(pid)
        except psutil.Error:
            continue
    while tracked and driver is not None and _alive(driver):
        _follow(tracked)
        time.sleep(POLL_S)
    _follow(tracked)
    _stop(tracked)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(argv) < 2 or not all(a.isdigit() for a in argv):
        print("usage: python -m normstudy.search._reaper DRIVER_PID RAY_PID...", file=sys.stderr)
        return 2
    watch(int(argv[0]), [int(a) for a in argv[1:]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
