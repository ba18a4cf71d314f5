"""The data-dependent γ-decay factor of 001, Eqn. (3), for every channel of every norm layer.

For a channel with post-affine pre-activation values h (over samples and positions),

    ζ(h) = (ρ+2)/(8M) · I(γ) + 1/(2M) · mean_j sigmoid(h_j),

with ρ the excess kurtosis of h (0 for a Gaussian: the paper's σ_B ~ N(σ_P, (ρ+2)σ_P²/(4M))),
I(γ) = mean_j (∂ℓ_j/∂γ)² the per-sample Fisher estimate and M the batch size. This module
computes M·ζ (the *factor*), so the caller divides by the batch size it decays for.

Everything is measured on one batch in the paper's PN form: each layer normalizes with
statistics that do not depend on the sample being differentiated. Layers with BN's default
``batch_statistics`` use the mean/variance of this batch (what BN computes on it in training,
without touching its running averages); layers whose statistics stage a plugin replaced (e.g.
population_norm) keep that stage. The model runs in eval mode (no dropout, no noise stages).
Kurtosis is measured on the layer input, which equals that of h for γ ≠ 0 (an affine map per
channel) and stays defined when γ = 0; a constant channel counts as Gaussian (ρ = 0).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normstudy.models._inspect import norm_layers
from normstudy.models._norm import NormLayer, batch_statistics, channel_view, reduce_dims


def decayed_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every BN with a γ (not the input norm), in module order: the layers γ decay acts on."""
    return [
        (name, bn) for name, bn in norm_layers(model, skip_input_norm=True) if bn.weight is not None
    ]


def excess_kurtosis(x: torch.Tensor) -> torch.Tensor:
    """Per-channel m4/m2² − 3 over every dimension but dim 1 (biased moments, float64)."""
    dims = reduce_dims(x)
    x = x.double()
    d = x - x.mean(dim=dims, keepdim=True)
    m2, m4 = d.pow(2).mean(dim=dims), d.pow(4).mean(dim=dims)
    # A (numerically) constant channel has no kurtosis: count it as Gaussian.
    varying = m2 > 1e-12 * x.pow(2).mean(dim=dims)
    return torch.where(varying, m4 / torch.where(varying, m2, 1.0).pow(2), 3.0) - 3.0


class _Recorder:
    """Temporary stages: freeze each layer's statistics on the batch, measure ρ and sigmoid(h)."""

    def __init__(self, layers: list[NormLayer]) -> None:
        self.layers = layers
        self.frozen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.kurtosis: dict[int, torch.Tensor] = {}
        self.sigmoid: dict[int, torch.Tensor] = {}
        self.saved = {id(layer): (layer.statistics, layer.affine_stage) for layer in layers}

    def record(self, layer: NormLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        original = self.saved[id(layer)][0]
        if original is batch_statistics:
            dims = reduce_dims(x)
            mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
            stats = channel_view(mean, x), channel_view(var, x)
        else:
            stats = original(layer, x)
        self.frozen[id(layer)] = (stats[0].detach(), stats[1].detach())
        self.kurtosis[id(layer)] = excess_kurtosis(x)
        return stats

    def affine(self, layer: NormLayer, xhat: torch.Tensor) -> torch.Tensor:
        y = self.saved[id(layer)][1](layer, xhat)
        # Reduced at once: y goes on to drop/act, which may modify it in place.
        self.sigmoid[id(layer)] = torch.sigmoid(y.double()).mean(dim=reduce_dims(y))
        return y

    def constant(self, layer: NormLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.frozen[id(layer)]

    def recording(self) -> None:
        for layer in self.layers:
            layer.statistics, layer.affine_stage = self.record, self.affine

    def frozen_statistics(self) -> None:
        for layer in self.layers:
            layer.statistics, layer.affine_stage = self.constant, self.saved[id(layer)][1]

    def restore(self) -> None:
        for layer in self.layers:
            layer.statistics, layer.affine_stage = self.saved[id(layer)]


def per_sample_gamma_grads(
    model: nn.Module,
    names: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    chunk_size: int | None = 32,
) -> dict[str, torch.Tensor]:
    """∂ℓ_j/∂γ for every sample j (shape (N, C) per layer), by torch.func vmap over grad."""
    from torch.func import functional_call, grad, vmap

    gammas = {f"{name}.weight": model.get_parameter(f"{name}.weight").detach() for name in names}

    def loss(params: dict[str, torch.Tensor], xj: torch.Tensor, yj: torch.Tensor) -> Any:
        logits = functional_call(model, params, (xj.unsqueeze(0),))
        return F.cross_entropy(logits, yj.unsqueeze(0), label_smoothing=label_smoothing)

    grads = vmap(grad(loss), in_dims=(None, 0, 0), chunk_size=chunk_size)(gammas, x, y)
    return {name: grads[f"{name}.weight"] for name in names}


def adaptive_factors(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    chunk_size: int | None = 32,
) -> dict[str, torch.Tensor]:
    """M·ζ per channel, ``(ρ+2)/8 · I(γ) + ½ · mean sigmoid(h)``, for every decayed NormLayer.

    Layers must be ``NormLayer`` (``to_norm_layers``); other BNs are left out.
    """
    named = [(n, m) for n, m in decayed_layers(model) if isinstance(m, NormLayer)]
    layers = [m for _, m in named]
    recorder = _Recorder(layers)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            recorder.recording()
            model(x)
            recorder.frozen_statistics()
            grads = per_sample_gamma_grads(
                model,
                [n for n, _ in named],
                x,
                y,
                label_smoothing=label_smoothing,
                chunk_size=chunk_size,
            )
    finally:
        recorder.restore()
        model.train(was_training)
    out = {}
    for name, layer in named:
        fisher = grads[name].double().pow(2).mean(0)
        rho = recorder.kurtosis[id(layer)]
        out[name] = (rho + 2.0) / 8.0 * fisher + 0.5 * recorder.sigmoid[id(layer)]
    return out
