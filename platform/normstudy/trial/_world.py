"""What one worker of a data-parallel trial does differently: its slice of each batch, its own
random stream, and the few collectives of an epoch (``train.data_parallel``).

A one-process trial has the world ``SOLO``, for which every method here is the identity, so
the trial's code reads the same for both. The processes themselves are started and stopped by
``normstudy.trial._parallel``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch import nn


@dataclasses.dataclass(frozen=True)
class World:
    """This process's ``rank`` among the ``size`` workers of its trial."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Worker 0: the process that evaluates, reports and checkpoints."""
        return self.rank == 0

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This worker's slice [r·n/k, (r+1)·n/k) of a global batch (dim 0)."""
        if self.size == 1:
            return t
        n = len(t)
        return t[self.rank * n // self.size : (self.rank + 1) * n // self.size]

    def reseed(self, generator: torch.Generator) -> None:
        """Give workers 1.. their own stream of the global RNG (noise, dropout), derived from
        the trial's shared ``generator`` and the rank without drawing from it. Called at each
        epoch's start, so a resumed trial (which restores ``generator``) draws as before; worker
        0 keeps the stream a checkpoint stores."""
        if self.rank == 0:
            return
        state = generator.get_state().numpy().tobytes()
        digest = hashlib.blake2b(state + self.rank.to_bytes(4, "little"), digest_size=8).digest()
        torch.manual_seed(int.from_bytes(digest, "little") >> 1)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the workers (an epoch's metric sums)."""
        if self.size == 1:
            return values
        import torch.distributed as dist

        values = values.clone()
        dist.all_reduce(values)
        return values

    def average_buffers(self, model: nn.Module) -> None:
        """Average floating-point buffers (running statistics) over the workers, in one
        collective. The running-average update is linear, so with per-device statistics the
        mean equals what ghost BN of the per-device size keeps in one process."""
        if self.size == 1:
            return
        import torch.distributed as dist

        buffers = [b for b in model.buffers() if b.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([b.detach().reshape(-1).double() for b in buffers])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for b in buffers:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` under DistributedDataParallel (gradients averaged over the workers);
        buffers stay per worker (``average_buffers`` merges them once per epoch)."""
        if self.size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # No buffer broadcast before each forward (torch 2.14's name for broadcast_buffers);
        # the one at construction is harmless: every worker starts with the same buffers.
        return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)


SOLO = World()
"""A one-process trial."""
