"""Evaluation metrics: NLL, accuracy, expected calibration error."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from collections.abc import Iterable

    from torch import nn


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: Σ_b (n_b/N) · |acc_b − conf_b|."""
    confidence, predicted = probs.max(dim=1)
    correct = predicted.eq(targets).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)
    ece = torch.zeros((), dtype=torch.float64)
    for lo, hi in itertools.pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            gap = correct[in_bin].mean() - confidence[in_bin].double().mean()
            ece += in_bin.double().mean() * gap.abs()
    return float(ece)


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    """Loss (mean NLL), accuracy and ECE of ``model`` in eval mode over ``batches``."""
    was_training = model.training
    model.eval()
    probs, targets = [], []
    for x, y in batches:
        probs.append(F.softmax(model(x).double(), dim=1).cpu())
        targets.append(y.cpu())
    model.train(was_training)
    p, t = torch.cat(probs), torch.cat(targets)
    nll = F.nll_loss(torch.log(p.clamp_min(1e-300)), t)
    return {
        "loss": float(nll),
        "acc": float(p.argmax(1).eq(t).double().mean()),
        "ece": expected_calibration_error(p, t),
    }
