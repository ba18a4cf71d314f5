"""Ghost batch norm: BN statistics per group of N consecutive samples (000, ``norm_batch``).

A ``NormLayer`` ``statistics`` stage. In training, a forward batch of n samples is cut into
groups of ``size`` consecutive samples (the last group is smaller when ``size`` does not divide
n; the ``norm_batch`` plugin rejects such training batches at validation); each sample is
normalized with the mean and biased variance of its own group, and gradients flow through the
group statistics. A batch of at most ``size`` samples is one group: exactly BN.

Running statistics: one update per forward (so the momentum means what it means for BN), with
the *average over groups* of the group means and of the group variances, the variance made
unbiased with the nominal group size (``size`` × spatial positions). Eval mode normalizes with
the running statistics, as BN does.
"""

from __future__ import annotations

import torch

from normstudy.models._norm import NormLayer, batch_statistics, reduce_dims


class GhostStatistics:
    """``(layer, x) -> (mean, var)``: statistics per group of ``size`` consecutive samples."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"ghost batch size must be >= 1, got {size}")
        self.size = size

    def __repr__(self) -> str:
        return f"GhostStatistics(size={self.size})"

    def __call__(self, layer: NormLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        uses_batch = layer.training or not layer.track_running_stats
        if not uses_batch or x.shape[0] <= self.size:
            return batch_statistics(layer, x)
        means, variances, sizes = group_statistics(x, self.size)
        if layer.training and layer.track_running_stats:
            per_sample = x[0].numel() // x.shape[1]
            layer.update_running(means.mean(0), variances.mean(0), self.size * per_sample)
        # One row per sample: its group's statistics, shaped to broadcast against x.
        shape = (x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))
        mean = means.repeat_interleave(sizes, dim=0, output_size=x.shape[0]).view(shape)
        var = variances.repeat_interleave(sizes, dim=0, output_size=x.shape[0]).view(shape)
        return mean, var


def group_statistics(x: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group channel means and biased variances, (G, C) each, and the group sizes (G,).

    Groups are ``size`` consecutive samples of ``x`` (N, C, ...); the last one keeps the rest.
    """
    n, channels = x.shape[0], x.shape[1]
    if n % size == 0:  # one reshaped reduction instead of a loop over groups
        grouped = x.view(n // size, size, *x.shape[1:])
        dims = [1, *range(3, grouped.dim())]  # (G, size, C, ...): samples and positions
        means = grouped.mean(dim=dims)
        variances = grouped.var(dim=dims, unbiased=False)
        sizes = torch.full((n // size,), size, device=x.device, dtype=torch.long)
        return means.view(-1, channels), variances.view(-1, channels), sizes
    parts = x.split(size)
    dims = reduce_dims(x)
    means = torch.stack([p.mean(dim=dims) for p in parts])
    variances = torch.stack([p.var(dim=dims, unbiased=False) for p in parts])
    sizes = torch.tensor([len(p) for p in parts], device=x.device, dtype=torch.long)
    return means, variances, sizes
