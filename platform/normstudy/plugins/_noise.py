"""Noise after normalization: BN-like noise (000, Sect. 3) and "noisy BN" (003).

No torch at module level (the registry is read by ``validate``): hooks import it themselves.
Both plugins append a stage to the ``perturb`` list of every ``NormLayer`` (so they compose with
each other and with plugins that change the statistics or the affine); both are off in eval
mode. They run after structural plugins (``order`` 120) so the layers they configure are the
final ones.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from normstudy.plugins._base import Plugin, PluginOptions, register_plugin

if TYPE_CHECKING:
    from torch import nn

    from normstudy.models._norm import NormLayer
    from normstudy.spec._model import StudySpec

NOISE_ORDER = 120
_NORMALIZER_FREE = ("nf_*", "*nfnet*")


def reject_normalizer_free(plugin: str, spec: StudySpec) -> None:
    """Raise for timm's normalizer-free families: they have no BN for the plugin to act on."""
    name = spec.model.name
    if any(fnmatch.fnmatch(name, pattern) for pattern in _NORMALIZER_FREE):
        raise ValueError(
            f"plugins.{plugin}: model.name {name!r} is normalizer-free (no BatchNorm layer for "
            f"{plugin} to act on)"
        )


def norm_layers_of(model: nn.Module, plugin: str) -> list[tuple[str, NormLayer]]:
    """Every BN of ``model`` as a ``NormLayer`` (converted once); an error if there is none."""
    from normstudy.models._norm import to_norm_layers

    layers = to_norm_layers(model)
    if not layers:
        raise ValueError(f"plugins.{plugin}: the model has no normalization layer to act on")
    return layers


class LayerSigmas(PluginOptions):
    """σ_U, σ_V of the layers whose names match one pattern."""

    sigma_u: Annotated[float, Field(ge=0.0)]
    """Standard deviation of the multiplicative noise U ~ N(1, σ_U²)."""
    sigma_v: Annotated[float, Field(ge=0.0)]
    """Standard deviation of the additive noise V ~ N(0, σ_V²)."""


@register_plugin
class Noise(Plugin):
    """Noise after x̂: (x̂ + V)·U per sample and channel, shared spatially, train mode (000)."""

    name = "noise"
    order = NOISE_ORDER

    variants: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "bn_like": {"noise": {"mode": "bn_like", "batch": 8}},
    }

    class Options(PluginOptions):
        mode: Literal["gaussian", "bn_like"] = "gaussian"
        """gaussian: V ~ N(0, σ_V²), U ~ N(1, σ_U²); bn_like: the laws of BN's own noise at a
        reference batch k: V ~ N(0, 1/n), U = √n/χ_{n−1}, n = k·z."""
        sigma_u: Annotated[float, Field(ge=0.0)] = 0.05
        """gaussian: σ_U of every layer (000 measured 0.02-0.07 in a BN network at batch 32)."""
        sigma_v: Annotated[float, Field(ge=0.0)] = 0.05
        """gaussian: σ_V of every layer."""
        layers: dict[str, LayerSigmas] = Field(default_factory=dict)
        """gaussian: per-layer σ_U, σ_V by module-name pattern (fnmatch; the first matching
        pattern wins, e.g. from ``normstudy measure-bn-noise``); other layers use the global
        values."""
        batch: Annotated[int, Field(ge=2)] = 32
        """bn_like: the reference batch size k."""
        spatial: Annotated[int, Field(ge=1)] | None = None
        """bn_like: the spatial size z; None: each layer's own H·W."""

    options: Options

    @classmethod
    def check(cls, options: PluginOptions, spec: StudySpec) -> None:
        assert isinstance(options, cls.Options)
        reject_normalizer_free(cls.name, spec)
        if options.mode == "bn_like" and options.layers:
            raise ValueError("plugins.noise.layers: per-layer sigmas apply to mode 'gaussian'")

    def _sigmas(self, layer_name: str) -> tuple[float, float]:
        for pattern, sigmas in self.options.layers.items():
            if fnmatch.fnmatchcase(layer_name, pattern):
                return sigmas.sigma_u, sigmas.sigma_v
        return self.options.sigma_u, self.options.sigma_v

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._stochastic_layers import BNLikeNoise, GaussianNoise

        layers = norm_layers_of(model, self.name)
        names = [name for name, _ in layers]
        for pattern in self.options.layers:
            if not fnmatch.filter(names, pattern):
                raise ValueError(
                    f"plugins.noise.layers: {pattern!r} matches no normalization layer "
                    f"(layers: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
                )
        for name, layer in layers:
            if self.options.mode == "bn_like":
                layer.perturb.append(BNLikeNoise(self.options.batch, self.options.spatial))
            else:
                layer.perturb.append(GaussianNoise(*self._sigmas(name)))
        return model


