"""Dataset sources by name: each turns a ``DatasetSpec`` into images in [0, 1] and labels.

The bundled ``digits`` and the generated ``synthetic`` sources live here; the torchvision and
image-folder sources register themselves from their own modules (imported on first lookup).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from normstudy.spec._model import DatasetSpec

Source = Callable[["DatasetSpec"], "RawData"]
_SOURCES: dict[str, Source] = {}
_RESIZE_CHUNK = 4096  # images per interpolate call: bounds the temporary memory of a resize


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the spec says, and downloading was not asked for."""


@dataclasses.dataclass(frozen=True)
class RawData:
    """What a source yields: float32 images (N, C, H, W) in [0, 1], int64 labels.

    ``test_x``/``test_y`` are None for sources without a test split of their own; the test
    split is then cut class-wise from the training part (``dataset.test_fraction``).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    num_classes: int
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None


def register_source(name: str) -> Callable[[Source], Source]:
    """Register a source function under ``name`` (the ``dataset.name`` of a study)."""

    def decorate(fn: Source) -> Source:
        if name in _SOURCES:
            raise ValueError(f"dataset source {name!r} is registered twice")
        _SOURCES[name] = fn
        return fn

    return decorate


def _register_builtins() -> None:
    # Imported here, not at the top: these modules import torchvision (slow) and register
    # themselves with the decorator above, which must exist first.
    from normstudy.data import _imagefolder, _torchvision  # noqa: F401


def get_source(name: str) -> Source:
    """The source registered under ``name``."""
    _register_builtins()
    if name not in _SOURCES:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(source_names())}")
    return _SOURCES[name]


def source_names() -> list[str]:
    """Names of all registered sources, sorted."""
    _register_builtins()
    return sorted(_SOURCES)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) images to (size, size); a no-op at that size already.

    Antialiasing only acts when shrinking; its weights are non-negative, so [0, 1] is kept.
    """
    if tuple(x.shape[-2:]) == (size, size):
        return x
    chunks = [
        F.interpolate(c, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        for c in x.split(_RESIZE_CHUNK)
    ]
    return torch.cat(chunks) if chunks else x.new_zeros((0, x.shape[1], size, size))


def unit_images(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> contiguous float32 in [0, 1], resized when ``size`` is set."""
    x = images.contiguous().to(torch.float32).div_(255.0)
    return resize(x, size) if size else x


def seed_u64(seed: int) -> int:
    """Any Python int as a non-negative NumPy seed (specs allow negative seeds)."""
    return seed % 2**64


@register_source("digits")
def load_digits(spec: DatasetSpec) -> RawData:
    """scikit-learn's bundled 8x8 digits (1797 images, offline), one channel, default side 16.

    One channel, not three: the data are grayscale, and ``in_chans`` tells the model so.
    """
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.from_numpy(bunch.images / 16.0).to(torch.float32).unsqueeze(1)  # 0..16 -> [0, 1]
    y = torch.from_numpy(bunch.target).to(torch.int64)
    return RawData(train_x=resize(x, spec.image_size or 16), train_y=y, num_classes=10)


@register_source("synthetic")
def load_synthetic(spec: DatasetSpec) -> RawData:
    """Class-conditional images: a smooth random prototype per class, scaled and noised.

    Deterministic given ``split_seed``; easy by design (a linear model beats chance by far),
    so benchmarks and tests train to a visible signal in a few steps.
    """
    rng = np.random.default_rng(seed_u64(spec.split_seed))
    n, k, c, size = spec.num_samples, spec.num_classes, spec.channels, spec.image_size or 32
    coarse = torch.from_numpy(rng.random((k, c, 4, 4), dtype=np.float32))
    protos = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    y = np.arange(n) % k  # balanced classes, then shuffled so no order leaks into splits
    rng.shuffle(y)
    contrast = torch.from_numpy(rng.uniform(0.3, 1.0, (n, 1, 1, 1)).astype(np.float32))
    noise = torch.from_numpy(rng.standard_normal((n, c, size, size), dtype=np.float32))
    labels = torch.from_numpy(y).to(torch.int64)
    # 0.5 + contrast * (prototype - 0.5) + 0.3 * noise, in place: CIFAR-size data are large.
    x = noise.mul_(0.3).add_(protos[labels].sub_(0.5).mul_(contrast)).add_(0.5).clamp_(0.0, 1.0)
    return RawData(train_x=x, train_y=labels, num_classes=k)
