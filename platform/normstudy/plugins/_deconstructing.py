"""Plugins from 002, "Deconstructing the Regularization of BatchNorm": penalties on the embedding,
the output and the intermediate statistics; BN-free networks with Fixup; one embedding BN;
dropout before the classifier.

No torch at module level (the registry is read by ``validate``): hooks import it themselves.

Order (ascending ``Plugin.order``): the structural changes ``remove_norm`` (30),
``embedding_bn`` (35, after the removal, which would take its BN away), ``fixup`` (40) and
``final_dropout`` (45) run before ``input_norm`` (50); ``standardization`` (90) comes after
every structural change, so it observes the final set of normalized positions.

Emb(x) is what the trial passes to loss terms: timm's ``forward_head(pre_logits=True)``, before
any dropout: ``build_model`` moves timm's ``model.drop_rate`` dropout into the classifier, where
``final_dropout``'s sits too.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from normstudy.plugins._base import ParamGroup, Plugin, PluginOptions, register_plugin

if TYPE_CHECKING:
    import torch
    from torch import nn

    from normstudy.plugins._base import PluginContext, StepOutputs
    from normstudy.spec._model import StudySpec

# Plugins of PLUGINS.md that change BN layers or their γ/β: meaningless once remove_norm took
# every BN away (lr_divisor is not among them: without BN it leaves the groups as they are, and
# it still divides the lr of an embedding_bn or input_norm BN).
_BN_PLUGINS = (
    "gamma_init",
    "affine_form",
    "gamma_decay",
    "population_norm",
    "mean_only",
    "variance_only",
    "norm_batch",
    "weight_norm",
    "analytic_norm",
    "noise",
    "noisy_bn",
    "bayesian_scale",
)
_NEEDS_NO_BN = "it is meant for a network whose BN layers were removed"

# Names of timm's ResNet class (timm/models/resnet.py: BasicBlock / Bottleneck blocks), without
# importing timm; a test checks it against timm.list_models(module="resnet").
_TIMM_RESNET = re.compile(
    r"^(test_resnet|senet154|wide_resnet\d+_2"
    r"|(eca|se)?res(net|next)(aa|blur|rs)?(\d+[cdst]?|light)(_\d+x\d+d)?(_pruned|_gn)?)$"
)


def is_timm_resnet(name: str) -> bool:
    """Whether timm builds ``name`` as a ``ResNet`` of ``BasicBlock`` / ``Bottleneck`` blocks."""
    return bool(_TIMM_RESNET.match(name))


def _remaining_bn(model: nn.Module) -> list[str]:
    from normstudy.models._inspect import norm_layers

    return [name for name, _ in norm_layers(model, skip_input_norm=True)]


def _require_bn_free(model: nn.Module, plugin: str) -> None:
    left = _remaining_bn(model)
    if left:
        raise ValueError(
            f"plugins.{plugin} needs a BN-free network ({len(left)} BN layers left, e.g. "
            f"{left[0]!r}): enable plugins.remove_norm"
        )


@register_plugin
class EmbeddingL2(Plugin):
    """Penalize the embedding norm: loss += λ·(1/H)·mean_batch ‖Emb(x)‖² (002, Sect. 2.1)."""

    name = "embedding_l2"

    class Options(PluginOptions):
        coefficient: Annotated[float, Field(ge=0.0)] = 0.1
        """λ. 002 searches 0 … 1 in steps of 0.1."""

    options: Options

    def loss_terms(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        # mean over batch and the H features = (1/H)·mean_batch ‖Emb(x)‖²
        return {self.name: self.options.coefficient * out.embedding.square().mean()}


@register_plugin
class FunctionalL2(Plugin):
    """Penalize the output norm: loss += λ·(1/K)·mean_batch ‖NN(x)‖² (002, Sect. 2.1)."""

    name = "functional_l2"

    class Options(PluginOptions):
        coefficient: Annotated[float, Field(ge=0.0)] = 0.1
        """λ. 002 searches 0 … 1 in steps of 0.1."""

    options: Options

    def loss_terms(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        return {self.name: self.options.coefficient * out.logits.square().mean()}


@register_plugin
class Standardization(Plugin):
    """Standardization loss λ·Σ_layers ½Σ_i(μ_i²+σ_i²−log(σ_i²+ε)−1) at each norm position (002)."""

    name = "standardization"
    order = 90

    class Options(PluginOptions):
        coefficient: Annotated[float, Field(ge=0.0)] = 1e-6
        """λ. 002 searches 1e-7 … 1e-5 on a log scale (larger diverged at high lr)."""
        eps: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-5
        """ε in log(σ_i² + ε) (default BN's 1e-5). A channel with σ² = 0 (constant, e.g. behind
        Fixup's zero-initialized last convs at the start) adds the finite ½(μ² − log ε − 1)
        (≈ 5.26 at μ = 0, ε = 1e-5) and gets gradient only through its mean: none at μ = 0.
        Once it varies, the log pulls its variance up with a slope of up to ½/ε: a smaller ε
        is a stiffer loss near dead channels."""

    options: Options

    def __init__(self, options: PluginOptions, ctx: PluginContext) -> None:
        super().__init__(options, ctx)
        self.terms: dict[int, torch.Tensor] = {}

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._norm import to_norm_layers
        from normstudy.models._standardize import observe_positions

        to_norm_layers(model)  # BN layers become NormLayers (same output) that take observers
        if not observe_positions(model, self.terms, self.options.eps):
            raise ValueError(
                "plugins.standardization: the model has no BN layers (nor removed ones) to "
                "standardize"
            )
        return model

    def loss_terms(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        import torch

        if not self.terms:
            return {}
        total = torch.stack(list(self.terms.values())).sum()
        self.terms.clear()
        return {self.name: self.options.coefficient * total}


@register_plugin
class RemoveNorm(Plugin):
    """Remove every BN layer (keeping timm BatchNormAct2d's act and drop): BN-free baselines."""

    name = "remove_norm"
    order = 30
    conflicts: ClassVar[dict[str, str]] = {
        name: "it changes BN layers or their parameters, and remove_norm leaves none"
        for name in _BN_PLUGINS
    }

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._norm import remove_norm_layers

        if not remove_norm_layers(model):
            raise ValueError("plugins.remove_norm: the model has no BN layers to remove")
        return model


@register_plugin
class Fixup(Plugin):
    """Fixup init and scalar biases/multipliers for BN-free timm ResNets (002, Sect. 3.2)."""

    name = "fixup"
    order = 40
    requires: ClassVar[dict[str, str]] = {"remove_norm": _NEEDS_NO_BN}
    conflicts: ClassVar[dict[str, str]] = {
        "fan_in_init": "it re-initializes every conv, overwriting Fixup's init"
    }
    partners: ClassVar[dict[str, dict[str, Any]]] = {"remove_norm": {}}

    class Options(PluginOptions):
        init: Literal["zero", "inv_sqrt_depth"] = "zero"
        """Last conv of each branch: zero (Fixup), or He·L^(−1/2) (002 with standardization)."""
        scalar_lr_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
        """lr of the scalar biases and multipliers, as a fraction of the base lr (Fixup: 1/10)."""

    options: Options

    @classmethod
    def check(cls, options: PluginOptions, spec: StudySpec) -> None:
        if not is_timm_resnet(spec.model.name):
            raise ValueError(
                f"plugins.fixup needs a timm ResNet (BasicBlock/Bottleneck residual blocks); "
                f"model.name {spec.model.name!r} is not one"
            )

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._fixup import fixup_init, to_fixup_blocks

        _require_bn_free(model, self.name)
        if not to_fixup_blocks(model):
            raise ValueError(
                f"plugins.fixup: {type(model).__name__} has no timm BasicBlock/Bottleneck; "
                "model.name must be a timm ResNet"
            )
        timm_model: Any = model
        fixup_init(model, timm_model.get_classifier(), self.options.init)
        return model

    def param_groups(self, groups: list[ParamGroup], model: nn.Module) -> list[ParamGroup]:
        from normstudy.models._fixup import fixup_scalars

        scalars = fixup_scalars(model)
        ids = {id(p) for _, p in scalars}
        for group in groups:
            kept = [
                (n, p) for n, p in zip(group.names, group.params, strict=True) if id(p) not in ids
            ]
            group.names, group.params = [n for n, _ in kept], [p for _, p in kept]
        fixup = ParamGroup(
            "fixup_scalar",
            [p for _, p in scalars if p.requires_grad],
            [n for n, p in scalars if p.requires_grad],
            lr_scale=self.options.scalar_lr_scale,
        )
        return [g for g in [*groups, fixup] if g.params]


@register_plugin
class EmbeddingBN(Plugin):
    """One BN on the final feature map, before global pooling, in a BN-free network (002)."""

    name = "embedding_bn"
    order = 35
    requires: ClassVar[dict[str, str]] = {"remove_norm": _NEEDS_NO_BN}
    partners: ClassVar[dict[str, dict[str, Any]]] = {"remove_norm": {}}

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._head import add_feature_norm

        _require_bn_free(model, self.name)
        add_feature_norm(model)
        return model


@register_plugin
class FinalDropout(Plugin):
    """Dropout of rate p on Emb(x) before the classifier (inside it: Emb(x) stays pre-dropout)."""

    name = "final_dropout"
    order = 45

    class Options(PluginOptions):
        rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
        """p: probability of zeroing each embedding feature in training."""

    options: Options

    @classmethod
    def check(cls, options: PluginOptions, spec: StudySpec) -> None:
        if spec.model.drop_rate > 0:
            raise ValueError(
                f"plugins.final_dropout and model.drop_rate ({spec.model.drop_rate}) both drop "
                "Emb(x) before the classifier: set model.drop_rate to 0"
            )

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._head import add_classifier_dropout

        add_classifier_dropout(model, self.options.rate)
        return model
