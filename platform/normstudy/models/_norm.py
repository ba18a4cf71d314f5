"""``NormLayer``: a BatchNorm with pluggable stages, so normalization plugins compose.

A plugin that changes *how* a layer normalizes (population or ghost statistics, mean-only,
noise after x̂, a stochastic scale, a statistics penalty) configures a stage of the
``NormLayer`` that replaced the BN, rather than replacing the module again; two plugins that
want the same stage conflict, which the spec rejects at validation time.

    forward(x) = act(drop(affine(perturb(normalize(x, statistics(x))))))

With default stages the output, the gradients and the running statistics equal those of the
``nn.BatchNorm2d`` / timm ``BatchNormAct2d`` it replaced (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

Statistics = Callable[["NormLayer", torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Stage = Callable[["NormLayer", torch.Tensor], torch.Tensor]
Observer = Callable[[nn.Module, torch.Tensor], None]

LOW_PRECISION = (torch.bfloat16, torch.float16)
"""Autocast dtypes that a ``NormLayer`` lifts to fp32 before its stages."""


def reduce_dims(x: torch.Tensor) -> list[int]:
    """Every dimension but the channel (dim 1)."""
    return [d for d in range(x.dim()) if d != 1]


def channel_view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped to broadcast against ``x`` (N, C, ...)."""
    return t.view(1, -1, *([1] * (x.dim() - 2)))


