"""Analytic normalization (000, after its ref. [22]): normalize each unit with μ̂(w), σ̂²(w), the
mean and variance of its input obtained by propagating the training set's per-channel input
means and variances through the network, layer by layer.

The statistics are differentiable functions of the weights (gradients flow through them) and do
not depend on the batch: train and eval mode compute the same function. Moments are per channel
(spatially stationary) and propagate under the independence assumption of [22]:

- conv / linear: mean Σ w·m + b, variance Σ w²·v, summed over input channels and the kernel
  window (zero padding at the borders is ignored);
- normalization: μ̂, σ̂² of its input are recorded; with its affine y = a·x̂ + b per channel
  (BN: a = γ, b = β; 004's A1/A2 through their coefficients) its output has mean b and variance
  a²·σ̂²/(σ̂² + eps) (x̂ = (x − μ̂)/σ̂ has mean 0 by construction); noise stages are not
  modelled;
- ReLU: the moments of a rectified Gaussian with the input's mean and variance;
- residual sum (``x += shortcut``): means and variances add (branch and shortcut independent);
- max/average pooling, dropout, DropBlock, DropPath and anti-aliasing identities: moments kept
  (neighbouring activations are strongly correlated, so an average of k of them keeps about the
  variance of one rather than v/k; dropout keeps the mean in expectation).

Only timm ResNets (stem conv or deep stem, ``bn1``/``act1``/``maxpool``, BasicBlock /
Bottleneck stages with optional downsample, ReLU activations, no SE) are walked; anything else
raises ``ValueError`` naming the module. The propagation runs once per forward pass, when the
first normalization of the network asks for its statistics; every other layer reads the cache.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normstudy.models._norm import NormLayer, RemovedNorm, affine_coefficients, channel_view

Moments = tuple[torch.Tensor, torch.Tensor]
Record = Callable[[NormLayer, torch.Tensor, torch.Tensor], None]

INPUT_MEAN = "normstudy_analytic_input_mean"
INPUT_VAR = "normstudy_analytic_input_var"
"""Buffers on the model: the training set's per-channel input mean and variance."""

_VAR_FLOOR = 1e-12  # keeps √v differentiable where a branch has exactly zero variance (γ = 0)
_PASS_THROUGH = (
    nn.Identity,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
)
_PASS_THROUGH_NAMES = {"DropPath", "DropBlock2d", "BlurPool2d"}


# -- moments of single operations ----------------------------------------------------------


def linear_moments(
    weight: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor
) -> Moments:
    """y = W x + b with independent inputs x_i of means m_i, variances v_i (W: out × in)."""
    out_mean = weight @ mean
    if bias is not None:
        out_mean = out_mean + bias
    return out_mean, weight.pow(2) @ var


