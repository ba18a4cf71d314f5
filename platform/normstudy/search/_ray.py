"""The study's Ray instance: a cluster's (``RAY_ADDRESS``) or a fresh local one, started while
the study's checks run; SIGTERM handled as Ctrl-C while Tune runs."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

T = TypeVar("T")


def init_ray() -> None:
    """A Ray job (or a user with ``RAY_ADDRESS``) reaches its cluster, token auth as the cluster
    has it; otherwise a fresh local instance for this study alone, which needs no token."""
    import ray

    if ray.is_initialized():
        return
    # Tune's own console output would interleave with our live view: keep it quiet.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Parquet and MLflow hold the results: Tune's CSV/JSON/TensorBoard loggers would only
    # duplicate them, and tensorboardX imports torch into the driver, which needs none.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    address = os.environ.get("RAY_ADDRESS") or None
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address is None:
        from normstudy.search._reaper import children_of_this_process, start_reaper

        before = children_of_this_process()
    ray.init(
        address=address or "local",
        include_dashboard=False if address is None else None,
        log_to_driver=False,
        configure_logging=True,
        logging_level=logging.ERROR,
    )
    if address is None:  # what this driver started is stopped however the driver ends
        start_reaper(children_of_this_process() - before)


def init_ray_during(work: Callable[[], T]) -> T:
    """``work()`` on a thread while this thread starts the study's local Ray instance; its
    result (or its exception, re-raised here).

    ``normstudy run`` checks a study (preflight: torch, timm, a model on the meta device) for
    seconds, and a local Ray takes seconds to start: one overlaps the other. Ray must start on
    the main thread (started on another, its workers lose the GCS). Nothing is written to the
    study's home meanwhile: a study that fails its checks leaves only a Ray instance, which the
    process's exit stops. With ``RAY_ADDRESS`` (a cluster) ``work`` runs alone and Ray starts
    later, in `run_study`.
    """
    if os.environ.get("RAY_ADDRESS") or _ray_initialized():
        return work()
    from normstudy.home import cache_dir
    from normstudy.storage._credentials import move_aws_keys_to_file

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=run, name="preflight", daemon=True)
    move_aws_keys_to_file(cache_dir() / "credentials")  # before Ray sees the environment
    thread.start()
    try:
        init_ray()
    finally:
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return cast("T", outcome["value"])


def _ray_initialized() -> bool:
    import ray

    return bool(ray.is_initialized())


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """SIGTERM (`ray job stop`, a batch scheduler) stops the study as Ctrl-C does: Tune's own
    SIGINT handler, installed while ``fit()`` runs, saves the experiment state and returns."""

    def on_term(signum: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
