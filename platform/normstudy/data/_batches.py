"""Batches from a split held in memory, augmented on tensors (airbench style).

Every random draw (order, crop offsets, flips) comes from the generator passed in, so a run is
reproducible from its seed. Draws happen while iterating, in batch order. The data are already
normalized (see ``load_splits``), so batches are only indexed, moved and augmented here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from normstudy.data._splits import Split
    from normstudy.spec._model import AugmentSpec

Batch = tuple[torch.Tensor, torch.Tensor]
Device = torch.device | str | None


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Reflect-pad by ``padding`` on each side, then crop back at a random offset per sample."""
    n, _, h, w = x.shape
    if padding >= min(h, w):
        raise ValueError(
            f"dataset.augment.crop_padding ({padding}) must be smaller than the image side "
            f"({min(h, w)}): reflect padding cannot reach further"
        )
    padded = F.pad(x, (padding, padding, padding, padding), mode="reflect")
    offsets = torch.randint(
        0, 2 * padding + 1, (2, n), generator=generator, device=generator.device
    )
    dy, dx = offsets.to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    # One gather for all samples: batch and channel indices broadcast against rows and cols.
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each sample left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def augment_batch(
    x: torch.Tensor, augment: AugmentSpec, generator: torch.Generator
) -> torch.Tensor:
    """Apply ``augment`` (pad-crop, then flip) to a batch; the input is not modified."""
    if augment.crop_padding:
        x = random_crop(x, augment.crop_padding, generator)
    if augment.flip:
        x = random_flip(x, generator)
    return x


def _gather(split: Split, idx: torch.Tensor, device: Device) -> Batch:
    idx = idx.to(split.x.device)
    x, y = split.x[idx], split.y[idx]
    return (x, y) if device is None else (x.to(device), y.to(device))


def train_batches(
    split: Split,
    batch_size: int,
    generator: torch.Generator,
    augment: AugmentSpec,
    drop_last: bool = True,
    device: Device = None,
) -> Iterator[Batch]:
    """One epoch of shuffled, augmented batches.

    With ``drop_last`` the last incomplete batch is dropped, except when the split is smaller
    than one batch: then the whole split comes as one smaller batch (a tiny split still trains).
    Augmentation runs after the move to ``device`` (on the GPU when the batch is there).
    """
    n = len(split)
    order = torch.randperm(n, generator=generator, device=generator.device)
    stop = n if not drop_last or n < batch_size else n - n % batch_size
    for start in range(0, stop, batch_size):
        x, y = _gather(split, order[start : min(start + batch_size, stop)], device)
        yield augment_batch(x, augment, generator), y


def eval_batches(split: Split, batch_size: int, device: Device = None) -> Iterator[Batch]:
    """The split in order, in batches of ``batch_size`` (the last may be smaller), unaugmented."""
    for start in range(0, len(split), batch_size):
        x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
        yield (x, y) if device is None else (x.to(device), y.to(device))


def sample_batch(
    split: Split,
    n: int,
    generator: torch.Generator,
    augment: AugmentSpec,
    device: Device = None,
) -> Batch:
    """``n`` random samples, augmented: distinct while ``n <= len(split)``, else with repeats."""
    size = len(split)
    if size == 0:
        raise ValueError("cannot sample from an empty split")
    if n <= size:
        idx = torch.randperm(size, generator=generator, device=generator.device)[:n]
    else:
        idx = torch.randint(0, size, (n,), generator=generator, device=generator.device)
    x, y = _gather(split, idx, device)
    return augment_batch(x, augment, generator), y
