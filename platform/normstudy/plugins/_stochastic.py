"""Plugins from 000, "Stochastic Normalizations as Bayesian Learning": the normalization-batch
size, projection onto unit-norm weights, and the two deterministic normalizations (weight norm,
analytic norm) that replace BN's batch statistics.

No torch at module level (the registry is read by ``validate``): hooks import it themselves;
the modules live in ``normstudy.models._ghost``, ``_reparam`` and ``_analytic``.

Order (ascending ``Plugin.order``): ``norm_batch`` (120, a statistics stage), the weight inits of
004 (150, 160), then ``weight_norm`` / ``analytic_norm`` (170: after the inits, because
``nn.init.*(conv.weight)`` on a weight-normalized conv silently does nothing) and ``projection``
(180: last, so it projects the final weights, the directions v of weight norm included).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field, model_validator

from normstudy.plugins._base import (
    ParamGroup,
    Plugin,
    PluginContext,
    PluginOptions,
    move_params,
    register_plugin,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from normstudy.spec._model import StudySpec

# Conflicts of the two deterministic normalizations (names of other plugins of the platform).
# weight_norm composes with mean_only / variance_only (001's WN + mean-only / variance-only BN:
# those layers keep batch statistics for their half); analytic_norm replaces the statistics.
_REPLACES_STATISTICS = {
    "population_norm": "both replace the batch statistics of every normalization layer",
    "remove_norm": "it removes the normalization layers this plugin re-purposes",
    "norm_batch": "there are no batch statistics left whose batch size it could set",
}
_KEEPS_BATCH_STATISTICS = "it keeps BN's batch statistics, which this plugin replaces"
_ANALYTIC_MODELS = re.compile(r"^(test_resnet|resnet\d+[cdst]?|wide_resnet\d+_2)$")


def _in_chans(model: nn.Module) -> int:
    from normstudy.models._inspect import first_conv

    return first_conv(model)[1].in_channels


@register_plugin
class NormBatch(Plugin):
    """Normalization batch N apart from the training batch B: extra samples or ghost BN (000)."""

    name = "norm_batch"
    order = 120
    conflicts: ClassVar[dict[str, str]] = {
        "population_norm": "population statistics replace the batch statistics it sizes",
        "remove_norm": "there are no normalization layers left",
    }

    class Options(PluginOptions):
        size: Annotated[int, Field(ge=1)] | None = 128
        """N, samples per normalization batch. N = B: BN. N > B: each step adds N − B random
        training samples (same augmentation) that shape the batch statistics only. N < B: ghost
        BN over groups of N consecutive samples (N must divide ``train.batch_size``). Under
        ``train.data_parallel`` B is the per-device batch (batch_size / workers) unless
        ``sync``. null: N = B (the default with ``sync``)."""
        sync: bool = False
        """Synchronize the statistics over all workers of a ``train.data_parallel`` trial
        (SyncBatchNorm): every sample is normalized over the global batch, so N = B =
        ``train.batch_size`` (``size`` must be that or left out). Off: per-device statistics,
        as DistributedDataParallel has them. No effect on a one-process trial."""

        @model_validator(mode="before")
        @classmethod
        def _sync_size(cls, data: Any) -> Any:
            # With sync the only normalization batch is the global one: an omitted size means it.
            if isinstance(data, dict) and data.get("sync") is True and "size" not in data:
                return {**data, "size": None}
            return data

    options: Options

    def __init__(self, options: PluginOptions, ctx: PluginContext) -> None:
        super().__init__(options, ctx)
        self._sum, self._steps = 0.0, 0  # effective normalization batch, since the last epoch

    @classmethod
    def check(cls, options: PluginOptions, spec: StudySpec) -> None:
        assert isinstance(options, cls.Options)
        train = spec.train
        if not options.sync:
            if options.size is not None:
                _check_ghost(options.size, train.device_batch, train.workers)
        elif options.size not in (None, train.batch_size):
            raise ValueError(
                f"plugins.norm_batch.size ({options.size}) must equal train.batch_size "
                f"({train.batch_size}) with plugins.norm_batch.sync: true: synchronized "
                "statistics normalize over the global batch of all train.data_parallel.workers; "
                "leave size out, or turn sync off for a per-device size"
            )

    @property
    def _workers(self) -> int:
        return self.ctx.config.train.workers

    @property
    def size(self) -> int:
        """N per device (the global B with ``sync``); ``size: null`` is the training batch."""
        train = self.ctx.config.train
        if self.options.sync:
            return train.batch_size
        return train.device_batch if self.options.size is None else self.options.size

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._ghost import GhostStatistics
        from normstudy.models._norm import to_norm_layers
        from normstudy.models._sync import SyncStatistics

        if self.options.sync:
            if self._workers > 1:
                for _, layer in to_norm_layers(model):
                    layer.claim("statistics", self.name)
                    layer.statistics = SyncStatistics()
            return model
        size, batch = self.size, self.ctx.config.train.device_batch
        if size < batch:  # ghost BN; N >= B keeps BN's statistics (N > B: over the N samples)
            _check_ghost(size, batch, self._workers)  # also for sizes sampled by a search
            for _, layer in to_norm_layers(model):
                layer.claim("statistics", self.name)
                layer.statistics = GhostStatistics(size)
        return model

    def extra_samples(self, batch_size: int) -> int:
        self._sum += self.effective(batch_size)
        self._steps += 1
        return max(0, self.size - batch_size) if self._adds_samples() else 0

    def _adds_samples(self) -> bool:
        return not self.options.sync and self.size > self.ctx.config.train.device_batch

    def effective(self, batch_size: int) -> float:
        """Samples whose statistics normalize a sample in a step with ``batch_size`` training
        samples (per device), averaged over the samples (N, except for a last partial ghost
        group; with ``sync`` the samples of all workers)."""
        if self.options.sync:
            return float(batch_size * self._workers)
        size = self.size
        if self._adds_samples():
            return float(size)
        full, rest = divmod(batch_size, size)
        return (full * size * size + rest * rest) / batch_size

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        value = self._sum / self._steps if self._steps else float(self.size)
        self._sum, self._steps = 0.0, 0
        return {"norm_batch/effective": value}


def _check_ghost(size: int, batch: int, workers: int = 1) -> None:
    if size < batch and batch % size:
        where = f"train.batch_size ({batch})"
        if workers > 1:
            where = (
                f"the per-device batch, train.batch_size / train.data_parallel.workers "
                f"({batch * workers} / {workers} = {batch})"
            )
        raise ValueError(
            f"plugins.norm_batch.size ({size}) must divide {where}: below the training batch, "
            "norm_batch normalizes groups of size consecutive samples"
        )


@register_plugin
class Projection(Plugin):
    """After each step, rescale each weight row that feeds a normalization to norm 1 (000)."""

    name = "projection"
    order = 180
    conflicts: ClassVar[dict[str, str]] = {
        "remove_norm": "without normalizations no weight is scale-invariant",
    }

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._reparam import (
            feeding_layers,
            is_scale_invariant,
            project_rows_,
            row_direction,
        )

        pairs, _ = feeding_layers(model, _in_chans(model))
        names = {id(p): n for n, p in model.named_parameters()}
        layers = [
            layer
            for layer, norm in pairs
            if is_scale_invariant(model.get_submodule(layer), model.get_submodule(norm))
        ]
        # Each layer once, in forward order.
        self.names = [
            names[id(row_direction(model.get_submodule(n)))] for n in dict.fromkeys(layers)
        ]
        for param in self.projected(model):
            project_rows_(param)
        return model

    def projected(self, model: nn.Module) -> list[torch.Tensor]:
        """The projected parameters (conv/linear weights feeding a norm, or their directions)."""
        return [model.get_parameter(name) for name in self.names]

    def param_groups(self, groups: list[ParamGroup], model: nn.Module) -> list[ParamGroup]:
        # Weight decay on scale-invariant weights is ill-posed (000, Sect. 2): none here.
        ids = {id(p) for p in self.projected(model)}
        return move_params(groups, ids, ParamGroup("projected", [], [], weight_decay=0.0))

    def after_step(self, model: nn.Module) -> None:
        from normstudy.models._reparam import project_rows_

        for param in self.projected(model):
            project_rows_(param)


@register_plugin
class WeightNorm(Plugin):
    """Replace BN by weight norm w/‖w‖ with a per-channel affine (s, b), data-initialized (000).

    With ``mean_only`` or ``variance_only`` (001's "WN + mean-only BN" / "WN + variance-only
    BN") the layers keep that half of BN's standardization with batch statistics (running
    averages in eval mode) after the weight-normalized conv: y = s·(Wx − μ_B) + b, or
    y = s·Wx/√(σ_B² + eps) + b, W = v/‖v‖ per row.
    """

    name = "weight_norm"
    order = 170
    conflicts: ClassVar[dict[str, str]] = {
        **_REPLACES_STATISTICS,
        "analytic_norm": "both replace BN; enable one",
    }
    # 000: projection, and fan-in inits (PyTorch defaults there) applied before the parametrization
    # (without them, weight norm on timm's own init diverges within steps on efficientnet_b0).
    partners: ClassVar[dict[str, dict[str, Any]]] = {"projection": {}, "fan_in_init": {}}
    variants: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        half: {"weight_norm": {}, half: {}, "projection": {}, "fan_in_init": {}}
        for half in ("mean_only", "variance_only")
    }

    class Options(PluginOptions):
        direction_weight_decay: bool = False
        """Apply the study's weight decay to the directions v (default off: the loss does not
        depend on ‖v‖, so decay only shrinks it and raises the effective learning rate)."""

    options: Options

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._norm import to_norm_layers
        from normstudy.models._reparam import feeding_layers, row_direction, weight_normalize

        layers = dict(to_norm_layers(model))
        pairs, unfed = feeding_layers(model, _in_chans(model))
        if unfed:
            raise ValueError(
                f"weight_norm: normalization layer {unfed[0]!r} is not fed by a conv/linear "
                "layer, so there is no weight to normalize in its place"
            )
        for layer_name, norm_name in pairs:
            weight_normalize(model.get_submodule(layer_name), layers[norm_name], self.name)
        names = {id(p): n for n, p in model.named_parameters()}
        self.directions = [names[id(row_direction(model.get_submodule(n)))] for n, _ in pairs]
        self.norms = [norm_name for _, norm_name in pairs]
        return model

    def data_init(self, model: nn.Module, inputs: torch.Tensor) -> None:
        from normstudy.models._norm import NormLayer
        from normstudy.models._reparam import weight_norm_data_init

        layers = [m for n in self.norms if isinstance(m := model.get_submodule(n), NormLayer)]
        weight_norm_data_init(model, layers, inputs)

    def param_groups(self, groups: list[ParamGroup], model: nn.Module) -> list[ParamGroup]:
        # The magnitudes g (4-D, frozen at 1) are in no group; the scale s is BN's γ.
        decay = self.ctx.config.train.weight_decay if self.options.direction_weight_decay else 0.0
        ids = {id(model.get_parameter(name)) for name in self.directions}
        return move_params(groups, ids, ParamGroup("wn_direction", [], [], weight_decay=decay))


@register_plugin
class AnalyticNorm(Plugin):
    """Normalize with statistics propagated analytically from the data moments (000, ResNets)."""

    name = "analytic_norm"
    order = 170
    conflicts: ClassVar[dict[str, str]] = {
        **_REPLACES_STATISTICS,
        "mean_only": _KEEPS_BATCH_STATISTICS,
        "variance_only": _KEEPS_BATCH_STATISTICS,
        "weight_norm": "both replace BN; enable one",
    }
    partners: ClassVar[dict[str, dict[str, Any]]] = {"projection": {}}

    @classmethod
    def check(cls, options: PluginOptions, spec: StudySpec) -> None:
        name = spec.model.name
        if not _ANALYTIC_MODELS.match(name):
            raise ValueError(
                f"plugins.analytic_norm: model.name {name!r} is not supported: moments are "
                "propagated through timm ResNets with ReLU only (test_resnet, resnet18, "
                "resnet50, ...); SiLU networks such as EfficientNet have no rectified-Gaussian "
                "moments"
            )
        act = spec.model.kwargs.get("act_layer")
        if act not in (None, "relu"):
            raise ValueError(
                f"plugins.analytic_norm: model.kwargs.act_layer {act!r} is not supported "
                "(ReLU only: its moments are those of a rectified Gaussian)"
            )

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._analytic import analytic_normalize, input_moments
        from normstudy.models._norm import to_norm_layers

        splits = self.ctx.splits
        mean, var = input_moments(splits.train.x if splits is not None else None, _in_chans(model))
        layers = [layer for _, layer in to_norm_layers(model)]
        analytic_normalize(model, layers, mean, var, self.name)
        return model
