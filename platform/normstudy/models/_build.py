"""Build a timm backbone for a trial, and the two stem surgeries: CIFAR stem, input norm."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from normstudy.models._head import move_head_dropout
from normstudy.models._inspect import INPUT_NORM_MARKER, first_conv

if TYPE_CHECKING:
    from normstudy.spec._model import TrialConfig


def build_model(config: TrialConfig, num_classes: int, in_chans: int) -> nn.Module:
    """Create ``config.model`` with timm (random init), with the CIFAR stem if asked, and
    timm's head dropout (``model.drop_rate``) moved into the classifier.

    Args:
        config: The trial's config; ``config.model`` names the timm model and its options.
        num_classes: Outputs of the classifier.
        in_chans: Input image channels.

    Raises:
        ValueError: ``cifar_stem`` is set for a model family without a known CIFAR stem.
    """
    import timm

    spec = config.model
    model = timm.create_model(
        spec.name,
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=spec.drop_rate,
        **spec.kwargs,
    )
    if spec.cifar_stem:
        _cifar_stem(model, spec.name)
    # Emb(x) (forward_head(pre_logits=True)) is then taken before timm's head dropout.
    move_head_dropout(model, spec.drop_rate)
    return model


def _stem_conv(in_chans: int, out_chans: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_chans, out_chans, kernel_size=3, stride=1, padding=1, bias=False)
    # timm's own conv init for both families (ResNet: kaiming fan_out; EfficientNet's goog init
    # is the same normal(0, sqrt(2 / fan_out))), so the new stem starts like the old one would.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _cifar_stem(model: nn.Module, name: str) -> None:
    from timm.models import EfficientNet, MobileNetV3, ResNet

    _, conv = first_conv(model)
    if isinstance(model, ResNet):
        # conv1 is one 7x7/2 conv or a deep/tiered Sequential of three convs: either way it
        # becomes one 3x3/1 conv into bn1 (kept, with act1), and the max-pool goes.
        stem_chans = cast(nn.BatchNorm2d, model.bn1).num_features
        model.set_submodule("conv1", _stem_conv(conv.in_channels, stem_chans))
        model.set_submodule("maxpool", nn.Identity())
    elif isinstance(model, EfficientNet | MobileNetV3):
        # conv_stem (3x3/2) -> 3x3/1; bn1 (BatchNormAct2d with its act) stays. No max-pool.
        model.set_submodule("conv_stem", _stem_conv(conv.in_channels, conv.out_channels))
    else:
        raise ValueError(
            f"model.cifar_stem: no CIFAR stem known for {name!r} ({type(model).__name__}); "
            "supported: timm ResNet, EfficientNet and MobileNetV3 families. Set "
            "model.cifar_stem: false (or pick one of those)"
        )


class InputNorm(nn.BatchNorm2d):
    """BN over the input channels, first in the network: γ̂ = σ_act·g, β frozen at 0 (004, 3.4)."""

    def __init__(self, num_features: int, weight: float) -> None:
        super().__init__(num_features)
        setattr(self, INPUT_NORM_MARKER, True)
        with torch.no_grad():
            self.weight.fill_(weight)
            self.bias.zero_()
        # No activation follows, so β has nothing to do: 004 removes it or fixes it at 0.
        self.bias.requires_grad_(False)


def prepend_input_norm(model: nn.Module, weight: float) -> InputNorm:
    """Put an :class:`InputNorm` right before the first conv, inside the model.

    The first conv's slot becomes ``nn.Sequential(InputNorm, conv)``, so ``forward``,
    ``forward_features``, ``forward_head`` and ``get_classifier`` all keep working.
    """
    name, conv = first_conv(model)
    norm = InputNorm(conv.in_channels, weight).to(device=conv.weight.device)
    model.set_submodule(name, nn.Sequential(norm, conv))
    return norm