def conv_moments(conv: nn.modules.conv._ConvNd, mean: torch.Tensor, var: torch.Tensor) -> Moments:
    """A conv on a stationary input with independent positions and channels: the kernel window
    acts like a linear layer whose weights are the kernel's taps (summed per input channel)."""
    weight, groups = conv.weight, conv.groups
    out_ch, in_per_group = weight.shape[0], weight.shape[1]
    w_sum = weight.flatten(2).sum(-1).view(groups, out_ch // groups, in_per_group)
    w_sq = weight.pow(2).flatten(2).sum(-1).view(groups, out_ch // groups, in_per_group)
    m = mean.view(groups, in_per_group, 1)
    v = var.view(groups, in_per_group, 1)
    out_mean = torch.bmm(w_sum, m).reshape(out_ch)
    if conv.bias is not None:
        out_mean = out_mean + conv.bias
    return out_mean, torch.bmm(w_sq, v).reshape(out_ch)


def relu_moments(mean: torch.Tensor, var: torch.Tensor) -> Moments:
    """Mean and variance of max(0, X), X ~ N(mean, var) (the rectified Gaussian):
    E = μΦ(a) + σφ(a), E[·²] = (μ² + σ²)Φ(a) + μσφ(a), with a = μ/σ."""
    std = torch.sqrt(var.clamp_min(0.0) + _VAR_FLOOR)
    a = mean / std
    cdf = 0.5 * (1.0 + torch.erf(a / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    first = mean * cdf + std * pdf
    second = (mean * mean + var) * cdf + mean * std * pdf
    return first, (second - first * first).clamp_min(0.0)


def norm_output_moments(layer: nn.Module, mean: torch.Tensor, var: torch.Tensor) -> Moments:
    """Moments after a layer normalizing with its input's own statistics and its affine."""
    eps = float(getattr(layer, "eps", 1e-5))
    scaled_var = var / (var + eps)
    if isinstance(layer, NormLayer):  # any formulation: y = a·x̂ + b per channel
        coefficients = affine_coefficients(layer)
    else:
        weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
        coefficients = None if weight is None or bias is None else (weight, bias)
    if coefficients is None:
        return torch.zeros_like(mean), scaled_var
    a, b = coefficients
    return b.expand_as(mean), a.pow(2) * scaled_var


# -- walking a timm ResNet ------------------------------------------------------------------


def _walk(module: nn.Module, m: torch.Tensor, v: torch.Tensor, record: Record) -> Moments:
    from timm.models.resnet import BasicBlock, Bottleneck

    if isinstance(module, nn.Sequential):
        for child in module:
            m, v = _walk(child, m, v, record)
        return m, v
    if isinstance(module, nn.modules.conv._ConvNd):
        return conv_moments(module, m, v)
    if isinstance(module, nn.Linear):
        return linear_moments(module.weight, module.bias, m, v)
    if isinstance(module, NormLayer):
        record(module, m, v)
        m, v = norm_output_moments(module, m, v)
        return _walk(module.act, *_walk(module.drop, m, v, record), record)
    if isinstance(module, _BatchNorm):  # the input-norm BN: batch statistics, its own affine
        return norm_output_moments(module, m, v)
    if isinstance(module, RemovedNorm):
        return _walk(module.act, *_walk(module.drop, m, v, record), record)
    if isinstance(module, nn.ReLU):
        return relu_moments(m, v)
    if isinstance(module, _PASS_THROUGH) or type(module).__name__ in _PASS_THROUGH_NAMES:
        return m, v
    if isinstance(module, BasicBlock | Bottleneck):
        return _block(module, m, v, record)
    raise ValueError(
        f"analytic_norm: cannot propagate moments through {type(module).__name__}; supported: "
        "timm ResNets with ReLU (conv, BN, ReLU, pooling, BasicBlock/Bottleneck without SE)"
    )


def _block(block: nn.Module, m: torch.Tensor, v: torch.Tensor, record: Record) -> Moments:
    from timm.models.resnet import BasicBlock

    if getattr(block, "se", None) is not None:
        raise ValueError("analytic_norm: squeeze-excitation blocks are not supported")
    if isinstance(block, BasicBlock):
        order = ["conv1", "bn1", "drop_block", "act1", "aa", "conv2", "bn2", "drop_path"]
        last = "act2"
    else:
        order = ["conv1", "bn1", "act1", "conv2", "bn2", "drop_block", "act2", "aa"]
        order += ["conv3", "bn3", "drop_path"]
        last = "act3"
    bm, bv = m, v
    for name in order:
        child = getattr(block, name, None)
        if child is not None:
            bm, bv = _walk(child, bm, bv, record)
    downsample = getattr(block, "downsample", None)
    sm, sv = (m, v) if downsample is None else _walk(downsample, m, v, record)
    return _walk(getattr(block, last), bm + sm, bv + sv, record)


def propagate(
    module: nn.Module, mean: torch.Tensor, var: torch.Tensor, record: Record | None = None
) -> Moments:
    """Moments of ``module``'s output for independent inputs of these per-channel moments;
    ``module`` is built of the supported layers (e.g. ``Sequential(Linear, ReLU, Linear)``)."""
    return _walk(module, mean, var, record or (lambda *_: None))


def propagate_resnet(
    model: nn.Module, mean: torch.Tensor, var: torch.Tensor, record: Record
) -> Moments:
    """Propagate input channel moments through a timm ResNet's features, calling ``record`` with
    each normalization layer and the moments of its input, in forward order."""
    from timm.models import ResNet

    if not isinstance(model, ResNet):
        raise ValueError(
            f"analytic_norm: moments are propagated through timm ResNets only, got "
            f"{type(model).__name__}"
        )
    for name in ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        mean, var = _walk(model.get_submodule(name), mean, var, record)
    return mean, var


# -- the statistics stage -------------------------------------------------------------------


class AnalyticPropagation:
    """The moments of every normalization's input, recomputed once per forward pass (when the
    network's first normalization asks), read by the others from the cache."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model  # a plain attribute: not a submodule of the layers that hold this
        self.cache: dict[int, Moments] = {}
        self.first: NormLayer | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> AnalyticPropagation:
        # The cache holds non-leaf tensors of the last forward pass, which cannot be copied.
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.model, new.cache, new.first = copy.deepcopy(self.model, memo), {}, None
        return new

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model, "cache": {}, "first": None}

    def compute(self) -> dict[int, Moments]:
        model: Any = self.model
        cache: dict[int, Moments] = {}
        order: list[NormLayer] = []

        def record(layer: NormLayer, m: torch.Tensor, v: torch.Tensor) -> None:
            cache[id(layer)] = (m, v)
            order.append(layer)

        propagate_resnet(model, getattr(model, INPUT_MEAN), getattr(model, INPUT_VAR), record)
        self.cache, self.first = cache, order[0] if order else None
        return cache

    def moments(self, layer: NormLayer) -> Moments:
        if layer is self.first or id(layer) not in self.cache:
            self.compute()
        return self.cache[id(layer)]


class AnalyticStatistics:
    """``(layer, x) -> (μ̂, σ̂²)``: the propagated moments, broadcast to x; batch-independent, so
    running statistics are neither used nor updated."""

    def __init__(self, propagation: AnalyticPropagation) -> None:
        self.propagation = propagation

    def __call__(self, layer: NormLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var = self.propagation.moments(layer)
        return channel_view(mean.to(x.dtype), x), channel_view(var.to(x.dtype), x)


def input_moments(x: torch.Tensor | None, in_chans: int) -> Moments:
    """Per-channel mean and variance of training images (N, C, H, W); standardized data
    (0, 1) when none are given."""
    if x is None:
        return torch.zeros(in_chans), torch.ones(in_chans)
    dims = [d for d in range(x.dim()) if d != 1]
    x64 = x.detach().double()
    return x64.mean(dim=dims).float(), x64.var(dim=dims, unbiased=False).float()


def analytic_normalize(
    model: nn.Module, layers: list[NormLayer], mean: torch.Tensor, var: torch.Tensor, plugin: str
) -> AnalyticPropagation:
    """Install analytic statistics on ``layers`` of ``model`` (a timm ResNet), with the given
    input channel moments stored as buffers of the model (they follow it to the device and into
    checkpoints)."""
    device = next(model.parameters()).device
    model.register_buffer(INPUT_MEAN, mean.to(device))
    model.register_buffer(INPUT_VAR, var.to(device))
    propagation = AnalyticPropagation(model)
    for layer in layers:
        layer.claim("statistics", plugin)
        layer.statistics = AnalyticStatistics(propagation)
    with torch.no_grad():
        covered = propagation.compute()  # fails here, not mid-training, on unsupported modules
    missing = [layer for layer in layers if id(layer) not in covered]
    if missing:
        raise ValueError(
            f"analytic_norm: {len(missing)} normalization layer(s) are outside the walked "
            "ResNet structure (stem, layer1..layer4)"
        )
    return propagation