@register_plugin
class NoisyBN(Plugin):
    """Noise after BN: (x̂ + a)·m, a and m i.i.d. per activation, drawn anew each step (003).

    ``granularity: channel`` is a weaker variant: one a, m per channel for the whole batch,
    redrawn every ``every`` steps.
    """

    name = "noisy_bn"
    order = NOISE_ORDER
    variants: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "channel": {"noisy_bn": {"granularity": "channel", "every": 2, "scale": "normal"}},
    }

    class Options(PluginOptions):
        granularity: Literal["activation", "channel"] = "activation"
        """activation (003): a, m drawn i.i.d. for each activation (sample, channel and
        position) at every training forward; channel: one a, m per channel shared by the
        batch and every position, drawn every ``every`` steps."""
        shift_mean: float = 0.0
        """Mean of the additive noise a ~ N(shift_mean, shift_std²)."""
        shift_std: Annotated[float, Field(ge=0.0)] = 0.5
        """Standard deviation of the additive noise a."""
        scale: Literal["lognormal", "normal"] = "lognormal"
        """Law of the multiplicative noise m: exp(N(0, scale_std²)) (always positive) or
        N(1, scale_std²)."""
        scale_std: Annotated[float, Field(ge=0.0)] = 0.25
        """Standard deviation of m's normal (in log space for lognormal)."""
        every: Annotated[int, Field(ge=1)] = 1
        """granularity channel: draw new a, m every this many optimizer steps (1: every step).
        Per-activation noise is drawn anew at every forward (must be 1)."""

        @field_validator("every")
        @classmethod
        def _every_for_channel(cls, every: int, info: ValidationInfo) -> int:
            if info.data.get("granularity") == "activation" and every != 1:
                raise ValueError(
                    "applies to granularity 'channel' only (per-activation noise is drawn anew "
                    "at every forward): leave it at 1"
                )
            return every

    options: Options

    @classmethod
    def check(cls, options: PluginOptions, spec: StudySpec) -> None:
        reject_normalizer_free(cls.name, spec)

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._stochastic_layers import (
            NoisyBNActivation,
            add_noisy_bn_buffers,
            noisy_bn_stage,
        )

        o = self.options
        for _, layer in norm_layers_of(model, self.name):
            if o.granularity == "activation":
                stage = NoisyBNActivation(o.shift_mean, o.shift_std, o.scale, o.scale_std)
                layer.perturb.append(stage)
            else:
                add_noisy_bn_buffers(layer)
                layer.perturb.append(noisy_bn_stage)
        self._draw(model)
        return model

    def after_step(self, model: nn.Module) -> None:
        if self.options.granularity == "channel" and self.ctx.step % self.options.every == 0:
            self._draw(model)

    def _draw(self, model: nn.Module) -> None:
        """New per-channel a, m for every layer (global RNG: restored with the trial's
        checkpoints); nothing to do for per-activation noise."""
        import torch

        from normstudy.models._norm import NormLayer
        from normstudy.models._stochastic_layers import NOISY_BN_SCALE, NOISY_BN_SHIFT

        o = self.options
        with torch.no_grad():
            for layer in model.modules():
                if not (isinstance(layer, NormLayer) and hasattr(layer, NOISY_BN_SHIFT)):
                    continue
                shift, scale = getattr(layer, NOISY_BN_SHIFT), getattr(layer, NOISY_BN_SCALE)
                shift.normal_(o.shift_mean, o.shift_std)
                scale.normal_(0.0 if o.scale == "lognormal" else 1.0, o.scale_std)
                if o.scale == "lognormal":
                    scale.exp_()
