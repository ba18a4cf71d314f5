"""Scale-invariant weights (000): the layers feeding a normalization, projection onto ‖w‖ = 1,
and weight normalization with a data-dependent init.

A conv/linear layer whose output goes straight into a normalization (a BN, a ``NormLayer`` or a
``RemovedNorm``) is found by *tensor identity* in one probe forward pass: a forward hook records
every conv/linear output tensor, a forward pre-hook on every normalization checks whether its
input is one of them. That needs no naming convention (timm ResNet ``conv1 -> bn1``,
``downsample.1 -> downsample.2``, EfficientNet ``conv_pw -> bn1`` ... all come out the same way)
and never pairs a layer that only reaches a norm through something else (SE gates, pooling, a
residual sum). The probe runs on a deep copy in eval mode, so the model's running statistics,
RNG and observers are untouched.

Each output unit's weight vector is a *row*: ``weight[o]`` over (in/groups × kh × kw) for a
conv, ``weight[o]`` for a linear layer; a BN normalizes each output channel separately, so the
loss is invariant to the scale of each row.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from normstudy.models._inspect import is_input_norm
from normstudy.models._norm import Affine, NormLayer, RemovedNorm, channel_view

_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


def _is_norm_position(module: nn.Module) -> bool:
    if isinstance(module, RemovedNorm):
        return True
    return isinstance(module, _BatchNorm) and not is_input_norm(module)


def feeding_layers(
    model: nn.Module, in_chans: int, image_size: int = 32
) -> tuple[list[tuple[str, str]], list[str]]:
    """Which conv/linear layer feeds each normalization, found in one probe forward pass.

    Args:
        model: The network (left untouched: the probe runs on a deep copy in eval mode).
        in_chans: Input channels of the probe batch.
        image_size: Side of the probe images (32 suits every timm CNN used here).

    Returns:
        ``(layer name, norm name)`` pairs in forward order, and the names of normalizations
        whose input is not the output of a conv/linear layer.
    """
    probe = copy.deepcopy(model).eval()
    outputs: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: list[tuple[str, str]] = []
    unfed: list[str] = []
    handles = []

    def record(name: str) -> Any:
        def hook(_: nn.Module, __: Any, out: torch.Tensor) -> None:
            outputs[id(out)] = (name, out)  # the tensor is kept, so its id is not reused

        return hook

    def consume(name: str) -> Any:
        def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            found = outputs.get(id(args[0]))
            if found is not None and found[1] is args[0]:
                pairs.append((found[0], name))
            else:
                unfed.append(name)

        return hook

    for name, module in probe.named_modules():
        if isinstance(module, _WEIGHTED):
            handles.append(module.register_forward_hook(record(name)))
        elif _is_norm_position(module):
            handles.append(module.register_forward_pre_hook(consume(name)))
    param = next(probe.parameters())
    x = torch.zeros(2, in_chans, image_size, image_size, device=param.device, dtype=param.dtype)
    with torch.no_grad():
        probe(x)
    for handle in handles:
        handle.remove()
    return pairs, unfed


def row_direction(layer: nn.Module) -> nn.Parameter:
    """The scale-invariant parameter of a layer feeding a norm: its weight, or the direction
    ``v`` (``original1``) when the weight is weight-normalized."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original1  # type: ignore[union-attr,return-value]
    weight = layer.weight
    assert isinstance(weight, nn.Parameter)
    return weight


def is_scale_invariant(layer: nn.Module, norm: nn.Module) -> bool:
    """Whether the loss is invariant to the scale of each row of ``layer`` feeding ``norm``:
    a weight-normalized layer always; otherwise only if the norm divides by a standard
    deviation of its input (not a removed norm, not mean-only) and any bias of the layer is
    cancelled by centering."""
    if parametrize.is_parametrized(layer, "weight"):
        return True
    if isinstance(norm, RemovedNorm):
        return False
    if isinstance(norm, NormLayer):
        return norm.scale and (getattr(layer, "bias", None) is None or norm.center)
    return True


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """‖w_o‖ of each output unit's weight vector (one value per row)."""
    return weight.detach().flatten(1).norm(dim=1)


@torch.no_grad()
def project_rows_(weight: torch.Tensor) -> None:
    """Rescale each row to unit norm, in place (an all-zero row stays zero)."""
    norms = weight.flatten(1).norm(dim=1).clamp_min(torch.finfo(weight.dtype).tiny)
    weight.div_(norms.view(-1, *([1] * (weight.dim() - 1))))


# -- weight normalization --------------------------------------------------------------------


