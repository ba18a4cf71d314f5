"""The standardization loss of 002 (Collins et al., 2019), gathered inside the forward pass.

At every normalized position (``NormLayer`` or ``RemovedNorm``) an observer takes the layer's
raw input x, computes per channel i over batch and spatial positions the mean μ_i and (biased)
variance σ_i², and keeps only the layer's term

    ½ Σ_i (μ_i² + σ_i² − log(σ_i² + ε) − 1)        (KL(N(μ, σ²) ‖ N(0, 1)) summed over channels)

ε (``plugins.standardization.eps``, default 1e-5) keeps a dead channel (σ² = 0, e.g. behind
Fixup's zero-initialized last conv) finite: its term is the constant ½(μ² − log ε − 1), and its
gradient reaches the input only through μ (zero at μ = 0: the square of the centered input,
all zeros, has zero derivative), so a dead channel neither blows up the loss nor is pushed by
it until the task loss moves it; from there the slope of −½·log(σ² + ε) is at most ½/ε.

Autograd safety: the layer's input is often modified in place later (a ``RemovedNorm`` returns
it unchanged to an in-place ReLU or ``x += shortcut``). The term is computed so that autograd
saves no reference to x itself: the mean saves nothing, ``x − μ`` saves nothing, and the square
saves the fresh centered tensor. No clone, no second forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from normstudy.models._norm import NormLayer, RemovedNorm, norm_positions, reduce_dims


def kl_to_standard_normal(x: torch.Tensor, eps: float, *, may_save: bool = False) -> torch.Tensor:
    """½ Σ_channels (μ² + σ² − log(σ² + ε) − 1) of x (N, C, ...) over all but dim 1.

    ``may_save``: autograd may keep x itself, because nothing modifies it in place later (the
    input of a ``NormLayer``, which BN's own backward keeps anyway): one fused ``var_mean``
    pass instead of a mean, a centered copy and its square (what a ``RemovedNorm`` position
    needs, see the module's note).
    """
    dims = reduce_dims(x)
    if may_save:
        var, mean = torch.var_mean(x, dim=dims, correction=0)
    else:
        centered_mean = x.mean(dim=dims, keepdim=True)
        var = (x - centered_mean).square().mean(dim=dims)
        mean = centered_mean.flatten()
    return 0.5 * (mean.square() + var - torch.log(var + eps) - 1.0).sum()


class StandardizationObserver:
    """Observer of one position: stores its term in ``terms[index]`` during training forwards
    (train mode, gradients on); evaluation passes leave ``terms`` alone."""

    def __init__(self, terms: dict[int, torch.Tensor], index: int, eps: float) -> None:
        self.terms = terms
        self.index = index
        self.eps = eps

    def __call__(self, layer: nn.Module, x: torch.Tensor) -> None:
        if layer.training and torch.is_grad_enabled():
            # Overwritten, not appended: only the latest training forward counts.
            may_save = isinstance(layer, NormLayer)
            self.terms[self.index] = kl_to_standard_normal(x, self.eps, may_save=may_save)


def observe_positions(
    model: nn.Module, terms: dict[int, torch.Tensor], eps: float
) -> list[tuple[str, NormLayer | RemovedNorm]]:
    """Attach a :class:`StandardizationObserver` to every normalized position of ``model``."""
    positions = norm_positions(model)
    for index, (_, layer) in enumerate(positions):
        layer.observers.append(StandardizationObserver(terms, index, eps))
    return positions
