"""Dropout after normalization (001, App. B.3): after every norm layer, or after every block.

``after_norms``: at each normalized position (``NormLayer``, or ``RemovedNorm`` where a BN was
removed) the dropout acts on the BN output (after the affine, before timm's own ``drop`` and the
activation). timm's ``drop`` and ``act`` modules stay as they are: the dropout is a child of the
layer, applied by a forward pre-hook on its ``drop`` slot.

``after_blocks``: the output of every residual block (timm ResNet ``BasicBlock`` /
``Bottleneck``, after the residual sum and its ReLU) or EfficientNet-style block (each block of
the stages in ``model.blocks``) goes through the dropout. The dropout is a child module of the
block applied by a forward hook, so parameter names do not change (per-layer diagnostics of
different variants line up).
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from normstudy.models._norm import norm_positions, to_norm_layers

DROPOUT_ATTR = "dropout_after"


def _dropout_first(dropout: nn.Module, drop: nn.Module, inputs: tuple[Any, ...]) -> Any:
    return (dropout(inputs[0]), *inputs[1:])


def after_norms(model: nn.Module, p: float) -> int:
    """Dropout(p) after every normalization layer (not the input norm); returns how many."""
    to_norm_layers(model)
    positions = norm_positions(model)
    for _, position in positions:
        if not hasattr(position, DROPOUT_ATTR):
            dropout = nn.Dropout(p)
            position.add_module(DROPOUT_ATTR, dropout)
            position.drop.register_forward_pre_hook(functools.partial(_dropout_first, dropout))
    return len(positions)


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """ResNet blocks (``BasicBlock``, ``Bottleneck``), else the blocks of ``model.blocks``."""
    from timm.models.resnet import BasicBlock, Bottleneck

    found: list[tuple[str, nn.Module]] = [
        (n, m) for n, m in model.named_modules() if isinstance(m, BasicBlock | Bottleneck)
    ]
    stages = getattr(model, "blocks", None)
    if not found and isinstance(stages, nn.Sequential):
        for i, stage in enumerate(stages):
            if isinstance(stage, nn.Sequential):
                found += [(f"blocks.{i}.{j}", block) for j, block in enumerate(stage)]
    return found


def _drop_output(module: nn.Module, inputs: Any, output: Any) -> Any:
    return getattr(module, DROPOUT_ATTR)(output)


def after_blocks(model: nn.Module, p: float) -> int:
    """Dropout(p) on the output of every block (see ``residual_blocks``); returns how many."""
    blocks = residual_blocks(model)
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no ResNet or EfficientNet blocks: dropout after each "
            "block does not apply (use where: norm)"
        )
    for _, block in blocks:
        if not hasattr(block, DROPOUT_ATTR):
            block.add_module(DROPOUT_ATTR, nn.Dropout(p))
            block.register_forward_hook(_drop_output)
    return len(blocks)
