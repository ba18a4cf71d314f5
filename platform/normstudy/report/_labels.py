"""Short column labels for dotted config keys (``plugins.gamma_init.value`` -> ``γ init``).

Tables and figures show the label; the dotted key stays available (CSV headers, HTML header
tooltips, the key legend under each table, ``labels="keys"``). A key without a registered label
gets a readable one built from its last parts.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

_LABELS: dict[str, str] = {}


def register_label(key: str, label: str) -> None:
    """Shows config ``key`` (dotted, without ``config.``) as ``label`` in tables and figures.

    A key registered again with another label warns and takes the new one (as timm's registry
    does with a duplicate name).

    Example:
        >>> register_label("plugins.gamma_init.value", "γ init")
        >>> label("plugins.gamma_init.value")
        'γ init'
    """
    key = key.removeprefix("config.")
    if _LABELS.get(key, label) != label:
        warnings.warn(f"label of {key!r} changed: {_LABELS[key]!r} -> {label!r}", stacklevel=2)
    _LABELS[key] = label


def label(key: str) -> str:
    """The registered label of a config key, else its last part (a plugin's option: the plugin
    and the option), with underscores as spaces."""
    key = key.removeprefix("config.")
    if key in _LABELS:
        return _LABELS[key]
    parts = key.split(".")
    if parts[0] == "plugins" and len(parts) >= 3:
        parts = parts[1:]
        return " ".join(parts).replace("_", " ")
    return parts[-1].replace("_", " ")


def labels(keys: Iterable[str]) -> dict[str, str]:
    """Labels of several keys; keys whose labels would coincide are shown as their dotted key."""
    keys = list(keys)
    chosen = {k: label(k) for k in keys}
    counts: dict[str, int] = {}
    for text in chosen.values():
        counts[text] = counts.get(text, 0) + 1
    return {
        k: text if counts[text] == 1 else k.removeprefix("config.") for k, text in chosen.items()
    }


for _key, _label in {
    # 004, Revisiting BN
    "plugins.gamma_init.value": "γ init",
    "plugins.lr_divisor.gamma": "c (γ lr ÷)",
    "plugins.lr_divisor.beta": "c_β (β lr ÷)",
    # 002, Deconstructing BN
    "plugins.embedding_l2.coefficient": "λ emb. L2",
    "plugins.functional_l2.coefficient": "λ func. L2",
    "plugins.standardization.coefficient": "λ std.",
    "plugins.final_dropout.rate": "final dropout",
    # 000 and 001
    "plugins.norm_batch.size": "norm batch",
    "plugins.gamma_decay.zeta": "ζ (γ decay)",
    "plugins.dropout_after_norm.p": "dropout p",
    "plugins.bayesian_scale.kl_factor": "KL factor",
    "plugins.noise.sigma_u": "σ_u",
    "plugins.noise.sigma_v": "σ_v",
    "plugins.agc.clip": "AGC λ",
    # the training recipe
    "train.lr": "lr",
    "train.batch_size": "batch",
    "train.weight_decay": "wd",
    "train.momentum": "momentum",
    "train.epochs": "epochs",
    "train.label_smoothing": "label smoothing",
    "model.name": "model",
    "model.drop_rate": "drop rate",
    "variant": "variant",
    "configuration": "configuration",
}.items():
    register_label(_key, _label)
