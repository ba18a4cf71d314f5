"""Synchronized batch statistics: BN over the global batch of a data-parallel trial
(``norm_batch`` with ``sync: true``, as ``nn.SyncBatchNorm``).

A ``NormLayer`` ``statistics`` stage. In training, every worker computes the count, mean and
sum of squared deviations of its own samples per channel (fp32, two-pass as ``torch.var``),
the workers exchange them in one differentiable all-reduce, and each combines them into the
mean and biased variance of the whole batch (Chan et al.'s pairwise formula: no cancellation of
E[x²] − E[x]²). Gradients flow through the global statistics into every worker's samples: the
backward of the all-reduce sums each worker's gradient with respect to them, so a step equals
one of BN over the global batch in one process.

Running statistics: one update per forward with the global mean and the global variance made
unbiased with the global count, exactly as ``batch_statistics`` in one process; every worker
makes the same update. Eval mode, or a world of one process, is plain BN.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from normstudy.models._norm import NormLayer, batch_statistics, channel_view, reduce_dims


def _world() -> tuple[int, int]:
    """(rank, size) of the default process group; (0, 1) without one."""
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


class _AllReduceSum(torch.autograd.Function):
    """Sum over the workers, differentiable: the gradient of each worker's input is the sum of
    every worker's output gradient. (``torch.distributed.nn.functional.all_reduce`` does this
    but is deprecated in torch 2.14 in favour of the private functional collectives.)"""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class SyncStatistics:
    """``(layer, x) -> (mean, var)``: statistics over the samples of every worker."""

    def __repr__(self) -> str:
        return "SyncStatistics()"

    def __call__(self, layer: NormLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rank, size = _world()
        if size == 1 or not (layer.training or not layer.track_running_stats):
            return batch_statistics(layer, x)
        mean, var, count = global_moments(x.float(), rank, size)
        if layer.training and layer.track_running_stats:
            layer.update_running(mean, var, count)
        return channel_view(mean, x), channel_view(var, x)


def global_moments(
    x: torch.Tensor, rank: int, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over ``x`` of every worker, and the total count.

    Each worker fills its own row of a (size, 1 + 2C) table with (count, mean, M2) and zeros
    elsewhere; one all-reduce (sum) gives every worker the whole table.
    """
    dims = reduce_dims(x)
    channels = x.shape[1]
    count = x.new_full((1,), x.numel() // channels)
    local_mean = x.mean(dim=dims)
    local_m2 = x.var(dim=dims, unbiased=False) * count
    row = torch.cat([count, local_mean, local_m2])
    zeros = torch.zeros_like(row)
    table = _AllReduceSum.apply(torch.stack([row if r == rank else zeros for r in range(size)]))
    counts, means, m2s = table[:, :1], table[:, 1 : 1 + channels], table[:, 1 + channels :]
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    m2 = m2s.sum(0) + (counts * (means - mean).square()).sum(0)
    return mean, m2 / total, total.detach()
