"""Checks that every ``search.space`` key names a config field and its values are valid there."""

from __future__ import annotations

import copy
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


def _check_key(spec: StudySpec, key: str) -> None:
    from normstudy.plugins import get_plugin
    from normstudy.spec._model import TrialConfig

    parts = key.split(".")
    where = f"search.space[{key!r}]"
    if parts[0] not in SEARCHABLE_ROOTS:
        raise ValueError(
            f"{where}: a space key starts with one of {', '.join(SEARCHABLE_ROOTS)} "
            "(e.g. 'train.lr', 'plugins.gamma_init.value')"
        )
    if parts[0] == "seed":
        if len(parts) != 1:
            raise ValueError(f"{where}: 'seed' has no sub-fields")
        return
    if parts[0] == "plugins":
        if len(parts) != 3:
            raise ValueError(f"{where}: plugin keys read 'plugins.<plugin>.<option>'")
        name, option = parts[1], parts[2]
        if name not in spec.plugins:
            raise ValueError(
                f"{where}: plugin {name!r} is not enabled; add it under 'plugins:' to search "
                "its options"
            )
        options = get_plugin(name).Options.model_fields
        if option not in options:
            raise ValueError(
                f"{where}: plugin {name!r} has no option {option!r}; options: "
                f"{', '.join(options) or 'none'}"
            )
        return
    if not _field_exists(TrialConfig, parts):
        raise ValueError(f"{where}: no config field {key!r}")


def check_space(spec: StudySpec) -> None:
    """Every space key names a field, and every range end / choice is a valid value for it."""
    from normstudy.spec._model import TrialConfig

    base = spec.trial_base()
    for key, dist in spec.search.space.items():
        _check_key(spec, key)
        for value in dist.candidates():
            trial = copy.deepcopy(base)
            set_dotted(trial, key, value)
            try:
                TrialConfig.model_validate(trial)
            except ValidationError as err:
                first = err.errors()[0]
                raise ValueError(
                    f"search.space[{key!r}]: value {value!r} is not valid for {key}: {first['msg']}"
                ) from None
            except ValueError as err:
                raise ValueError(f"search.space[{key!r}]: value {value!r}: {err}") from None
