"""Checks that every ``search.space`` key names a config field and its values are valid there."""

from __future__ import annotations

import copy
import itertools
import math
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from normstudy.spec._model import StudySpec

SEARCHABLE_ROOTS = ("dataset", "model", "train", "evaluation", "plugins", "seed")


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """Set ``config[a][b][c] = value`` for ``key = "a.b.c"`` (creating mappings as needed)."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _field_exists(model: type[BaseModel], parts: list[str]) -> bool:
    field = model.model_fields.get(parts[0])
    if field is None:
        return False
    if len(parts) == 1:
        return True
    sub = field.annotation
    if parts[0] == "kwargs":  # model.kwargs: free-form timm arguments
        return len(parts) == 2
    return isinstance(sub, type) and issubclass(sub, BaseModel) and _field_exists(sub, parts[1:])


def resolve_config(
    base: dict[str, Any],
    params: dict[str, Any],
    variants: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """A trial's config: the study's base config with the sampled values set at their keys.

    A sampled ``configuration`` (a name of the study's ``configs``) sets that configuration's
    values first. A sampled ``variant`` adds its plugins first; sampled options of plugins that
    the chosen variant does not enable are left out (they must not switch a plugin on).
    """
    from normstudy.spec._model import merge_plugins

    config = copy.deepcopy(base)
    named = config.pop("configurations", None) or {}
    if params.get("configuration") is not None:  # a named configuration's values, then params
        name = params["configuration"]
        config["configuration"] = name
        rest = {k: v for k, v in params.items() if k != "configuration"}
        params = {**named[name], **rest}
    variant = params.get("variant")
    if variant is not None:
        config["variant"] = variant
        config["plugins"] = merge_plugins(config["plugins"], (variants or {})[variant])
    for key, value in params.items():
        if key == "variant":
            continue
        if key.startswith("plugins.") and key.split(".")[1] not in config["plugins"]:
            continue
        set_dotted(config, key, value)
    return config


def _check_variant_key(spec: StudySpec, where: str) -> None:
    if not spec.variants:
        raise ValueError(f"{where}: the study defines no variants (add a top-level 'variants:')")
    values = spec.search.space["variant"].grid_values()
    if values is None:
        raise ValueError(f"{where}: give the variants as type 'categorical' or 'grid'")
    unknown = [v for v in values if v not in spec.variants]
    if unknown:
        raise ValueError(
            f"{where}: unknown variant {unknown[0]!r}; variants: {', '.join(spec.variants)}"
        )


def _check_configuration_key(spec: StudySpec, where: str) -> None:
    if not spec.configs:
        raise ValueError(f"{where}: the study names no configurations (add 'configs:')")
    values = spec.search.space["configuration"].grid_values()
    if values is None:
        raise ValueError(f"{where}: give the configurations as type 'categorical' or 'grid'")
    unknown = [v for v in values if v not in spec.configs]
    if unknown:
        raise ValueError(
            f"{where}: unknown configuration {unknown[0]!r}; configs: {', '.join(spec.configs)}"
        )


def _check_plugin_key(spec: StudySpec, parts: list[str], where: str) -> None:
    from normstudy.plugins import get_plugin

    if len(parts) != 3:
        raise ValueError(f"{where}: plugin keys read 'plugins.<plugin>.<option>'")
    name, option = parts[1], parts[2]
    enabled = set(spec.plugins).union(*spec.variants.values())
    if name not in enabled:
        raise ValueError(
            f"{where}: plugin {name!r} is not enabled; add it under 'plugins:' (or a variant) "
            "to search its options"
        )
    options = get_plugin(name).Options.model_fields
    if option not in options:
        raise ValueError(
            f"{where}: plugin {name!r} has no option {option!r}; options: "
            f"{', '.join(options) or 'none'}"
        )


def _check_key(spec: StudySpec, key: str, where: str | None = None) -> None:
    from normstudy.spec._model import TrialConfig

    parts = key.split(".")
    where = where or f"search.space[{key!r}]"
    if parts[0] == "variant" and len(parts) == 1:
        _check_variant_key(spec, where)
    elif parts[0] == "configuration" and len(parts) == 1:
        _check_configuration_key(spec, where)
    elif parts[0] not in SEARCHABLE_ROOTS:
        raise ValueError(
            f"{where}: a space key starts with one of {', '.join(SEARCHABLE_ROOTS)} "
            "(e.g. 'train.lr', 'plugins.gamma_init.value'), or is 'variant' or 'configuration'"
        )
    elif parts[0] == "seed":
        if len(parts) != 1:
            raise ValueError(f"{where}: 'seed' has no sub-fields")
    elif parts[0] == "plugins":
        _check_plugin_key(spec, parts, where)
    elif not _field_exists(TrialConfig, parts):
        raise ValueError(f"{where}: no config field {key!r}")


def _variant_for(spec: StudySpec, key: str) -> str | None:
    """A variant under which ``key`` takes effect (None: the plain ``plugins``)."""
    if not key.startswith("plugins.") or key.split(".")[1] in spec.plugins:
        return next(iter(spec.variants), None)
    return next(v for v, plugins in spec.variants.items() if key.split(".")[1] in plugins)


MAX_GRID_CHECKS = 4096


def _check_params(spec: StudySpec, base: dict[str, Any], params: dict[str, Any], what: str) -> None:
    """The trial config of ``params`` is valid, and its plugins' own checks pass on it."""
    from normstudy.plugins import check_combination
    from normstudy.spec._model import TrialConfig

    trial = resolve_config(base, params, spec.variants)
    try:
        cfg = TrialConfig.model_validate(trial)
        resolved = spec.model_copy(
            update={k: getattr(cfg, k) for k in ("dataset", "model", "train", "plugins")}
        )
        check_combination(resolved)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{what}: {where}: {first['msg']}") from None
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None


def check_space(spec: StudySpec) -> None:
    """Every space key names a field, and every range end / choice is valid for it (and for the
    plugins' own checks); under the grid sampler every grid point is checked."""
    from normstudy.spec._model import FIXED_PER_STUDY

    # Named configurations that each pick a variant (a scaling study's transfer phase) need
    # no variant axis.
    picked = bool(spec.configs) and all("variant" in c for c in spec.configs.values())
    if spec.variants and "variant" not in spec.search.space and not picked:
        raise ValueError(
            "variants are defined but not searched: add search.space.variant "
            f"(type grid or categorical over {', '.join(spec.variants)})"
        )
    if spec.configs and "configuration" not in spec.search.space:
        raise ValueError(
            "configs are named but not searched: add search.space.configuration "
            f"(type grid or categorical over {', '.join(spec.configs)})"
        )
    base = spec.trial_base()
    for key, dist in spec.search.space.items():
        if key.startswith("train.data_parallel"):
            raise ValueError(f"search.space[{key!r}]: {FIXED_PER_STUDY}")
        _check_key(spec, key)
        if key in ("variant", "configuration"):  # a configuration is checked as a whole
            if key == "configuration":
                for name in dist.candidates():
                    _check_params(spec, base, {key: name}, f"configs.{name}")
            continue
        variant = _variant_for(spec, key)
        for value in dist.candidates():
            params = {key: value} if variant is None else {"variant": variant, key: value}
            _check_params(spec, base, params, f"search.space[{key!r}]: value {value!r}")
    if spec.search.sampler == "grid":
        _check_grid(spec, base)


def _check_grid(spec: StudySpec, base: dict[str, Any]) -> None:
    axes = {k: d.grid_values() or [] for k, d in spec.search.space.items()}
    if math.prod(len(v) for v in axes.values()) > MAX_GRID_CHECKS:
        return  # each value was checked alone; a grid this large is checked per trial
    for point in itertools.product(*axes.values()):
        params = dict(zip(axes, point, strict=True))
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        _check_params(spec, base, params, f"search.space grid point ({shown})")
