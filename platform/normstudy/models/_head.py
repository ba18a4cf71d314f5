"""Changes at the end of a network (002): a BN on the final feature map, dropout on Emb(x)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

EMBEDDING_BN = "embedding_bn"
"""Name of the feature-map BN inside the module that ends ``forward_features``."""


def _last_feature_module(model: nn.Module) -> str:
    """Name of the child whose output ``forward_features`` returns (known timm families)."""
    from timm.models import EfficientNet, MobileNetV3, ResNet

    if isinstance(model, ResNet):
        return "layer4"
    if isinstance(model, EfficientNet):
        return "bn2"  # conv_head -> bn2 (BN + act): the last step of forward_features
    if isinstance(model, MobileNetV3):
        return "blocks"
    raise ValueError(
        f"plugins.embedding_bn: no known end of forward_features for {type(model).__name__}; "
        "supported: timm ResNet, EfficientNet and MobileNetV3 families"
    )


def add_feature_norm(model: nn.Module) -> nn.BatchNorm2d:
    """Put one ``BatchNorm2d`` on the final feature map, so ``forward_features`` returns it
    normalized (before global pooling, after the network's last activation).

    A final ``nn.Sequential`` (ResNet ``layer4``) gets it appended as ``embedding_bn``; another
    final module ``m`` becomes ``Sequential(features=m, embedding_bn=BN)``.
    """
    name = _last_feature_module(model)
    last = model.get_submodule(name)
    timm_model: Any = model
    channels = int(timm_model.num_features)
    ref = next(model.parameters())
    bn = nn.BatchNorm2d(channels, device=ref.device, dtype=ref.dtype)
    if isinstance(last, nn.Sequential):
        last.add_module(EMBEDDING_BN, bn)
    else:
        wrapped = nn.Sequential(OrderedDict([("features", last), (EMBEDDING_BN, bn)]))
        model.set_submodule(name, wrapped)
    return bn


class DropoutLinear(nn.Linear):
    """``Linear`` that applies dropout (rate ``p``, training only) to its input first.

    Built from an existing classifier, sharing its weight and bias (same parameters, same
    state-dict keys), so ``get_classifier()`` stays a ``Linear`` and the embedding a trial
    passes to it (and to loss terms) is the one before dropout.
    """

    def __init__(self, linear: nn.Linear, p: float) -> None:
        # On the meta device: no memory and no draw from the RNG for weights replaced at once.
        super().__init__(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device="meta",
            dtype=linear.weight.dtype,
        )
        self.weight = linear.weight
        self.bias = linear.bias
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.dropout(x, self.p, self.training), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.p}"


def add_classifier_dropout(
    model: nn.Module, p: float, field: str = "plugins.final_dropout"
) -> DropoutLinear:
    """Replace the classifier (``get_classifier()``, a ``Linear``) by a :class:`DropoutLinear`
    (``field`` names the option asking for it in errors)."""
    timm_model: Any = model
    classifier = timm_model.get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise ValueError(
            f"{field}: the classifier is a {type(classifier).__name__}, not a Linear layer"
        )
    name = next(n for n, m in model.named_modules() if m is classifier)
    layer = DropoutLinear(classifier, p)
    model.set_submodule(name, layer)
    return layer


def move_head_dropout(model: nn.Module, p: float) -> DropoutLinear | None:
    """Move timm's head dropout (``drop_rate``) into the classifier, as a :class:`DropoutLinear`.

    timm drops the pooled features inside ``forward_head`` before returning them for
    ``pre_logits`` (ResNet, EfficientNet, models with a ``ClassifierHead`` such as NF-ResNets or
    a ``NormMlpClassifierHead`` such as ConvNeXt), so
    Emb(x) would arrive at loss terms dropped and scaled by 1/(1−p); MobileNetV3 drops after
    the ``pre_logits`` return, so a classifier called on Emb(x) would not drop at all. Inside
    the classifier the dropout acts once, in the same place of the forward (same draws), and
    ``forward_head(pre_logits=True)`` returns Emb(x) before any dropout.

    Raises:
        ValueError: ``p > 0`` for a family whose head dropout is not known here.
    """
    if p <= 0:
        return None
    from timm.layers import ClassifierHead, NormMlpClassifierHead
    from timm.models import EfficientNet, MobileNetV3, ResNet

    timm_model: Any = model
    head = getattr(model, "head", None)
    if isinstance(model, ResNet | EfficientNet | MobileNetV3):
        timm_model.drop_rate = 0.0  # forward_head's F.dropout(p=self.drop_rate): now off
    elif isinstance(head, ClassifierHead | NormMlpClassifierHead) and isinstance(
        head.drop, nn.Dropout
    ):
        head.set_submodule("drop", nn.Identity())  # the head's drop, before its pre_logits
    else:
        raise ValueError(
            f"model.drop_rate: where timm drops the features of a {type(model).__name__} is not "
            "known here (supported: ResNet, EfficientNet, MobileNetV3 and models with timm's "
            "ClassifierHead / NormMlpClassifierHead); set model.drop_rate to 0, or use "
            "plugins.final_dropout"
        )
    return add_classifier_dropout(model, p, field="model.drop_rate")
