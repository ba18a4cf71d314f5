"""Fixup (Zhang et al., 2019) for timm ResNets whose BNs were removed (002, Sect. 3.2).

Each timm ``BasicBlock`` (m = 2 convs per branch) or ``Bottleneck`` (m = 3) becomes a
:class:`FixupBlock` that adopts the block's own modules under their own names (so state-dict keys
stay the same) and adds Fixup's scalars: a bias before each branch conv (``bias{i}a``) and before
each activation (``bias{i}b``), and a multiplier ``scale`` (init 1) before the last bias::

    out = conv1(x + bias1a) -> bn1 -> act1(· + bias1b) -> conv2(· + bias2a) -> bn2      (Basic)
    out = out · scale + bias2b;   shortcut = downsample(x + bias1a) or x;   act2(out + shortcut)

(``bn*`` are the ``RemovedNorm`` positions left by ``remove_norm``: identity, still observable.)
The shortcut's downsample sees ``x + bias1a`` as in Fixup's reference code. Fixup's stem and
pre-classifier scalar biases are not added (002 and PLUGINS.md list the branch scalars only).

Initialization (:func:`fixup_init`), with L the number of residual blocks of the network:

- ``zero``: the last conv of every branch and the classifier (weight and bias) are zero; the
  other branch convs are He-initialized (normal, std √(2 / fan_out), as Fixup's reference code
  and timm) and then multiplied by L^(−1/(2m−2)); downsample convs are He-initialized.
- ``inv_sqrt_depth`` (002's variant for the standardization loss): the same, except that the last
  conv of every branch is He-initialized and multiplied by L^(−1/2) instead of being zero, so every
  branch starts with a non-zero output whose scale falls as 1/√L (times Fixup's own branch scaling).
"""

from __future__ import annotations

from typing import Literal

import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

FixupInit = Literal["zero", "inv_sqrt_depth"]
_SCALAR_PREFIXES = ("bias", "scale")


def _scalar(value: float, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.full((1,), value, device=like.device, dtype=like.dtype))


class FixupBlock(nn.Module):
    """A timm ``BasicBlock`` / ``Bottleneck`` with Fixup's scalar biases and multiplier.

    With every bias 0 and ``scale`` 1 it computes exactly what the block it adopted computes.
    """

    # The adopted timm modules (Bottleneck adds conv3/bn3/act3) and Fixup's scalars.
    conv1: nn.Conv2d
    bn1: nn.Module
    act1: nn.Module
    drop_block: nn.Module
    aa: nn.Module
    conv2: nn.Conv2d
    bn2: nn.Module
    act2: nn.Module
    conv3: nn.Conv2d
    bn3: nn.Module
    se: nn.Module | None
    drop_path: nn.Module | None
    downsample: nn.Module | None
    bias1a: nn.Parameter
    bias1b: nn.Parameter
    bias2a: nn.Parameter
    bias2b: nn.Parameter
    bias3a: nn.Parameter
    scale: nn.Parameter

    def __init__(self, block: BasicBlock | Bottleneck) -> None:
        super().__init__()
        self.layers = 2 if isinstance(block, BasicBlock) else 3
        """m: weight layers (convs) on the residual branch."""
        for name, child in block.named_children():
            self.add_module(name, child)
        # Optional parts timm leaves as plain None attributes (not registered children).
        for name in ("se", "drop_path", "downsample"):
            if name not in self._modules:
                setattr(self, name, getattr(block, name, None))
        like = self.branch_convs()[0].weight
        for i in range(1, self.layers + 1):
            self.register_parameter(f"bias{i}a", _scalar(0.0, like))
            self.register_parameter(f"bias{i}b", _scalar(0.0, like))
        self.scale = _scalar(1.0, like)

    def branch_convs(self) -> list[nn.Conv2d]:
        """The branch's convs in order: conv1, conv2 (, conv3)."""
        return [getattr(self, f"conv{i}") for i in range(1, self.layers + 1)]

    def scalars(self) -> list[tuple[str, nn.Parameter]]:
        """Fixup's own scalar parameters (biases and the multiplier), by attribute name."""
        return [
            (n, p)
            for n, p in self.named_parameters(recurse=False)
            if n.startswith(_SCALAR_PREFIXES)
        ]

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x + self.bias1a)

    def _close(self, out: torch.Tensor, x: torch.Tensor, last: int) -> torch.Tensor:
        out = out * self.scale + getattr(self, f"bias{last}b")
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        act = getattr(self, f"act{last}")
        return act(out + self._shortcut(x))  # out-of-place: keeps tensors autograd saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layers == 2:  # timm BasicBlock's order of operations
            out = self.bn1(self.conv1(x + self.bias1a))
            out = self.aa(self.act1(self.drop_block(out) + self.bias1b))
            out = self.bn2(self.conv2(out + self.bias2a))
            return self._close(out, x, 2)
        out = self.act1(self.bn1(self.conv1(x + self.bias1a)) + self.bias1b)  # Bottleneck
        out = self.bn2(self.conv2(out + self.bias2a))
        out = self.aa(self.act2(self.drop_block(out) + self.bias2b))
        out = self.bn3(self.conv3(out + self.bias3a))
        return self._close(out, x, 3)


def to_fixup_blocks(model: nn.Module) -> list[tuple[str, FixupBlock]]:
    """Replace every timm ``BasicBlock`` / ``Bottleneck`` by a :class:`FixupBlock` (idempotent)."""
    found: list[tuple[str, FixupBlock]] = []
    for name, module in list(model.named_modules()):
        if isinstance(module, FixupBlock):
            found.append((name, module))
        elif isinstance(module, BasicBlock | Bottleneck):
            block = FixupBlock(module)
            model.set_submodule(name, block)
            found.append((name, block))
    return found


def fixup_blocks(model: nn.Module) -> list[FixupBlock]:
    return [m for m in model.modules() if isinstance(m, FixupBlock)]


def fixup_scalars(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Qualified name and parameter of every Fixup scalar (bias or multiplier) in ``model``."""
    return [
        (f"{name}.{attr}", param)
        for name, module in model.named_modules()
        if isinstance(module, FixupBlock)
        for attr, param in module.scalars()
    ]


def _he_normal(conv: nn.Conv2d, factor: float = 1.0) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    conv.weight.mul_(factor)
    if conv.bias is not None:
        conv.bias.zero_()


@torch.no_grad()
def fixup_init(model: nn.Module, classifier: nn.Module, init: FixupInit = "zero") -> int:
    """Fixup's initialization of every :class:`FixupBlock` and the classifier; returns L."""
    blocks = fixup_blocks(model)
    depth = len(blocks)
    if depth == 0:
        raise ValueError("fixup_init: the model has no Fixup blocks (call to_fixup_blocks first)")
    for block in blocks:
        *inner, last = block.branch_convs()
        for conv in inner:
            _he_normal(conv, depth ** (-1.0 / (2 * block.layers - 2)))
        if init == "zero":
            last.weight.zero_()
        else:
            _he_normal(last, depth**-0.5)
        if block.downsample is not None:
            for module in block.downsample.modules():
                if isinstance(module, nn.Conv2d):
                    _he_normal(module)
        for attr, param in block.scalars():
            param.fill_(1.0 if attr == "scale" else 0.0)
    for param in classifier.parameters():
        param.zero_()
    return depth