def batch_statistics(layer: NormLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BN's statistics: batch mean/biased variance in training (running averages updated with
    the unbiased variance), the running averages in eval mode."""
    if layer.training or not layer.track_running_stats:
        dims = reduce_dims(x)
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        if layer.training and layer.track_running_stats:
            layer.update_running(mean, var, x.numel() // x.shape[1])
        return channel_view(mean, x), channel_view(var, x)
    assert layer.running_mean is not None and layer.running_var is not None
    return channel_view(layer.running_mean, x), channel_view(layer.running_var, x)


class Affine:
    """The affine stage of a ``NormLayer``: BN's y = γ·x̂ + β, and the base of the other
    formulations (004's A1 and A2, 000's stochastic scale).

    Every formulation is, per channel, y = a·x̂ + b with (a, b) functions of the layer's
    parameters: ``coefficients`` gives them (for a stochastic scale, those of its mean), so code
    that must know the affine (analytic moments, weight norm's data-dependent init) works with
    any formulation. a is linear in γ in every formulation.
    """

    name = "standard"

    def coefficients(self, layer: NormLayer) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-channel (a, b) with y = a·x̂ + b; None for a layer without γ/β (affine=False)."""
        if layer.weight is None or layer.bias is None:
            return None
        return layer.weight, layer.bias

    def set_shift(self, layer: NormLayer, shift: torch.Tensor) -> None:
        """Set the parameters in place (no autograd) so that b = ``shift``, a unchanged."""
        assert layer.bias is not None
        with torch.no_grad():
            layer.bias.copy_(shift)

    def __call__(self, layer: NormLayer, xhat: torch.Tensor) -> torch.Tensor:
        coefficients = self.coefficients(layer)
        if coefficients is None:
            return xhat
        a, b = coefficients
        return xhat * channel_view(a, xhat) + channel_view(b, xhat)


standard_affine = Affine()
"""y = γ·x̂ + β: BN's own affine (a NormLayer with it, and default stages, runs BN's kernel)."""


def affine_coefficients(layer: NormLayer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(a, b) of the layer's affine stage, y = a·x̂ + b per channel (None: no γ/β)."""
    stage = layer.affine_stage
    if not isinstance(stage, Affine):
        raise TypeError(
            f"the affine stage {type(stage).__name__} of {layer!r} is not an Affine: its "
            "coefficients are unknown"
        )
    return stage.coefficients(layer)


class NormLayer(_BatchNorm):
    """Replaces one ``_BatchNorm`` (keeping timm ``BatchNormAct2d``'s ``drop`` and ``act``).

    It is itself a ``_BatchNorm`` (same parameters, buffers and names), so code that finds BN
    layers (γ init, γ decay, parameter groups) keeps working on a patched model.

    Attributes a plugin may set:
        statistics: ``(layer, x) -> (mean, var)`` broadcastable to x.
        center / scale: subtract the mean / divide by the standard deviation.
        perturb: stages applied to x̂ before the affine (noise), in order.
        affine_stage: ``(layer, x̂) -> y``, an :class:`Affine` (``affine`` is BN's flag: has
            γ/β).
        observers: called with the layer's raw input (statistics penalties).
        owners: stage name -> plugin name, so two plugins never silently share a stage.
    """

    def __init__(self, bn: _BatchNorm) -> None:
        weight = bn.weight if bn.weight is not None else bn.running_mean
        super().__init__(
            bn.num_features,
            bn.eps,
            bn.momentum,
            bn.affine,
            bn.track_running_stats,
            device=weight.device if weight is not None else None,
        )
        # The BN's own tensors: optimizers and state dicts keep seeing the same objects.
        self.weight, self.bias = bn.weight, bn.bias
        self.running_mean, self.running_var = bn.running_mean, bn.running_var
        self.num_batches_tracked = bn.num_batches_tracked
        self.drop: nn.Module = getattr(bn, "drop", None) or nn.Identity()
        self.act: nn.Module = getattr(bn, "act", None) or nn.Identity()
        self.statistics: Statistics = batch_statistics
        self.center = True
        self.scale = True
        self.perturb: list[Stage] = []
        self.affine_stage: Stage = standard_affine
        self.observers: list[Observer] = []
        self.owners: dict[str, str] = {}
        self.source_type = type(bn).__name__
        self.train(bn.training)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def claim(self, stage: str, plugin: str) -> None:
        """Record that ``plugin`` owns ``stage``; a second owner is a configuration error."""
        owner = self.owners.get(stage)
        if owner is not None and owner != plugin:
            raise ValueError(
                f"plugins {owner!r} and {plugin!r} both change the {stage} of normalization "
                "layers; enable only one of them"
            )
        self.owners[stage] = plugin

    def update_running(self, mean: torch.Tensor, var: torch.Tensor, n: int | torch.Tensor) -> None:
        """BN's running-average update (unbiased variance with ``n`` values per channel: a
        count on the device when only the device knows it), outside autograd."""
        assert self.running_mean is not None and self.running_var is not None
        with torch.no_grad():
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            momentum: float | torch.Tensor = 1.0 if self.momentum is None else self.momentum
            tracked = self.num_batches_tracked
            if self.momentum is None and tracked is not None:
                # BN's cumulative average, 1/batches, on the device: no host sync per step.
                momentum = 1.0 / tracked.clamp(min=1).float()
            if isinstance(n, torch.Tensor):
                unbiased = var * n / (n - 1).clamp(min=1)
            else:
                unbiased = var * n / max(n - 1, 1)
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(unbiased.detach(), momentum)

    def normalize(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        if self.center:
            x = x - mean
        if self.scale:
            x = x * torch.rsqrt(var + self.eps)
        return x

    def _is_plain_bn(self) -> bool:
        return (
            self.statistics is batch_statistics
            and self.center
            and self.scale
            and not self.perturb
            and self.affine_stage is standard_affine
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast x may be bf16/fp16: every stage (and observer) works on fp32.
        x32 = (
            x.float()
            if x.dtype in LOW_PRECISION and (self.observers or not self._is_plain_bn())
            else x
        )
        for observe in self.observers:
            observe(self, x32)
        if self._is_plain_bn():
            # BN's fused kernel: same math, a fraction of the time; with a 16-bit x it
            # accumulates the statistics in fp32 against fp32 γ/β and running statistics.
            return self.act(self.drop(super().forward(x)))
        mean, var = self.statistics(self, x32)
        xhat = self.normalize(x32, mean, var)
        for stage in self.perturb:
            xhat = stage(self, xhat)
        return self.act(self.drop(self.affine_stage(self, xhat).to(x.dtype)))

    def extra_repr(self) -> str:
        return f"{self.num_features}, from={self.source_type}, owners={self.owners}"


class RemovedNorm(nn.Module):
    """Where a BN was removed: identity (keeping ``drop`` and ``act``), but still a position
    that observers (statistics penalties) can watch."""

    def __init__(self, bn: _BatchNorm) -> None:
        super().__init__()
        self.num_features = bn.num_features
        self.drop: nn.Module = getattr(bn, "drop", None) or nn.Identity()
        self.act: nn.Module = getattr(bn, "act", None) or nn.Identity()
        self.observers: list[Observer] = []
        self.source_type = type(bn).__name__

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observers:
            x32 = x.float() if x.dtype in LOW_PRECISION else x
            for observe in self.observers:
                observe(self, x32)
        return self.act(self.drop(x))

    def extra_repr(self) -> str:
        return f"{self.num_features}, removed={self.source_type}"


def _is_input_norm(module: nn.Module) -> bool:
    return bool(getattr(module, "normstudy_input_norm", False))


_T = TypeVar("_T", NormLayer, RemovedNorm)


def _replace_bns(model: nn.Module, kind: type[_T]) -> list[tuple[str, _T]]:
    """Replace every BN (not the input-norm BN, not one already of ``kind``) by ``kind(bn)``."""
    found: list[tuple[str, _T]] = []
    for name, module in list(model.named_modules()):
        if isinstance(module, kind):
            found.append((name, module))
        elif isinstance(module, _BatchNorm) and not _is_input_norm(module):
            replacement = kind(module)
            _set_submodule(model, name, replacement)
            found.append((name, replacement))
    return found


def to_norm_layers(model: nn.Module) -> list[tuple[str, NormLayer]]:
    """Replace every BN of ``model`` (not the input-norm BN) by a ``NormLayer``, once.

    Idempotent: layers already converted are returned as they are. Parameters and buffers are
    the BN's own objects, so optimizers and state dicts see the same tensors under the same names.
    """
    return _replace_bns(model, NormLayer)


def remove_norm_layers(model: nn.Module) -> list[tuple[str, RemovedNorm]]:
    """Replace every BN (not the input-norm BN; NormLayers too) by a ``RemovedNorm``."""
    return _replace_bns(model, RemovedNorm)


def norm_positions(model: nn.Module) -> list[tuple[str, NormLayer | RemovedNorm]]:
    """Every normalized position: ``NormLayer`` and ``RemovedNorm`` modules, in order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, NormLayer | RemovedNorm)]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent: Any = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
