"""Plugins from 001, "Towards Understanding Regularization in Batch Normalization".

BN = population normalization (PN) + γ decay: ``gamma_decay`` adds the explicit penalty
ζ·Σγ², ``population_norm`` removes the batch noise; ``mean_only`` / ``variance_only`` keep one
half of BN's standardization; ``dropout_after_norm`` is 001's cheaper regularizer for large
batches. The linear lr rule for batch-size studies is ``train.lr_scaling: linear``.

No torch at module level (the registry is read by ``validate``): hooks import it themselves,
and the torch code lives in ``normstudy.models._population``, ``_gamma_decay``, ``_dropout``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from normstudy.plugins._base import Plugin, PluginOptions, StepOutputs, register_plugin

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm

    from normstudy.spec._model import StudySpec


def _without_bn(what: str) -> dict[str, str]:
    """Conflict with remove_norm, which takes the BN layers out of the network.

    (weight_norm keeps them as NormLayers whose γ is its scale s: γ decay applies there, as in
    001's "WN + gamma decay"; weight_norm itself declares its conflicts with PN and half norms.)
    """
    return {"remove_norm": f"remove_norm leaves no BN layers: {what}"}


@register_plugin
class GammaDecay(Plugin):
    """Penalize BN scales: loss += ζ·Σ_layers Σ_channels γ² (001, Eqn. 3)."""

    name = "gamma_decay"
    conflicts: ClassVar[dict[str, str]] = _without_bn("there is no γ to decay")
    partners: ClassVar[dict[str, dict[str, Any]]] = {"population_norm": {"samples": 64}}
    variants: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "adaptive": {"gamma_decay": {"mode": "adaptive", "refresh_every": 2, "fisher_samples": 8}},
    }

    class Options(PluginOptions):
        mode: Literal["constant", "batch", "adaptive"] = "batch"
        """constant: ζ = zeta; batch: ζ = 1/(2M); adaptive: ζ(h) = (ρ+2)/(8M)·I(γ) +
        mean sigmoid(h)/(2M) per channel. M is each step's training batch size."""
        zeta: Annotated[float, Field(ge=0.0)] | None = None
        """ζ of mode constant (required there, unused otherwise)."""
        per: Literal["layer", "channel"] = "layer"
        """adaptive: one ζ per layer (the mean of its channels' ζ) or one per channel."""
        refresh_every: Annotated[int, Field(ge=1)] = 100
        """adaptive: recompute ρ, mean sigmoid(h) and the Fisher I(γ) every this many steps."""
        fisher_samples: Annotated[int, Field(ge=2)] = 64
        """adaptive: training samples (unaugmented, drawn anew each refresh) measuring them."""

        @model_validator(mode="after")
        def _zeta_for_constant(self) -> GammaDecay.Options:
            if self.mode == "constant" and self.zeta is None:
                raise ValueError("zeta is required for mode 'constant' (loss += zeta·Σγ²)")
            return self

    options: Options

    def __init__(self, options: PluginOptions, ctx: Any) -> None:
        super().__init__(options, ctx)
        self._zeta_sum: Any = 0.0
        self._zeta_steps = 0
        self._refreshed_at: int | None = None  # host copy of the buffer: no sync per step

    def patch_model(self, model: nn.Module) -> nn.Module:
        if self.options.mode != "adaptive":
            return model
        import torch

        from normstudy.models._gamma_decay import decayed_layers
        from normstudy.models._norm import to_norm_layers

        to_norm_layers(model)
        for _, layer in decayed_layers(model):
            if "gamma_decay_factor" not in dict(layer.named_buffers(recurse=False)):
                factor = torch.zeros_like(layer.weight, requires_grad=False)
                layer.register_buffer("gamma_decay_factor", factor)
        # The step of the last refresh, in the state dict so a resume keeps the same schedule.
        model.register_buffer("gamma_decay_refreshed_at", torch.tensor(-1))
        self._refreshed_at = -1
        model.register_load_state_dict_post_hook(self._reloaded)
        return model

    def _reloaded(self, model: nn.Module, incompatible: Any) -> None:
        """A checkpoint was loaded: read its refresh step once, here rather than in a step."""
        self._refreshed_at = int(model.get_buffer("gamma_decay_refreshed_at"))

    def _refresh(self, model: nn.Module) -> None:
        from normstudy.data import sample_batch
        from normstudy.spec._model import AugmentSpec

        if self.ctx.splits is None:
            raise RuntimeError("gamma_decay mode adaptive needs the training data (ctx.splits)")
        x, y = sample_batch(
            self.ctx.splits.train, self.options.fisher_samples, self.ctx.generator, AugmentSpec()
        )
        self.set_factors(model, x, y)

    def set_factors(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """Measure M·ζ of every channel on the batch (x, y) and store it (adaptive mode)."""
        from normstudy.models._gamma_decay import adaptive_factors

        smoothing = self.ctx.config.train.label_smoothing
        factors = adaptive_factors(model, x, y, label_smoothing=smoothing)
        for name, factor in factors.items():
            buffer = model.get_buffer(f"{name}.gamma_decay_factor")
            buffer.copy_(factor.to(buffer.dtype))
        model.get_buffer("gamma_decay_refreshed_at").fill_(self.ctx.step)
        self._refreshed_at = self.ctx.step

    def zetas(self, model: nn.Module, batch_size: int) -> list[tuple[_BatchNorm, Any]]:
        """(layer, ζ) for every decayed layer: ζ a float, or a detached per-channel tensor."""
        from normstudy.models._gamma_decay import decayed_layers

        layers = [m for _, m in decayed_layers(model)]
        if self.options.mode == "constant":
            return [(m, float(self.options.zeta or 0.0)) for m in layers]
        if self.options.mode == "batch":
            return [(m, 1.0 / (2.0 * batch_size)) for m in layers]
        out = []
        for m in layers:
            zeta = m.get_buffer("gamma_decay_factor").detach() / batch_size
            out.append((m, zeta.mean() if self.options.per == "layer" else zeta))
        return out

    def _due(self, model: nn.Module) -> bool:
        if self._refreshed_at is None:  # first step of this process (fresh or resumed)
            self._refreshed_at = int(model.get_buffer("gamma_decay_refreshed_at"))
        last = self._refreshed_at
        return last < 0 or self.ctx.step - last >= self.options.refresh_every

    def loss_terms(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        model, batch_size = out.model, len(out.targets)
        if self.options.mode == "adaptive" and self._due(model):
            self._refresh(model)
        zetas = self.zetas(model, batch_size)
        if not zetas:
            return {}
        total: Any = 0.0
        zeta_sum: Any = 0.0
        for layer, zeta in zetas:
            total = total + (zeta * layer.weight.pow(2)).sum()
            zeta_sum = zeta_sum + (zeta * layer.weight.detach().new_ones(layer.num_features)).sum()
        channels = sum(layer.num_features for layer, _ in zetas)
        self._zeta_sum = self._zeta_sum + zeta_sum / channels
        self._zeta_steps += 1
        return {self.name: total}

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """gamma_decay/zeta_mean: ζ averaged over channels and over the epoch's steps."""
        if self._zeta_steps == 0:
            return {}
        mean = float(self._zeta_sum) / self._zeta_steps
        self._zeta_sum, self._zeta_steps = 0.0, 0
        return {f"{self.name}/zeta_mean": mean}


_STANDARDIZE = "PN standardizes with population statistics; it cannot also normalize by halves"


@register_plugin
class PopulationNorm(Plugin):
    """Normalize with population statistics of a fixed training subset, no batch noise (001).

    The statistics (buffers ``population_mean`` / ``population_var`` of every norm layer) are
    used in training and evaluation alike and are constants for autograd. They are estimated
    at the start (``data_init``) and after every ``refresh_every``-th optimizer step, in eval
    mode without gradients (see ``normstudy.models._population``), so an evaluation uses
    those of the last refresh: with the default, of the final weights.
    """

    name = "population_norm"
    order = 400  # after structural changes and other inits: it measures the final network
    conflicts: ClassVar[dict[str, str]] = {
        "mean_only": _STANDARDIZE,
        "variance_only": _STANDARDIZE,
        "norm_batch": "both set the statistics a normalization layer uses",
        "analytic_norm": "both set the statistics a normalization layer uses",
        **_without_bn("there is nothing to normalize with population statistics"),
    }
    partners: ClassVar[dict[str, dict[str, Any]]] = {"gamma_decay": {"mode": "batch"}}

    class Options(PluginOptions):
        samples: Annotated[int, Field(ge=2)] = 1024
        """P: the fixed training subset (capped at the training set; 001 uses 10,000)."""
        refresh_every: Annotated[int, Field(ge=1)] = 1
        """Re-estimate the statistics under the current weights every this many steps (and at
        the start). Stale statistics undo BN's scale invariance: every 10 steps already
        diverged (ResNet-18, lr 0.1), every step trains."""
        estimate: Literal["layerwise", "one_pass"] = "one_pass"
        """one_pass: one forward pass, each chunk normalized with the freshest estimates (exact
        when chunk_size >= samples); layerwise: exact with any chunk size, one pass per layer."""
        chunk_size: Annotated[int, Field(ge=1)] = 1024
        """Samples per forward pass while estimating (no gradients)."""

    options: Options

    def __init__(self, options: PluginOptions, ctx: Any) -> None:
        super().__init__(options, ctx)
        self._subset_index: Any = None

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._population import install_population_norm

        install_population_norm(model, self.name)
        return model

    def subset(self) -> torch.Tensor:
        """The fixed subset: the first P of a permutation seeded by the trial's seed."""
        import torch

        train = self.ctx.splits.train
        if self._subset_index is None:
            n = len(train.y)
            seed = torch.Generator().manual_seed(self.ctx.config.seed)
            order = torch.randperm(n, generator=seed)[: min(self.options.samples, n)]
            self._subset_index = order.to(train.x.device)
        return train.x[self._subset_index]

    def refresh(self, model: nn.Module, x: torch.Tensor | None = None) -> None:
        """Estimate every PN layer's statistics on ``x`` (default: the fixed subset)."""
        from normstudy.models._population import estimate_population, install_population_norm

        layers = install_population_norm(model, self.name)  # idempotent: finds them
        samples = self.subset() if x is None else x
        estimate_population(
            model,
            layers,
            samples,
            chunk_size=self.options.chunk_size,
            method=self.options.estimate,
        )

    def data_init(self, model: nn.Module, inputs: torch.Tensor) -> None:
        self.refresh(model, inputs if self.ctx.splits is None else None)

    def after_step(self, model: nn.Module) -> None:
        if self.ctx.step % self.options.refresh_every == 0:
            self.refresh(model)


class _HalfNorm(Plugin):
    """Base of mean_only / variance_only: batch statistics, one half of the standardization."""

    center: ClassVar[bool] = True
    scale: ClassVar[bool] = True
    order = 60

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._norm import to_norm_layers

        for _, layer in to_norm_layers(model):
            layer.claim("normalize", self.name)
            layer.center, layer.scale = self.center, self.scale
        return model


@register_plugin
class MeanOnly(_HalfNorm):
    """Mean-only BN: subtract the batch mean, do not divide by the std (001, Sect. 5)."""

    name = "mean_only"
    scale = False
    conflicts: ClassVar[dict[str, str]] = {
        "variance_only": "mean-only and variance-only are the two halves of BN: pick one",
        **_without_bn("there is nothing to center"),
    }


@register_plugin
class VarianceOnly(_HalfNorm):
    """Variance-only BN: divide by the batch std, do not subtract the mean (001, Sect. 5)."""

    name = "variance_only"
    center = False
    conflicts: ClassVar[dict[str, str]] = _without_bn("there is nothing to scale")


_BLOCK_MODELS = re.compile(r"resnet|resnext|efficientnet")
_NOT_BLOCK_MODELS = re.compile(r"resnetv2|nf_|normfree")


@register_plugin
class DropoutAfterNorm(Plugin):
    """Dropout after every BN output, or after every residual block (001, App. B.3)."""

    name = "dropout_after_norm"

    class Options(PluginOptions):
        p: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
        """Dropout rate (001: 0.1 for BN at batch 1024, 0.2 after weight normalization)."""
        where: Literal["norm", "block"] = "norm"
        """norm: on each BN output (after the affine, before the activation); block: on each
        residual block's output (ResNet and EfficientNet families)."""

    options: Options

    @classmethod
    def check(cls, options: PluginOptions, spec: StudySpec) -> None:
        assert isinstance(options, cls.Options)
        name = spec.model.name
        blocks = _BLOCK_MODELS.search(name) and not _NOT_BLOCK_MODELS.search(name)
        if options.where == "block" and not blocks:
            raise ValueError(
                f"plugins.{cls.name}.where: 'block' needs a ResNet or EfficientNet (model.name "
                f"is {name!r}); use where: norm"
            )

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._dropout import after_blocks, after_norms

        if self.options.where == "block":
            after_blocks(model, self.options.p)
        elif not after_norms(model, self.options.p):
            raise ValueError(f"plugins.{self.name}: {type(model).__name__} has no norm layers")
        return model
