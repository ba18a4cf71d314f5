"""Read-only questions about a model: its norm layers, first conv and main activation."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

INPUT_NORM_MARKER = "normstudy_input_norm"
"""Attribute set (True) on the BN that the input_norm plugin prepends to a network."""

_ACTIVATION_MODULES = (
    "torch.nn.modules.activation",
    "timm.layers.activations",
    "timm.layers.activations_me",
)
# Same modules, but not element-wise nonlinearities of a hidden layer.
_NOT_ACTIVATIONS = {"Softmax", "Softmin", "LogSoftmax", "Softmax2d", "MultiheadAttention", "GLU"}


def is_input_norm(module: nn.Module) -> bool:
    """Whether ``module`` is the input-normalization BN of the input_norm plugin."""
    return bool(getattr(module, INPUT_NORM_MARKER, False))


def norm_layers(model: nn.Module, *, skip_input_norm: bool = False) -> list[tuple[str, _BatchNorm]]:
    """Every BatchNorm layer (timm ``BatchNormAct2d`` included), in module order.

    Args:
        model: The network.
        skip_input_norm: Leave out the input-normalization BN (whose γ is σ_act·g by design,
            so γ initializations and BN replacements must not touch it).
    """
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and not (skip_input_norm and is_input_norm(m))
    ]


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The network's first convolution, as ``(qualified name, module)``.

    timm's ``pretrained_cfg['first_conv']`` is tried first; when it no longer names a conv (the
    CIFAR stem or the input norm rebuilt that spot), the first registered ``Conv2d`` is used,
    which for timm's CNNs is the stem.
    """
    cfg: dict[str, Any] = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("first_conv")
    for name in [names] if isinstance(names, str) else list(names or []):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, nn.Conv2d):
            return name, module
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__} has no Conv2d: cannot find its first convolution")


def _is_activation(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__module__ in _ACTIVATION_MODULES and cls.__name__ not in _NOT_ACTIVATIONS


def model_activation(model: nn.Module) -> nn.Module:
    """The network's main activation: the first activation module in registration order.

    That is the stem's (ReLU for ResNets, the SiLU inside EfficientNet's stem
    ``BatchNormAct2d``); torch's and timm's activation classes are recognized.
    """
    for module in model.modules():
        if _is_activation(module):
            return module
    raise ValueError(f"{type(model).__name__} has no recognizable activation module")


def activation_std(act: nn.Module, *, half_width: float = 12.0, points: int = 240_001) -> float:
    """Standard deviation of ``act(z)`` for ``z ~ N(0, 1)``, by the trapezoid rule in float64.

    ReLU gives 0.5838, SiLU 0.5595, LeakyReLU(0.01) 0.5865 (the σ_act of 004, Sect. 3.4).
    """
    # A float64 CPU copy: the model's own act may be in-place, on a GPU, or have float32 state.
    act = copy.deepcopy(act).to(device="cpu", dtype=torch.float64)
    z = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    with torch.no_grad():
        y = act(z.clone())
    mean = torch.trapezoid(y * pdf, z)
    var = torch.trapezoid((y - mean) ** 2 * pdf, z)
    return float(var.sqrt())
