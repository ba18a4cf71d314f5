"""Plugins from 004, "Revisiting Batch Normalization": γ init, γ lr divisor, BN input norm,
fan-in init, and the alternative affine formulations A1/A2.

No torch at module level (the registry is read by ``validate``): hooks import it themselves.

Order (ascending ``Plugin.order``): ``input_norm`` (50, a structural change), ``affine_form``
(65, a NormLayer stage; its ``param_groups`` puts γ₀ in the group ``norm_gamma0`` before
``lr_divisor`` (100) scales the groups' lr), then the inits ``fan_in_init`` (150) and
``gamma_init`` (160). The inits never depend on the earlier ones: ``fan_in_init`` touches only
conv/linear layers, ``gamma_init`` sets γ and β whatever the formulation (γ₀ stays 1) and skips
the input-norm BN by its marker (``norm_layers(skip_input_norm=True)``), whose γ̂ = σ_act·g is
set by ``input_norm`` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from normstudy.plugins._base import (
    ParamGroup,
    Plugin,
    PluginOptions,
    move_params,
    register_plugin,
)

if TYPE_CHECKING:
    from torch import nn

    from normstudy.spec._model import TrialConfig


@register_plugin
class GammaInit(Plugin):
    """Initialize every BN γ to a value g in (0, 1] and β to 0 (004, Sect. 3)."""

    name = "gamma_init"
    order = 160

    class Options(PluginOptions):
        value: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
        """g. Default: 004's best on CIFAR-10 at lr 0.1 (grid: 1, .75, .5, .25, .1, .05, .01)."""
        keep_zero_init: bool = False
        """Leave BNs whose γ timm zero-initialized (ResNet ``zero_init_last``) at 0."""

    options: Options

    def patch_model(self, model: nn.Module) -> nn.Module:
        import torch

        from normstudy.models._inspect import norm_layers

        with torch.no_grad():
            for _, bn in norm_layers(model, skip_input_norm=True):
                if bn.weight is None:  # affine=False: nothing to initialize
                    continue
                if not (self.options.keep_zero_init and not bn.weight.any()):
                    bn.weight.fill_(self.options.value)
                bn.bias.zero_()
        return model


@register_plugin
class LrDivisor(Plugin):
    """Divide the learning rate of BN γ by c (and of β by c_β) (004, Sect. 3.2)."""

    name = "lr_divisor"

    class Options(PluginOptions):
        gamma: Annotated[float, Field(ge=1.0)] = 100.0
        """c: γ learns at lr / c (004 uses 100)."""
        beta: Annotated[float, Field(ge=1.0)] = 1.0
        """c_β: β learns at lr / c_β."""
        gamma0: Annotated[float, Field(ge=1.0)] = 1.0
        """c_γ₀: the extra scale γ₀ of ``affine_form`` A2 learns at lr / c_γ₀. Default 1 (the
        base lr): 004 divides the lr "for only γ"."""

    options: Options

    def param_groups(self, groups: list[ParamGroup], model: nn.Module) -> list[ParamGroup]:
        # Scales multiply the base lr per group; torch schedulers scale each group's own initial
        # lr, so the ratio survives them (weight decay was already split by models.param_groups).
        divisors = {
            "norm_weight": self.options.gamma,
            "norm_bias": self.options.beta,
            AffineForm.group: self.options.gamma0,
        }
        for group in groups:
            group.lr_scale /= divisors.get(group.kind, 1.0)
        return groups


@register_plugin
class AffineForm(Plugin):
    """The affine after x̂: standard γ·x̂ + β, A1 γ·(x̂ + β) or A2 γ·(γ₀·x̂ + β) (004, 4.4)."""

    name = "affine_form"
    order = 65
    group: ClassVar[str] = "norm_gamma0"
    """Optimizer group of A2's γ₀ (no weight decay; lr / ``plugins.lr_divisor.gamma0``)."""
    conflicts: ClassVar[dict[str, str]] = {
        "bayesian_scale": "both set the affine of every normalization layer"
    }
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "standard": {"affine_form": {"affine": "standard"}},
        "A2": {"affine_form": {"affine": "A2"}, "gamma_init": {}, "lr_divisor": {}},
    }

    class Options(PluginOptions):
        affine: Literal["standard", "A1", "A2"] = "A1"
        """standard: y = γ·x̂ + β (BN); A1: y = γ·(x̂ + β), γ scales the shift too; A2:
        y = γ·(γ₀·x̂ + β) with a learnable per-channel γ₀ initialized to 1 (its lr:
        ``plugins.lr_divisor.gamma0``, default the base lr; no weight decay). γ and β keep
        BN's names, so ``gamma_init``, ``lr_divisor`` and ``gamma_decay`` act on them."""

    options: Options

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._affine import set_affine
        from normstudy.models._norm import to_norm_layers

        layers = to_norm_layers(model)
        if not layers:
            raise ValueError(f"plugins.{self.name}: the model has no BN layers to reformulate")
        for _, layer in layers:
            if layer.weight is None:
                continue  # affine=False: no γ/β, nothing to formulate
            layer.claim("affine", self.name)
            set_affine(layer, self.options.affine)
        return model

    def param_groups(self, groups: list[ParamGroup], model: nn.Module) -> list[ParamGroup]:
        from normstudy.models._affine import GAMMA0

        ids = {id(p) for n, p in model.named_parameters() if n.rpartition(".")[2] == GAMMA0}
        return move_params(groups, ids, ParamGroup(self.group, [], [], weight_decay=0.0))


@register_plugin
class InputNormPlugin(Plugin):
    """Normalize inputs with a BN before the first conv, γ̂ = σ_act·g, β = 0 (004, Sect. 3.4)."""

    name = "input_norm"
    order = 50

    class Options(PluginOptions):
        gain: Annotated[float, Field(gt=0.0)] | None = None
        """g in γ̂ = σ_act·g; None: ``plugins.gamma_init.value`` if enabled, else 1."""

    options: Options

    def adjust_config(self, config: TrialConfig) -> None:
        # The BN does the standardizing: data arrive only scaled to [0, 1].
        config.dataset.normalize = False

    def gain(self) -> float:
        """g: the option, else the γ init of gamma_init when enabled, else 1."""
        if self.options.gain is not None:
            return self.options.gain
        gamma_init = self.ctx.config.plugins.get(GammaInit.name)
        if gamma_init is None:
            return 1.0
        return float(GammaInit.Options.model_validate(gamma_init).value)

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._build import prepend_input_norm
        from normstudy.models._inspect import activation_std, model_activation

        sigma_act = activation_std(model_activation(model))
        prepend_input_norm(model, sigma_act * self.gain())
        return model


@register_plugin
class FanInInit(Plugin):
    """Kaiming-normal fan-in init for convs, fan-in uniform for linear layers, biases 0 (004)."""

    name = "fan_in_init"
    order = 150

    def patch_model(self, model: nn.Module) -> nn.Module:
        import math

        import torch
        from torch import nn

        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.modules.conv._ConvNd):
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                elif isinstance(module, nn.Linear):
                    bound = 1.0 / math.sqrt(module.in_features)
                    nn.init.uniform_(module.weight, -bound, bound)
                else:
                    continue
                if module.bias is not None:
                    module.bias.zero_()
        return model
