"""BN noise measurement (000, Sect. 3.1): how random BN's batch statistics are, per layer.

In the notation of 000, a BN layer's input x has population statistics μ, σ (here the layer's
running averages, σ = √(running_var + ε)) and, in a batch, statistics M, S (mean and biased
variance over the batch and the spatial positions, S = √(var + ε)). Then

    (x − M)/S = ((x − μ)/σ + V)·U,   V = (μ − M)/σ,   U = σ/S,

and for n = k·z i.i.d. normal inputs (batch k, spatial size z) V ~ N(0, 1/n), U ~ √n/χ_{n−1}.

For each size k, ``batches`` random training batches go through the network with every BN in
training mode (batch statistics, as during learning; everything else in eval mode, running
averages restored afterwards; the training-mode stages of plugins, such as ``noise``, act as
in training), and each BN's input statistics are recorded. Per layer and k
(each a mean over the layer's channels of a spread over the batches):

- ``var_v``: Var(V); ``std_u``: Std(U); ``mean_v``, ``mean_u``: their means;
- ``out_var``: the variance over batches of the BN output (x − M)/S of a fixed input x, averaged
  over x from the population (x̂ = (x − μ)/σ with mean 0 and variance 1, independent of the
  batch): E_x̂ Var((x̂ + V)·U) = Var(V·U) + Var(U) exactly. The model predicts ≈ 1.5/(k·z),
  i.e. a log-log slope of −1 against k (``noise_slopes``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

if TYPE_CHECKING:
    import pandas as pd

    from normstudy.data import Split
    from normstudy.spec._model import AugmentSpec
    from normstudy.trial._train import _Trial

COLUMNS = ["layer", "k", "z", "n", "mean_v", "var_v", "mean_u", "std_u", "out_var"]


def tracked_norm_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """BN layers with running averages (the population statistics μ, σ)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None
    ]


@contextmanager
def batch_statistics_mode(model: nn.Module) -> Iterator[None]:
    """Within the block only the BN layers run in training mode (their ``drop``/``act`` and all
    other modules in eval mode); modes, buffers (running averages) and the global RNG are
    restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = sorted({b.device for b in buffers.values() if b.device.type == "cuda"}, key=str)
    try:
        with torch.random.fork_rng(devices=devices):
            model.eval()
            for _, layer in tracked_norm_layers(model):
                layer.train()
                for child in layer.children():
                    child.eval()
            yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        for module, training in modes.items():
            module.training = training


def _record(layers: list[tuple[str, _BatchNorm]], store: dict[str, list[Any]]) -> list[Any]:
    handles = []
    for name, layer in layers:

        def hook(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            x = args[0].detach().double()
            dims = [d for d in range(x.dim()) if d != 1]
            z = int(np.prod(x.shape[2:])) if x.dim() > 2 else 1
            store[name].append((x.mean(dims), x.var(dims, unbiased=False), z))

        handles.append(layer.register_forward_pre_hook(hook))
    return handles


def _population(layer: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor, float]:
    """μ, σ = √(running_var + ε) and ε of a layer, copied before any batch updates them."""
    assert layer.running_mean is not None and layer.running_var is not None
    mu = layer.running_mean.detach().double().clone()
    return mu, torch.sqrt(layer.running_var.detach().double() + layer.eps), layer.eps


def _row(
    population: tuple[torch.Tensor, torch.Tensor, float], samples: list[Any], name: str, k: int
) -> dict[str, Any]:
    mu, sigma, eps = population
    means = torch.stack([s[0] for s in samples])  # (batches, C)
    variances = torch.stack([s[1] for s in samples])
    v = (mu - means) / sigma
    u = sigma / torch.sqrt(variances + eps)
    z = samples[0][2]
    return {
        "layer": name,
        "k": k,
        "z": z,
        "n": k * z,
        "mean_v": float(v.mean()),
        "var_v": float(v.var(0).mean()),
        "mean_u": float(u.mean()),
        "std_u": float(u.std(0).mean()),
        "out_var": float(((v * u).var(0) + u.var(0)).mean()),
    }


@torch.no_grad()
def measure_bn_noise(
    model: nn.Module,
    split: Split,
    sizes: Sequence[int],
    batches: int,
    generator: torch.Generator,
    augment: AugmentSpec | None = None,
) -> pd.DataFrame:
    """Per BN layer and batch size k, the spread of V and U and the BN output variance.

    Args:
        model: A trained network (its BN running averages are the population statistics).
        split: Where the random batches come from (the training split, as during learning).
        sizes: Batch sizes k (each at most ``len(split)``: samples within a batch are distinct).
        batches: Random batches per size (at least 2: the spreads are over batches).
        generator: Draws the batches (on the split's device).
        augment: Augmentation of the batches (default: none).

    Returns:
        One row per (layer, k), columns ``COLUMNS`` (see the module docstring).
    """
    import pandas as pd

    from normstudy.data import sample_batch
    from normstudy.spec._model import AugmentSpec

    if batches < 2:
        raise ValueError(f"batches must be at least 2 (spreads are over batches), got {batches}")
    too_big = [k for k in sizes if k > len(split) or k < 2]
    if too_big:
        raise ValueError(f"batch sizes must be in [2, {len(split)}] (the split), got {too_big}")
    layers = tracked_norm_layers(model)
    population = {name: _population(layer) for name, layer in layers}
    device = next(model.parameters()).device
    rows = []
    with batch_statistics_mode(model):
        for k in sizes:
            store: dict[str, list[Any]] = {name: [] for name, _ in layers}
            handles = _record(layers, store)
            try:
                for _ in range(batches):
                    x, _ = sample_batch(split, k, generator, augment or AugmentSpec())
                    model(x.to(device))
            finally:
                for handle in handles:
                    handle.remove()
            rows += [
                _row(population[name], store[name], name, k) for name, _ in layers if store[name]
            ]
    return pd.DataFrame(rows, columns=COLUMNS)


def noise_slopes(table: pd.DataFrame, column: str = "out_var") -> dict[str, float]:
    """Per layer, the least-squares slope of log(column) against log(k) (000: −1)."""
    slopes = {}
    for layer, rows in table.groupby("layer", sort=False):
        rows = rows[rows[column] > 0]
        if rows["k"].nunique() >= 2:
            slope = np.polyfit(np.log(rows["k"]), np.log(rows[column]), 1)[0]
            slopes[str(layer)] = float(slope)
    return slopes


def restore_trial(config: dict[str, Any], checkpoint_dir: str | Path) -> _Trial:
    """A trial rebuilt from its config (model, plugins, data) with its checkpoint's state.

    The model is built exactly as the trial built it (same plugins, same data scaling), then
    the checkpoint (``state.pt``: {"model": state dict, ...}) is loaded into it.
    """
    from normstudy.trial import LocalReporter
    from normstudy.trial._train import _Trial

    reporter = LocalReporter(checkpoint_dir)
    state = reporter.restore()
    if state is None:
        raise FileNotFoundError(f"no checkpoint state in {checkpoint_dir}")
    trial = _Trial(config, reporter)
    trial.load_state(state)
    return trial
