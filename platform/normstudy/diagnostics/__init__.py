"""Diagnostics of trained networks (e.g. the noise that BN's batch statistics inject).

Importing this package imports no torch: every name is loaded from its module on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from normstudy.diagnostics.bn_noise import measure_bn_noise, noise_slopes, restore_trial

_EXPORTS = {
    "measure_bn_noise": "bn_noise",
    "noise_slopes": "bn_noise",
    "restore_trial": "bn_noise",
}

__all__ = ["measure_bn_noise", "noise_slopes", "restore_trial"]


def __getattr__(name: str) -> Any:
    # PEP 562: resolve the torch-backed names lazily, on first attribute access.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'normstudy.diagnostics' has no attribute {name!r}")
    return getattr(importlib.import_module(f"normstudy.diagnostics.{module}"), name)
