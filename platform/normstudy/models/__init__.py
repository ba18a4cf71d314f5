"""timm backbones: building (with a CIFAR stem), inspection and optimizer parameter groups.

Importing this package does not import torch or timm (``validate`` and the CLI start without
them): every name below is loaded from its private module on first access.

Example:
    >>> from normstudy.models import build_model, param_groups
    >>> from normstudy.spec._model import ModelSpec, TrialConfig
    >>> config = TrialConfig(model=ModelSpec(name="test_resnet", cifar_stem=True))
    >>> model = build_model(config, num_classes=10, in_chans=3)
    >>> [g.kind for g in param_groups(model, weight_decay=5e-4)]
    ['norm_weight', 'norm_bias', 'bias', 'weight']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from normstudy.models._build import InputNorm, build_model, prepend_input_norm
    from normstudy.models._groups import param_groups
    from normstudy.models._inspect import (
        activation_std,
        first_conv,
        is_input_norm,
        model_activation,
        norm_layers,
    )
    from normstudy.models._norm import (
        NormLayer,
        RemovedNorm,
        norm_positions,
        remove_norm_layers,
        to_norm_layers,
    )

_EXPORTS = {
    "InputNorm": "_build",
    "build_model": "_build",
    "prepend_input_norm": "_build",
    "param_groups": "_groups",
    "activation_std": "_inspect",
    "first_conv": "_inspect",
    "is_input_norm": "_inspect",
    "model_activation": "_inspect",
    "norm_layers": "_inspect",
    "NormLayer": "_norm",
    "RemovedNorm": "_norm",
    "norm_positions": "_norm",
    "remove_norm_layers": "_norm",
    "to_norm_layers": "_norm",
}

__all__ = [
    "InputNorm",
    "NormLayer",
    "RemovedNorm",
    "activation_std",
    "build_model",
    "first_conv",
    "is_input_norm",
    "model_activation",
    "norm_layers",
    "norm_positions",
    "param_groups",
    "prepend_input_norm",
    "remove_norm_layers",
    "to_norm_layers",
]


def __getattr__(name: str) -> Any:
    # PEP 562: resolve the torch-backed names lazily, on first attribute access.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'normstudy.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"normstudy.models.{module}"), name)
