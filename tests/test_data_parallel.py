"""Trials that span devices (``train.data_parallel``): real gloo worker processes on CPU.

Synchronized statistics must make a data-parallel trial the one-process trial with the same
global batch; per-device statistics must make it ghost BN of the per-device size in one
process. Both at the layer (outputs, running statistics, gradients) and over whole trials.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from normstudy.cluster import fitting_node_types, load_cluster_config
from normstudy.models import build_model
from normstudy.models._ghost import GhostStatistics
from normstudy.models._norm import NormLayer, norm_positions
from normstudy.models._sync import SyncStatistics
from normstudy.plugins import PluginContext, instantiate
from normstudy.spec import SpecError, TrialConfig, validate_data
from normstudy.spec._metrics import TIMINGS
from normstudy.trial import LocalReporter, run_trial
from normstudy.trial._reporter import load_state
from normstudy.trial._train import _Trial
from normstudy.trial._world import World

BATCH = 32
WORKERS = 2
RTOL = 1e-4
"""Data-parallel against one process: the same arithmetic, summed in another order."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


# -- layer level ------------------------------------------------------------------------------


def _layer(seed: int = 0) -> NormLayer:
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return NormLayer(bn).train()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """A batch whose halves differ (so per-device and global statistics differ), and the
    weights of a loss Σ w·y."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 4, 4, generator=g) * 2 + torch.arange(8.0).view(8, 1, 1, 1)
    return x, torch.randn(8, 3, 4, 4, generator=g)


def _steps(layer: NormLayer, x: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Two training forwards (the running statistics move twice), the second one backward."""
    layer(x * 0.5 + 1.0)
    x = x.clone().requires_grad_(True)
    out = layer(x)
    (out * w).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    return {
        "out": out.detach(),
        "grad_x": x.grad,
        "grad_weight": layer.weight.grad,
        "running_mean": layer.running_mean.clone(),
        "running_var": layer.running_var.clone(),
    }


def _layer_worker(rank: int, port: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORKERS
    )
    try:
        world = World(rank, WORKERS)
        x, w = _inputs()
        x, w = world.shard(x), world.shard(w)
        for kind in ("sync", "device"):
            layer = _layer()
            if kind == "sync":
                layer.statistics = SyncStatistics()
            out = _steps(layer, x, w)
            world.average_buffers(layer)
            out["running_mean"], out["running_var"] = layer.running_mean, layer.running_var
            torch.save(out, Path(folder) / f"{kind}-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def layer_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("layers")
    torch.multiprocessing.spawn(
        _layer_worker, args=(_free_port(), str(folder)), nprocs=WORKERS, join=True
    )
    return folder


def _gathered(folder: Path, kind: str) -> dict[str, torch.Tensor]:
    """The workers' results as one process would have them: batch outputs and input
    gradients concatenated, parameter gradients summed (as DDP's average of the per-worker
    means is the global mean's), running statistics (already averaged) from worker 0."""
    parts = [torch.load(folder / f"{kind}-{r}.pt") for r in range(WORKERS)]
    return {
        "out": torch.cat([p["out"] for p in parts]),
        "grad_x": torch.cat([p["grad_x"] for p in parts]),
        "grad_weight": sum(p["grad_weight"] for p in parts),
        "running_mean": parts[0]["running_mean"],
        "running_var": parts[0]["running_var"],
        "running_mean_1": parts[1]["running_mean"],
    }


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5, msg=key)


def test_synchronized_statistics_are_bn_over_the_global_batch(layer_results: Path) -> None:
    x, w = _inputs()
    got = _gathered(layer_results, "sync")
    _assert_same(got, _steps(_layer(), x, w))  # plain BN (BN's own kernel) on all 8 samples
    torch.testing.assert_close(got["running_mean_1"], got["running_mean"])


def test_per_device_statistics_are_ghost_bn_of_the_device_batch(layer_results: Path) -> None:
    x, w = _inputs()
    ghost = _layer()
    ghost.statistics = GhostStatistics(len(x) // WORKERS)
    got = _gathered(layer_results, "device")
    _assert_same(got, _steps(ghost, x, w))
    # ... and not BN over the whole batch: the halves of x differ.
    assert not torch.allclose(got["out"], _steps(_layer(), x, w)["out"], atol=1e-3)


# -- trial level ------------------------------------------------------------------------------


def _config(plugins: dict[str, Any], workers: int = 1, epochs: int = 2) -> dict[str, Any]:
    train: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": BATCH,
        "lr": 0.05,
        "max_steps_per_epoch": 4,
        "threads": 1,
    }
    if workers > 1:
        train["data_parallel"] = {"workers": workers}
    return TrialConfig.model_validate(
        {
            "dataset": {"name": "digits", "image_size": 8, "augment": {"crop_padding": 1}},
            # SiLU, not ReLU: a kink turns a rounding difference of 1e-7 in one pre-activation
            # into a gradient entry of 0 instead of g (seen here by step 3 with ReLU); a smooth
            # activation keeps the two trials within rounding of each other.
            "model": {"name": "test_resnet", "cifar_stem": True, "kwargs": {"act_layer": "silu"}},
            "train": train,
            "evaluation": {"evalmode_train_samples": 64},
            "plugins": {"gamma_init": {"value": 0.5}, **plugins},
            "seed": 7,
        }
    ).model_dump(mode="json")


