"""Short names for searched keys, and run names that say what a trial is.

In MLflow a child run is found by what was searched: ``t007 gamma_init=0.21 lr_divisor.gamma=2
lr=0.068`` rather than Tune's opaque trial id, and the searched values are params under the
same short names, apart from the full dotted config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SEARCHED_PREFIX = "searched."
"""What comes before a searched key's short name in its MLflow param (``searched.lr``): one
group that sorts and filters together, ahead of the full config."""


def _short(key: str) -> str:
    parts = key.split(".")
    if len(parts) > 1:
        parts = parts[1:]  # train.lr -> lr; plugins.gamma_init.value -> gamma_init.value
    if len(parts) > 1 and parts[-1] == "value":
        parts = parts[:-1]  # a plugin's single option
    return ".".join(parts)


def short_names(keys: Iterable[str]) -> dict[str, str]:
    """Each dotted key's short name; keys whose short names would clash keep their full name.

    Example:
        >>> short_names(["train.lr", "plugins.gamma_init.value", "plugins.lr_divisor.gamma"])
        {'train.lr': 'lr', 'plugins.gamma_init.value': 'gamma_init', 'plugins.lr_divisor.gamma': 'lr_divisor.gamma'}
    """  # noqa: E501
    keys = list(keys)
    shorts = {k: _short(k) for k in keys}
    counts: dict[str, int] = {}
    for short in shorts.values():
        counts[short] = counts.get(short, 0) + 1
    return {k: s if counts[s] == 1 else k for k, s in shorts.items()}


def flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"a.b": value}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def shown(value: Any) -> str:
    """A value as it reads in a run name: floats with 3 significant digits."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def run_name(label: str, searched: Mapping[str, Any]) -> str:
    """``label`` (e.g. ``t007``) and each searched short name with its value."""
    return " ".join([label, *(f"{k}={shown(v)}" for k, v in searched.items())])


def searched_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """Searched dotted keys' values as MLflow params: ``searched.<short name>``."""
    names = short_names(values)
    return {f"{SEARCHED_PREFIX}{names[k]}": v for k, v in values.items()}
