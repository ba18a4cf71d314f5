"""Optimizer parameter groups: norm γ, norm β, other biases, and decayed weights."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from normstudy.plugins._base import ParamGroup

# Normalization layers whose affine parameters count as norm γ / β (BN first of all).
_NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)
_KINDS = ("norm_weight", "norm_bias", "bias", "weight")


def _norm_kinds(model: nn.Module) -> dict[int, str]:
    kinds: dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, _NORM_TYPES):
            for attr, kind in (("weight", "norm_weight"), ("bias", "norm_bias")):
                param = getattr(module, attr, None)
                if isinstance(param, nn.Parameter):
                    kinds[id(param)] = kind
    return kinds


def param_groups(model: nn.Module, weight_decay: float) -> list[ParamGroup]:
    """Split the trainable parameters into the four standard groups (empty ones left out).

    ``norm_weight`` / ``norm_bias``: γ and β of normalization layers; ``bias``: every other
    parameter with at most one dimension; ``weight``: the rest (conv/linear weights), the only
    group with ``weight_decay``. Frozen parameters (``requires_grad=False``) are in no group, so
    no optimizer can move them, not even through weight decay.

    Args:
        model: The (patched) network.
        weight_decay: The study's weight decay, for the ``weight`` group.
    """
    norm = _norm_kinds(model)
    groups = {
        kind: ParamGroup(kind, [], [], weight_decay=weight_decay if kind == "weight" else 0.0)
        for kind in _KINDS
    }
    # named_parameters() yields a shared parameter once, so each lands in exactly one group.
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        kind = norm.get(id(param)) or ("bias" if param.ndim <= 1 else "weight")
        groups[kind].params.append(param)
        groups[kind].names.append(name)
    return [g for g in groups.values() if g.params]
