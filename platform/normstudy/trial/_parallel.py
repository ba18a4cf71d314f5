"""The processes of a data-parallel trial (``train.data_parallel``): worker 0 is the calling
process (the Tune worker, which reports and checkpoints), workers 1..k-1 are children it spawns
on the same node.

Lifetimes: the children never outlive worker 0. Worker 0 stops them in a ``finally`` on every
way out (an exception, or ``SystemExit`` from ``tune.report`` when Tune stops the trial), and
each child watches its parent and exits when it is gone (a killed Ray actor runs no
``finally``). Rendezvous: a ``TCPStore`` that worker 0 opens on a free port of 127.0.0.1 (port 0:
the OS picks one, no race), which is also why all workers share one node.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from normstudy.spec import TrialConfig
from normstudy.trial._world import World

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from normstudy.trial._reporter import Reporter

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
JOIN_TIMEOUT_S = 60.0
"""How long worker 0 waits for children that finished training to exit before ending them."""
WATCH_INTERVAL_S = 1.0


def run_data_parallel(
    config: dict[str, Any], reporter: Reporter, objectives: list[tuple[str, str]]
) -> dict[str, Any]:
    """Train ``config`` over ``train.data_parallel.workers`` processes; this one is worker 0.

    The restored checkpoint (if any) goes to every child, as bytes, with its arguments, so all
    workers start from the same model, optimizer, scheduler and generator state.
    """
    from torch import multiprocessing

    start = time.perf_counter()
    spec = TrialConfig.model_validate(config).train.data_parallel
    assert spec is not None and spec.workers > 1
    restored = reporter.restore()
    packed = _pack(restored)
    store = _store(0, spec.workers, spec.timeout_s)
    context = multiprocessing.get_context("spawn")
    children: list[BaseProcess] = []
    try:
        for rank in range(1, spec.workers):
            args = (config, objectives, packed, rank, store.port, os.getpid())
            child = context.Process(target=_child, args=args, name=f"normstudy-worker-{rank}")
            child.daemon = True  # ended by multiprocessing if this process exits normally
            child.start()
            children.append(child)
        world = World(0, spec.workers)
        with _process_group(world, store, config, on_error=lambda e: _end(children, e)):
            metrics = _run(config, reporter, objectives, world, restored, start)
            _join(children)  # before the group goes: children may still finish a collective
        return metrics
    finally:
        _stop(children)


def _pack(state: dict[str, Any] | None) -> bytes | None:
    """The checkpoint as bytes, a copy for the children. Pickled as tensors, torch would share
    their memory with worker 0, whose optimizer adopts the restored momentum buffers and then
    updates them in place: every worker would step the same buffers."""
    if state is None:
        return None
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _unpack(packed: bytes | None) -> dict[str, Any] | None:
    if packed is None:
        return None
    return torch.load(io.BytesIO(packed), map_location="cpu", weights_only=False)


def _store(rank: int, workers: int, timeout_s: float, port: int = 0) -> Any:
    """The rendezvous store: worker 0 opens it on a port the OS picks, the others connect."""
    return dist.TCPStore(
        HOST,
        port,
        workers,
        is_master=rank == 0,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )


def _run(
    config: dict[str, Any],
    reporter: Reporter,
    objectives: list[tuple[str, str]],
    world: World,
    restored: dict[str, Any] | None,
    start: float,
) -> dict[str, Any]:
    from normstudy.trial._train import run_worker

    return run_worker(config, reporter, objectives, world, restored, start)


@contextlib.contextmanager
def _process_group(
    world: World,
    store: Any,
    config: dict[str, Any],
    on_error: Callable[[BaseException], None] | None = None,
) -> Iterator[None]:
    """The default process group of this trial's workers, destroyed on every way out (after
    ``on_error`` when the body raised: end the children before their peers go away)."""
    cfg = TrialConfig.model_validate(config)
    spec = cfg.train.data_parallel
    assert spec is not None
    backend = spec.backend
    if backend == "auto":
        backend = "nccl" if cfg.resources.gpus > 0 and torch.cuda.is_available() else "gloo"
    dist.init_process_group(
        backend,
        store=store,
        rank=world.rank,
        world_size=world.size,
        timeout=datetime.timedelta(seconds=spec.timeout_s),
    )
    try:
        yield
    except BaseException as err:
        if on_error is not None:
            on_error(err)
        raise
    finally:
        dist.destroy_process_group()


def _join(children: list[BaseProcess]) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.is_alive():
            log.warning("%s did not exit %gs after training; ending it", child.name, JOIN_TIMEOUT_S)
    failed = [c.name for c in children if c.exitcode not in (0, None)]
    if failed:
        raise RuntimeError(f"data-parallel workers failed: {', '.join(failed)}")


def _end(children: list[BaseProcess], err: BaseException) -> None:
    """After an error in worker 0: name the children that had died (often the cause: worker 0
    then sees only a broken connection), then end the others."""
    for child in children:
        if not child.is_alive() and child.exitcode not in (0, None):
            err.add_note(f"{child.name} had exited with code {child.exitcode} (see its log)")
    _stop(children)


def _stop(children: list[BaseProcess]) -> None:
    """End every child still alive (terminate, then kill) and reap it."""
    for child in children:
        if child.is_alive():
            child.terminate()
    for child in children:
        child.join(5.0)
        if child.is_alive():
            child.kill()
            child.join()


class _Silent:
    """The reporter of workers 1..: the restored state, and no reports."""

    def __init__(self, restored: dict[str, Any] | None) -> None:
        self.restored = restored

    def restore(self) -> dict[str, Any] | None:
        return self.restored

    def report(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        pass


def _child(
    config: dict[str, Any],
    objectives: list[tuple[str, str]],
    packed: bytes | None,
    rank: int,
    port: int,
    parent: int,
) -> None:
    """Worker ``rank`` (in a spawned process): train in step with worker 0, then exit."""
    _watch_parent(parent)
    restored = _unpack(packed)
    start = time.perf_counter()
    spec = TrialConfig.model_validate(config).train.data_parallel
    assert spec is not None
    store = _store(rank, spec.workers, spec.timeout_s, port)
    world = World(rank, spec.workers)
    with _process_group(world, store, config):
        _run(config, _Silent(restored), objectives, world, restored, start)


def _watch_parent(parent: int) -> None:
    """Exit this process as soon as its parent (worker 0) is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_INTERVAL_S)
        os._exit(1)

    threading.Thread(target=watch, name="normstudy-parent-watch", daemon=True).start()
