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


@dataclasses.dataclass
class PluginContext:
    """What a plugin may know about the trial it is part of."""

    config: TrialConfig
    num_classes: int
    in_chans: int
    train_size: int


@dataclasses.dataclass
class StepOutputs:
    """One training forward pass: what loss terms may use (all tensors keep autograd)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    embedding: torch.Tensor
    """Pooled features before the classifier (timm ``forward_head(pre_logits=True)``)."""
    logits: torch.Tensor
    model: nn.Module


class Plugin:
    """A switchable change to training. Override only the hooks you need.

    Hooks run in this order in a trial: ``adjust_config`` (before data and model exist),
    ``patch_model`` (after ``timm.create_model``), ``param_groups`` (before the optimizer is
    built), then per step ``loss_terms`` and ``after_step``; per epoch ``epoch_metrics``.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[PluginOptions]] = PluginOptions
    order: ClassVar[int] = 100
    """Plugins are applied in ascending order (then by name): replacements before inits."""

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

    def loss_terms(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        """Extra loss terms, added to the task loss; each is also reported as ``loss/<name>``."""
        return {}

    def after_step(self, model: nn.Module) -> None:
        """Act after each optimizer step (e.g. projections)."""

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """Diagnostics reported once per epoch."""
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
    from normstudy.plugins import _revisiting  # noqa: F401  (registers on import)


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
            where = ".".join(str(p) for p in first["loc"])
            allowed = ", ".join(cls.Options.model_fields) or "none"
            raise ValueError(
                f"plugins.{name}.{where}: {first['msg']} (options of {name}: {allowed})"
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
    """Run every enabled plugin's validation-time checks."""
    for name, options in spec.plugins.items():
        cls = get_plugin(name)
        cls.check(cls.Options.model_validate(options), spec)