class _Watching(LocalReporter):
    """Records the pids of this process's live children at each report; raises ``stop`` (as
    ``tune.report`` raises SystemExit for a trial Tune stops) after epoch ``after``."""

    def __init__(
        self,
        folder: Path | None = None,
        after: int | None = None,
        stop: type[BaseException] = SystemExit,
    ) -> None:
        super().__init__(folder)
        self.after, self.stop = after, stop
        self.pids: set[int] = set()

    def report(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        super().report(metrics, state)
        self.pids |= {p.pid for p in multiprocessing.active_children() if p.pid is not None}
        if len(self.history) == self.after:
            raise self.stop(0)


def _numbers(history: list[dict[str, Any]]) -> list[dict[str, float]]:
    return [
        {k: v for k, v in h.items() if isinstance(v, float | int) and k not in TIMINGS}
        for h in history
    ]


def _assert_close_histories(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [h["epoch"] for h in got] == [h["epoch"] for h in want]
    for g, w in zip(_numbers(got), _numbers(want), strict=True):
        assert set(g) == set(w)
        for key in w:
            assert g[key] == pytest.approx(w[key], rel=RTOL, abs=1e-6), key


@pytest.fixture(scope="module")
def synced() -> _Watching:
    """A whole data-parallel trial with synchronized statistics."""
    reporter = _Watching()
    run_trial(_config({"norm_batch": {"sync": True}}, WORKERS), reporter)
    return reporter


def test_synchronized_trial_is_the_one_process_trial(synced: _Watching) -> None:
    single = LocalReporter()
    run_trial(_config({"norm_batch": {"size": BATCH}}), single)
    _assert_close_histories(synced.history, single.history)
    assert synced.history[-1]["norm_batch/effective"] == BATCH
    # The children ran, and none is left once run_trial has returned.
    assert synced.pids and not any(_alive(pid) for pid in synced.pids)


def test_per_device_trial_is_ghost_bn_of_the_device_batch() -> None:
    device = BATCH // WORKERS
    parallel = LocalReporter()
    run_trial(_config({"norm_batch": {"size": device}}, WORKERS), parallel)
    ghost = LocalReporter()
    run_trial(_config({"norm_batch": {"size": device}}), ghost)
    _assert_close_histories(parallel.history, ghost.history)
    assert parallel.history[-1]["norm_batch/effective"] == device


def test_stopped_and_resumed_trial_continues_exactly(synced: _Watching, tmp_path: Path) -> None:
    config = _config({"norm_batch": {"sync": True}}, WORKERS)
    stopped = _Watching(tmp_path, after=1)
    with pytest.raises(SystemExit):
        run_trial(config, stopped)  # Tune stopping the trial after epoch 1
    assert stopped.pids and not any(_alive(pid) for pid in stopped.pids)
    resumed = LocalReporter(tmp_path)
    run_trial(config, resumed)
    assert [h["epoch"] for h in resumed.history] == [2]
    got, want = _numbers(resumed.history)[0], _numbers(synced.history[1:])[0]
    assert {k: (got[k], want[k]) for k in want if got[k] != want[k]} == {}
    # The checkpoint is the plain model's: a one-process trial loads it.
    single = _Trial(_config({"norm_batch": {"size": BATCH}}), LocalReporter())
    single.load_state(load_state(tmp_path))
    assert single.epoch == 2


class _KillingChildren(_Watching):
    """Kills every child of this process after epoch 1 (a worker lost to the OOM killer)."""

    def report(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        super().report(metrics, state)
        if len(self.history) == 1:
            for pid in self.pids:
                os.kill(pid, signal.SIGKILL)


def test_a_dead_worker_fails_the_trial_naming_it() -> None:
    reporter = _KillingChildren()
    with pytest.raises(RuntimeError) as err:  # gloo: the connection to it is reset
        run_trial(_config({}, WORKERS, epochs=3), reporter)
    assert [h["epoch"] for h in reporter.history] == [1]
    assert "normstudy-worker-1 had exited with code -9" in "".join(err.value.__notes__)


_ORPHAN = """
import sys, time, multiprocessing
from pathlib import Path
from normstudy.trial import LocalReporter, run_trial

class Hang(LocalReporter):
    def report(self, metrics, state):
        pids = [str(p.pid) for p in multiprocessing.active_children()]
        Path(sys.argv[1]).write_text(" ".join(pids))
        time.sleep(600)

if __name__ == "__main__":
    import json
    run_trial(json.loads(Path(sys.argv[2]).read_text()), Hang())
"""


@pytest.mark.slow
def test_children_exit_when_worker_zero_is_killed(tmp_path: Path) -> None:
    """A killed Ray actor runs no ``finally``: its children notice and exit by themselves."""
    import json

    config = tmp_path / "config.json"
    config.write_text(json.dumps(_config({}, WORKERS, epochs=3)))
    pids_file, script = tmp_path / "pids", tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, str(script), str(pids_file), str(config)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not pids_file.exists() and time.monotonic() < deadline:
            assert parent.poll() is None, "the trial process died before its first report"
            time.sleep(0.2)
        pids = [int(p) for p in pids_file.read_text().split()]
        assert pids
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids)


# -- validation and the plugin's per-device sizes ---------------------------------------------


def _study(plugins: dict[str, Any], **train: Any) -> dict[str, Any]:
    return {
        "name": "dp",
        "model": {"name": "test_resnet", "cifar_stem": True},
        "train": {"batch_size": BATCH, "data_parallel": {"workers": WORKERS}, **train},
        "plugins": plugins,
    }


@pytest.mark.parametrize(
    ("plugins", "train", "resources", "words"),
    [
        ({}, {"data_parallel": {"workers": 3}}, {}, ["train.batch_size (32)", "workers (3)"]),
        (
            {"norm_batch": {"size": 16, "sync": True}},
            {},
            {},
            ["plugins.norm_batch.size (16)", "train.batch_size (32)", "sync: true"],
        ),
        (
            {"norm_batch": {"size": 12}},
            {},
            {},
            ["plugins.norm_batch.size (12)", "per-device batch", "(32 / 2 = 16)"],
        ),
        ({}, {}, {"gpus": 0.5}, ["resources.gpus (0.5)", "0 or 1"]),
    ],
)
def test_invalid_set_ups_name_the_fields(
    plugins: dict[str, Any], train: dict[str, Any], resources: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(SpecError) as err:
        validate_data({**_study(plugins, **train), "resources": resources})
    for word in words:
        assert word in str(err.value)


def test_worker_count_is_fixed_per_study() -> None:
    data = _study({})
    data["search"] = {"space": {"train.data_parallel.workers": {"type": "grid", "values": [1, 2]}}}
    with pytest.raises(SpecError, match="fixed per study"):
        validate_data(data)


def test_resources_are_per_worker() -> None:
    spec = validate_data({**_study({"norm_batch": {"sync": True}}), "resources": {"cpus": 3}})
    assert spec.trial_resources() == {"cpus": 6.0, "gpus": 0.0}
    # A trial's workers share one node: 8 one-GPU workers fit the 8-GPU node type only.
    cluster = load_cluster_config(Path(__file__).parents[1] / "cluster.yaml")
    train = {"batch_size": 64, "data_parallel": {"workers": 8}}
    eight = validate_data({**_study({}, **train), "resources": {"cpus": 4, "gpus": 1}})
    assert set(fitting_node_types(eight.trial_resources(), cluster)) == {"ray.worker.gpu8"}
    assert spec.plugins["norm_batch"] == {"size": None, "sync": True}  # size: the global batch


@pytest.mark.parametrize(
    ("options", "extra", "effective", "ghost"),
    [
        ({"sync": True}, 0, 32.0, None),  # the global batch, over both workers
        ({"size": 16}, 0, 16.0, None),  # per-device BN
        ({"size": 8}, 0, 8.0, 8),  # ghost groups inside a device
        ({"size": 64}, 48, 64.0, None),  # 48 extra samples per device
    ],
)
def test_norm_batch_sizes_are_per_device(
    options: dict[str, Any], extra: int, effective: float, ghost: int | None
) -> None:
    config = TrialConfig.model_validate(
        {key: _study({"norm_batch": options})[key] for key in ("model", "train", "plugins")}
    )
    (plugin,) = instantiate(config.plugins, PluginContext(config, 10, 3, train_size=100))
    assert plugin.extra_samples(BATCH // WORKERS) == extra
    assert plugin.epoch_metrics(nn.Identity()) == {"norm_batch/effective": effective}
    net = plugin.patch_model(build_model(config, num_classes=10, in_chans=3))
    stages = {
        type(m.statistics).__name__ for _, m in norm_positions(net) if isinstance(m, NormLayer)
    }
    if options.get("sync"):
        assert stages == {"SyncStatistics"}
    elif ghost:
        assert stages == {"GhostStatistics"}
    else:
        assert stages == set()


def test_workers_draw_their_own_noise_reproducibly() -> None:
    """Workers 1.. reseed the global RNG from the shared generator and their rank: their own
    streams (no repeated dropout masks across devices), the same again after a resume (which
    restores the generator), and worker 0's stream (the checkpointed one) untouched."""
    generator = torch.Generator().manual_seed(3)

    def draws(world: World) -> torch.Tensor:
        torch.manual_seed(0)
        world.reseed(generator)
        return torch.rand(4)

    first, again = draws(World(1, 3)), draws(World(1, 3))
    assert torch.equal(first, again)
    assert not torch.equal(first, draws(World(2, 3)))
    torch.manual_seed(0)
    plain = torch.rand(4)
    assert torch.equal(draws(World(0, 3)), plain)
    generator.manual_seed(4)  # the next epoch: the generator has moved on
    assert not torch.equal(first, draws(World(1, 3)))
