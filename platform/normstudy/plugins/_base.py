"""The plugin extension point: a base class with hooks, and a registry by name.

Plugin modules must not import torch at module level: the registry is read by ``validate``
and ``plugins`` (which start without torch). Import torch inside the hooks.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from normstudy.spec._model import StudySpec, TrialConfig


class PluginOptions(BaseModel):
    """Base of every plugin's typed options: unknown keys are errors; the docstring under each
    field is its description (shown by ``normstudy plugins``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


@dataclasses.dataclass
class ParamGroup:
    """One optimizer parameter group, before the optimizer exists.

    ``kind`` is one of ``norm_weight`` (γ of normalization layers), ``norm_bias`` (β),
    ``bias`` (other biases and 1-D parameters), ``weight`` (conv/linear weights) or a plugin's own.
    """

    kind: str
    params: list[Any]
    names: list[str]
    lr_scale: float = 1.0
    weight_decay: float = 0.0


def move_params(groups: list[ParamGroup], ids: set[int], into: ParamGroup) -> list[ParamGroup]:
    """Move the parameters with these ids from every group into ``into`` (appended last);
    groups left empty are dropped."""
    for group in groups:
        kept = [(p, n) for p, n in zip(group.params, group.names, strict=True) if id(p) not in ids]
        for param, name in zip(group.params, group.names, strict=True):
            if id(param) in ids:
                into.params.append(param)
                into.names.append(name)
        group.params, group.names = [p for p, _ in kept], [n for _, n in kept]
    return [g for g in [*groups, into] if g.params]


@dataclasses.dataclass
class PluginContext:
    """What a plugin may know about the trial it is part of.

    ``splits`` (the trial's ``normstudy.data.Splits``, on ``device``) and ``generator`` are set
    once the data are loaded; ``step`` counts optimizer steps (resumes included).
    """

    config: TrialConfig
    num_classes: int
    in_chans: int
    train_size: int
    splits: Any = None
    device: Any = None
    generator: Any = None
    step: int = 0


@dataclasses.dataclass
class StepOutputs:
    """One training forward pass: what loss terms may use (all tensors keep autograd)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    embedding: torch.Tensor
    """Pooled features before the classifier (timm ``forward_head(pre_logits=True)``), before
    any dropout (timm's ``drop_rate`` and ``final_dropout`` act inside the classifier)."""
    logits: torch.Tensor
    model: nn.Module


class Plugin:
    """A switchable change to training. Override only the hooks you need.

    Hooks run in this order in a trial: ``adjust_config`` (before data and model exist),
    ``patch_model`` (after ``timm.create_model``), ``data_init`` (fresh starts only, with a
    training batch), ``param_groups`` (before the optimizer is built); per step
    ``extra_samples``, ``loss_terms``, ``before_step`` (gradients exist), ``after_step``; per
    epoch ``epoch_metrics``; with each new best-validation model ``test_metrics``.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[PluginOptions]] = PluginOptions
    order: ClassVar[int] = 100
    """Plugins are applied in ascending order (then by name): replacements before inits."""
    requires: ClassVar[dict[str, str]] = {}
    """Plugins that must be enabled with this one -> why (checked at validation)."""
    conflicts: ClassVar[dict[str, str]] = {}
    """Plugins that cannot be enabled with this one -> why (checked both ways at validation)."""
    partners: ClassVar[dict[str, dict[str, Any]]] = {}
    """Typical companions (plugin -> options) with which the registry tests run this plugin."""
    variants: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    """Further set-ups the registry tests run, by name: each a full ``plugins`` mapping (this
    plugin included) covering an option value or a combination the defaults do not reach."""
    compile_blocker: ClassVar[str | None] = None
    """Why a model with this plugin cannot be trained under ``train.compile`` (None: it can);
    such a trial trains eagerly and logs the reason. The registry tests compile every plugin
    that declares none and compare it with eager training."""

    def __init__(self, options: PluginOptions, ctx: PluginContext) -> None:
        self.options = options
        self.ctx = ctx

    @classmethod
    def check(cls, options: PluginOptions, spec: StudySpec) -> None:
        """Reject impossible studies at validation time (raise ValueError naming the fields)."""

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def adjust_config(self, config: TrialConfig) -> None:
        """Change the trial's config before data and model are built (e.g. data scaling)."""

    def patch_model(self, model: nn.Module) -> nn.Module:
        """Change the model in place or return a new one."""
        return model

    def param_groups(self, groups: list[ParamGroup], model: nn.Module) -> list[ParamGroup]:
        """Adjust (or split) optimizer parameter groups: per-group lr scale and weight decay."""
        return groups

    def data_init(self, model: nn.Module, inputs: torch.Tensor) -> None:
        """Data-dependent initialization on a training batch (not called when resuming)."""

    def extra_samples(self, batch_size: int) -> int:
        """Extra training samples the step draws for normalization only (not in the loss)."""
        return 0

    def loss_terms(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        """Extra loss terms, added to the task loss; each is also reported as ``loss/<name>``."""
        return {}

    def before_step(self, model: nn.Module) -> None:
        """Act on gradients before each optimizer step (e.g. adaptive gradient clipping)."""

    def after_step(self, model: nn.Module) -> None:
        """Act after each optimizer step (e.g. projections)."""

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """Diagnostics reported once per epoch (``self.ctx.splits`` holds the data)."""
        return {}

    def test_metrics(self, model: nn.Module) -> dict[str, float]:
        """Evaluations of each new best-validation model (reported as that epoch's test/*)."""
        return {}

    def artifacts(self, model: nn.Module) -> dict[str, str]:
        """Text files (name -> content) stored with the trial at its end (MLflow artifacts)."""
        return {}


P = TypeVar("P", bound=type[Plugin])

_REGISTRY: dict[str, type[Plugin]] = {}


def register_plugin(cls: P) -> P:
    """Class decorator: put a plugin in the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        warnings.warn(f"plugin {cls.name!r} registered twice; the later one wins", stacklevel=2)
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin() -> None:
    """Import every plugin module of this package (each registers its plugins on import)."""
    import importlib
    import pkgutil

    import normstudy.plugins as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "_base":
            importlib.import_module(f"normstudy.plugins.{info.name}")


def plugin_registry() -> dict[str, type[Plugin]]:
    """Name -> plugin class, for every registered plugin."""
    _load_builtin()
    return dict(sorted(_REGISTRY.items()))


def get_plugin(name: str) -> type[Plugin]:
    registry = plugin_registry()
    if name not in registry:
        raise ValueError(
            f"plugins.{name}: unknown plugin; registered plugins: {', '.join(registry)}"
        )
    return registry[name]


def validate_plugin_options(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Check every plugin name and its options; return options with defaults filled in."""
    out: dict[str, dict[str, Any]] = {}
    for name, options in raw.items():
        cls = get_plugin(str(name))
        if options is None:
            options = {}
        if isinstance(options, BaseModel):
            options = options.model_dump()
        if not isinstance(options, dict):
            raise ValueError(
                f"plugins.{name}: options must be a mapping (or empty), got {options!r}"
            )
        try:
            parsed = cls.Options.model_validate(options)
        except ValidationError as err:
            first = err.errors()[0]
            where = "".join(f".{p}" for p in first["loc"])  # empty for a whole-model check
            allowed = ", ".join(cls.Options.model_fields) or "none"
            raise ValueError(
                f"plugins.{name}{where}: {first['msg']} (options of {name}: {allowed})"
            ) from None
        out[str(name)] = parsed.model_dump(mode="json")
    return out


def instantiate(plugins: dict[str, dict[str, Any]], ctx: PluginContext) -> list[Plugin]:
    """Plugin objects for a trial, in application order."""
    made = []
    for name, options in plugins.items():
        cls = get_plugin(name)
        made.append(cls(cls.Options.model_validate(options), ctx))
    return sorted(made, key=lambda p: (p.order, p.name))


def check_combination(spec: StudySpec) -> None:
    """Required partners, conflicts (both ways), then every enabled plugin's own checks."""
    enabled = set(spec.plugins)
    for name in sorted(enabled):
        cls = get_plugin(name)
        for needed, why in cls.requires.items():
            if needed not in enabled:
                raise ValueError(f"plugins.{name} needs plugins.{needed}: {why}")
        for other in sorted(enabled - {name}):
            reason = cls.conflicts.get(other) or get_plugin(other).conflicts.get(name)
            if reason:
                first, second = sorted((name, other))
                raise ValueError(
                    f"plugins.{first} and plugins.{second} cannot be combined: {reason}"
                )
    for name, options in spec.plugins.items():
        cls = get_plugin(name)
        cls.check(cls.Options.model_validate(options), spec)
