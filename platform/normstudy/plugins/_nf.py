"""The normalizer-free baseline (003): adaptive gradient clipping for timm's NF networks.

No torch at module level (the registry is read by ``validate``): hooks import it themselves.

The baseline itself is a model choice, ``model.name: nf_resnet50`` (timm's NF-ResNets use
``ScaledStdConv2d`` and no BatchNorm; ``test_nfnet`` is a tiny one for tests), trained with
``agc``. AGC works on any model, so ``agc`` accepts any backbone; Brock et al. pair it with NF
networks, where it replaces the stability BN would otherwise give large-batch training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from normstudy.plugins._base import Plugin, PluginOptions, register_plugin

if TYPE_CHECKING:
    from torch import nn


@register_plugin
class AdaptiveGradClip(Plugin):
    """Adaptive gradient clipping, unit-wise ‖g‖ ≤ λ·max(‖w‖, eps), classifier excluded (003)."""

    name = "agc"

    class Options(PluginOptions):
        clip: Annotated[float, Field(gt=0.0)] = 0.01
        """λ: each output unit's gradient norm is clipped to λ·max(‖w‖, eps)."""
        eps: Annotated[float, Field(gt=0.0)] = 1e-3
        """Floor of the weight norm, so zero-initialized weights can still move."""

    options: Options

    def before_step(self, model: nn.Module) -> None:
        from timm.utils import adaptive_clip_grad

        classifier = model.get_classifier()  # type: ignore[operator]
        skip = {id(p) for p in classifier.parameters()}
        params = [p for p in model.parameters() if p.grad is not None and id(p) not in skip]
        adaptive_clip_grad(params, clip_factor=self.options.clip, eps=self.options.eps)
