"""Learning-rate schedules as one multiplier per epoch.

A multiplier (``LambdaLR``) scales each parameter group's own initial lr, so per-group lr ratios
(e.g. the lr divisor of BN γ) survive every schedule, which schedulers with an absolute
``eta_min`` would break.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from normstudy.spec import TrainSpec

WARMUP_START = 0.01


def lr_factor(train: TrainSpec, epoch: int) -> float:
    """Multiplier of the initial lr for 0-based ``epoch``."""
    s = train.schedule
    if epoch < s.warmup_epochs:
        return WARMUP_START + (1 - WARMUP_START) * epoch / s.warmup_epochs
    t = epoch - s.warmup_epochs
    span = max(1, train.epochs - s.warmup_epochs)
    if s.name == "cosine":
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t / span))
    if s.name == "step":
        return float(s.gamma ** (t // s.step_size))
    if s.name == "exponential":
        return float(s.gamma**t)
    return 1.0
