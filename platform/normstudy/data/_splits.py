"""Deterministic class-wise splits, and the train/val/test tensors a trial trains on."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from normstudy.data._sources import RawData, get_source, seed_u64

if TYPE_CHECKING:
    from normstudy.spec._model import DatasetSpec

_MIN_STD = 1e-6  # a constant channel (possible in tiny or synthetic data) must not divide by 0
_VAL_STREAM = 1  # added to split_seed for the val split, so it draws apart from the test split


def classwise_split(
    targets: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``fraction`` of every class, the same way for the same inputs.

    Per class of n samples, round(fraction * n) (half up) go to the held-out part; at least one
    when fraction > 0 and n >= 2, and at most n - 1, so every class stays in the kept part. Each
    class draws from its own generator seeded by (seed, label): the global RNG is never used,
    and a class's split does not depend on which other classes are present.

    Args:
        targets: Integer class labels, shape (N,).
        fraction: Share of each class to hold out, in [0, 1).
        seed: Any integer.

    Returns:
        (kept, held): sorted, disjoint index arrays whose union is ``arange(N)``.

    Example:
        >>> kept, held = classwise_split(np.array([0, 0, 0, 0, 1, 1]), 0.5, seed=0)
        >>> len(held)
        3
    """
    targets = np.asarray(targets)
    held: list[np.ndarray] = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        n = len(members)
        k = int(np.floor(fraction * n + 0.5))
        if fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        rng = np.random.default_rng([seed_u64(seed), seed_u64(int(label))])
        held.append(rng.permutation(members)[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    kept_idx = np.setdiff1d(np.arange(len(targets)), held_idx)  # sorted by construction
    return kept_idx.astype(np.int64), held_idx.astype(np.int64)


@dataclasses.dataclass
class Split:
    """One part of a dataset in memory: images ``x`` (N, C, H, W) float32, labels ``y`` int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        """A copy on ``device`` (e.g. the GPU, once, so batches need no host transfer)."""
        return Split(self.x.to(device), self.y.to(device))


@dataclasses.dataclass
class Splits:
    """The train, validation and test parts of a dataset, and what a model must know of them.

    ``mean``/``std`` are the per-channel statistics of the training part in [0, 1] scale. When
    ``normalized`` is True they have already been applied to all three parts (val and test with
    the training statistics); when False the data are in [0, 1] and mean/std are for reference.
    """

    train: Split
    val: Split
    test: Split
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalized: bool

    def to(self, device: torch.device | str) -> Splits:
        """A copy with all three parts on ``device``."""
        parts = {name: getattr(self, name).to(device) for name in ("train", "val", "test")}
        return dataclasses.replace(self, **parts)


def _take(x: torch.Tensor, y: torch.Tensor, idx: np.ndarray) -> Split:
    index = torch.from_numpy(idx)
    return Split(x[index], y[index])


def _cut(raw: RawData, spec: DatasetSpec) -> tuple[Split, Split, Split]:
    x, y = raw.train_x, raw.train_y
    labels = y.numpy()
    rest = np.arange(len(labels))
    if raw.test_x is None or raw.test_y is None:
        rest, held = classwise_split(labels, spec.test_fraction, spec.split_seed)
        test = _take(x, y, held)
    else:
        test = Split(raw.test_x, raw.test_y)
    kept, held = classwise_split(labels[rest], spec.val_fraction, spec.split_seed + _VAL_STREAM)
    return _take(x, y, rest[kept]), _take(x, y, rest[held]), test


def load_splits(spec: DatasetSpec) -> Splits:
    """Load ``spec``'s dataset into memory as train/val/test tensors.

    The test split is the dataset's own, or a class-wise ``test_fraction`` of all samples; the
    validation split is a class-wise ``val_fraction`` of the rest (both seeded by
    ``split_seed``). With ``spec.normalize``, every part is standardized with the training
    part's channel mean and std.

    Example:
        >>> from normstudy.spec._model import DatasetSpec
        >>> splits = load_splits(DatasetSpec(name="digits"))
        >>> splits.train.x.shape[1:], splits.num_classes
        (torch.Size([1, 16, 16]), 10)
    """
    raw = get_source(spec.name)(spec)
    train, val, test = _cut(raw, spec)
    var, mean = torch.var_mean(train.x, dim=(0, 2, 3), correction=0)
    std = var.sqrt().clamp_min(_MIN_STD)
    if spec.normalize:
        for part in (train, val, test):
            # In place: the parts are fresh copies (indexing), and CIFAR-size data are large.
            part.x.sub_(mean[:, None, None]).div_(std[:, None, None])
    return Splits(
        train=train,
        val=val,
        test=test,
        num_classes=raw.num_classes,
        in_chans=int(train.x.shape[1]),
        image_size=int(train.x.shape[-1]),
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
        normalized=spec.normalize,
    )