def weight_norm_statistics(layer: NormLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics stage of a weight-normalized position: none (μ = 0, σ = 1, not computed; with
    ``center``/``scale`` off they are not even applied). The same in train and eval mode."""
    return x.new_zeros(()), x.new_ones(())


def weight_normalize(conv: nn.Module, norm: NormLayer, plugin: str) -> None:
    """``conv`` → w = v/‖v‖ per output unit; ``norm`` → the learnable affine (s, b) = (γ, β).

    torch's ``weight_norm`` parametrization gives w = g·v/‖v‖; its magnitude g (``original0``,
    shaped like a 4-D conv weight) is fixed at 1 and frozen, so it is in no optimizer group and
    no weight decay can touch it: the per-channel scale is s, the norm layer's γ, which keeps
    the kind ``norm_weight`` (γ diagnostics, γ decay and lr divisors keep applying).

    A layer whose ``normalize`` stage a half norm already owns (``mean_only`` /
    ``variance_only``, which run first) keeps its batch statistics and that half: 001's
    "WN + mean-only BN" and "WN + variance-only BN". Any other layer stops normalizing.
    """
    weight_norm(conv, name="weight", dim=0)
    magnitude: Any = conv.parametrizations.weight.original0  # type: ignore[union-attr]
    with torch.no_grad():
        magnitude.fill_(1.0)
    magnitude.requires_grad_(False)
    if "normalize" in norm.owners:
        return
    norm.claim("statistics", plugin)
    norm.statistics = weight_norm_statistics
    norm.center = False
    norm.scale = False


class _InitAffine:
    """One-pass data-dependent init, as the layer's affine stage: the statistics of its input
    x̂ (the normalized input: the raw one under plain weight norm) set the parameters so the
    output is what BN would give on this batch with the affine (a₀, b₀) the layer had, then the
    affine runs with them (so later layers see initialized earlier ones in the same pass)."""

    def __init__(self, affine: Affine) -> None:
        self.affine = affine

    def __call__(self, layer: NormLayer, xhat: torch.Tensor) -> torch.Tensor:
        before = self.affine.coefficients(layer)
        if before is None or layer.weight is None:
            return xhat
        _, shift = (t.detach().clone() for t in before)
        dims = [d for d in range(xhat.dim()) if d != 1]
        mean = xhat.mean(dim=dims)
        std = torch.sqrt(xhat.var(dim=dims, unbiased=False) + layer.eps)
        layer.weight.div_(std)  # a is linear in γ in every formulation: a ← a₀/σ
        scale, _ = self.affine.coefficients(layer)  # type: ignore[misc]
        self.affine.set_shift(layer, shift - scale * mean)  # b ← b₀ − a·μ
        a, b = self.affine.coefficients(layer)  # type: ignore[misc]
        return xhat * channel_view(a, xhat) + channel_view(b, xhat)


@torch.no_grad()
def weight_norm_data_init(model: nn.Module, layers: list[NormLayer], inputs: torch.Tensor) -> None:
    """000's init: one pass over ``inputs`` giving every layer, per channel, a ← a₀/σ and
    b ← b₀ − a·μ in its affine y = a·x̂ + b (standard: s ← γ₀/σ, b ← β₀ − s·μ), with μ, σ² the
    batch mean / biased variance (+ eps) of the affine's input x̂, layer by layer.

    The network then computes on ``inputs`` what the BN network did: with γ₀ = 1, β₀ = 0 every
    pre-activation output has zero mean and unit variance per channel on that batch. Under
    plain weight norm x̂ is the layer's raw input; under WN + mean-only BN it is the centered
    input (μ = 0: only the scale changes), under WN + variance-only BN the scaled one. The pass
    leaves the running statistics of the layers as they were.
    """
    # Noise stages and a sampled scale (noise, bayesian_scale) would blur the statistics the
    # init matches: the pass runs with no perturbation, and the affine at its coefficients
    # (S = s for a stochastic scale).
    previous = [(layer.perturb, layer.affine_stage) for layer in layers]
    buffers = [
        {name: b.clone() for name, b in layer.named_buffers(recurse=False)} for layer in layers
    ]
    for layer in layers:
        affine = layer.affine_stage
        if not isinstance(affine, Affine):
            raise TypeError(f"weight_norm: unknown affine stage {type(affine).__name__}")
        layer.perturb, layer.affine_stage = [], _InitAffine(affine)
    was_training = model.training
    try:
        model.train()
        model(inputs)
    finally:
        model.train(was_training)
        for layer, (perturb, affine), saved in zip(layers, previous, buffers, strict=True):
            layer.perturb, layer.affine_stage = perturb, affine
            for name, value in saved.items():
                layer.get_buffer(name).copy_(value)


__all__ = [
    "feeding_layers",
    "is_scale_invariant",
    "project_rows_",
    "row_direction",
    "row_norms",
    "weight_norm_data_init",
    "weight_normalize",
]
