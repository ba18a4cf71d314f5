"""004's alternative affine formulations (Sect. 4.4, Eqns. 26-27) as ``NormLayer`` stages.

    standard: y = γ·x̂ + β           (BN; ``normstudy.models._norm.standard_affine``)
    A1:       y = γ·(x̂ + β)         no extra parameter: γ scales the shift too
    A2:       y = γ·(γ₀·x̂ + β)      γ₀ a learnable per-channel scale, initialized to 1

In the per-channel form y = a·x̂ + b of :class:`~normstudy.models._norm.Affine`: A1 has
a = γ, b = γ·β; A2 has a = γ·γ₀, b = γ·β. γ and β keep their BN names (``weight``, ``bias``),
so γ init, γ decay and lr divisors act on them as on BN's; γ₀ is the parameter ``gamma0`` of
the layer.
"""

from __future__ import annotations

import torch
from torch import nn

from normstudy.models._norm import Affine, NormLayer, channel_view, standard_affine

GAMMA0 = "gamma0"
"""Name of A2's extra scale γ₀ on a NormLayer (state-dict key ``<layer>.gamma0``)."""


class ScaledShiftAffine(Affine):
    """A1: y = γ·(x̂ + β)."""

    name = "A1"

    def coefficients(self, layer: NormLayer) -> tuple[torch.Tensor, torch.Tensor] | None:
        if layer.weight is None or layer.bias is None:
            return None
        return layer.weight, layer.weight * layer.bias

    def set_shift(self, layer: NormLayer, shift: torch.Tensor) -> None:
        # b = γ·β: β = b/γ where γ ≠ 0 (where γ = 0 the output is 0 whatever β is).
        assert layer.weight is not None and layer.bias is not None
        with torch.no_grad():
            gamma = layer.weight
            safe = torch.where(gamma != 0, gamma, torch.ones_like(gamma))
            layer.bias.copy_(torch.where(gamma != 0, shift / safe, layer.bias))

    def __call__(self, layer: NormLayer, xhat: torch.Tensor) -> torch.Tensor:
        if layer.weight is None or layer.bias is None:
            return xhat
        return (xhat + channel_view(layer.bias, xhat)) * channel_view(layer.weight, xhat)


class ExtraScaleAffine(ScaledShiftAffine):
    """A2: y = γ·(γ₀·x̂ + β), γ₀ the layer's ``gamma0``."""

    name = "A2"

    def coefficients(self, layer: NormLayer) -> tuple[torch.Tensor, torch.Tensor] | None:
        if layer.weight is None or layer.bias is None:
            return None
        return layer.weight * getattr(layer, GAMMA0), layer.weight * layer.bias

    def __call__(self, layer: NormLayer, xhat: torch.Tensor) -> torch.Tensor:
        if layer.weight is None or layer.bias is None:
            return xhat
        gamma0: torch.Tensor = getattr(layer, GAMMA0)
        inner = xhat * channel_view(gamma0, xhat) + channel_view(layer.bias, xhat)
        return inner * channel_view(layer.weight, xhat)


FORMULATIONS: dict[str, type[Affine]] = {
    "standard": Affine,
    "A1": ScaledShiftAffine,
    "A2": ExtraScaleAffine,
}


def set_affine(layer: NormLayer, formulation: str) -> nn.Parameter | None:
    """Give ``layer`` the affine ``formulation``; for A2 register γ₀ = 1 (returned).

    Idempotent: an existing γ₀ is kept (and returned).
    """
    if layer.weight is None:
        raise ValueError(
            f"normalization layer {layer!r} has no affine parameters (affine=False): there is "
            f"no γ for the formulation {formulation} to scale"
        )
    if formulation == "standard":
        layer.affine_stage = standard_affine  # the same object: BN's fused kernel still runs
        return None
    layer.affine_stage = FORMULATIONS[formulation]()
    if formulation != "A2":
        return None
    if GAMMA0 not in dict(layer.named_parameters(recurse=False)):
        gamma0 = nn.Parameter(torch.ones_like(layer.weight))
        layer.register_parameter(GAMMA0, gamma0)
    param: nn.Parameter = getattr(layer, GAMMA0)
    return param


__all__ = ["FORMULATIONS", "GAMMA0", "ExtraScaleAffine", "ScaledShiftAffine", "set_affine"]
