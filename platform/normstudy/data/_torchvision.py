"""torchvision datasets (CIFAR-10/100, SVHN, Fashion-MNIST) read as whole arrays, no PIL.

torchvision's classes handle the download (checked against the archive's MD5 there) and the file
format; we read their ``data``/``targets`` arrays at once instead of item by item.

On integrity: torchvision re-hashes the CIFAR and SVHN files (MD5) every time a dataset is
opened. The subclasses below check that the files are present instead: a download is still
verified by torchvision against the archive's MD5, hashing ~180 MB again in every trial costs
time, and it would reject small files written in the same format (our tests' fixtures). A file
damaged after download still fails, when it is unpickled or parsed.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torchvision import datasets

from normstudy.data._sources import DatasetNotFoundError, RawData, register_source, unit_images

if TYPE_CHECKING:
    from normstudy.spec._model import DatasetSpec


class _CIFAR10(datasets.CIFAR10):
    def _check_integrity(self) -> bool:
        return all(p.is_file() for p in _cifar_files(type(self), Path(self.root)))

    def _load_meta(self) -> None:
        # Same as torchvision's, without the MD5 check (see the module docstring).
        path = Path(self.root, self.base_folder, self.meta["filename"])
        with path.open("rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class _CIFAR100(_CIFAR10, datasets.CIFAR100):
    """The file lists come from CIFAR100 (next in the MRO), the relaxed checks from _CIFAR10."""


class _SVHN(datasets.SVHN):
    def _check_integrity(self) -> bool:
        return Path(self.root, self.filename).is_file()


def _cifar_files(cls: type[datasets.CIFAR10], root: Path) -> list[Path]:
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return [root / cls.base_folder / name for name in names]


def _svhn_files(root: Path) -> list[Path]:
    return [root / datasets.SVHN.split_list[s][1] for s in ("train", "test")]


def _fashion_files(root: Path) -> list[Path]:
    raw = root / "FashionMNIST" / "raw"
    return [
        raw / f"{p}-{kind}-ubyte"
        for p in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    ]


def _root(spec: DatasetSpec) -> Path:
    assert spec.root is not None  # DatasetSpec requires a root for these sources
    return Path(spec.root).expanduser().resolve()


def _require(spec: DatasetSpec, root: Path, expected: list[Path]) -> None:
    """Fail early, naming ``dataset.root``, when files are missing and no download is asked."""
    missing = [p for p in expected if not p.is_file()]
    if missing and not spec.download:
        raise DatasetNotFoundError(
            f"dataset.root {str(root)!r} does not hold the {spec.name} files "
            f"({len(missing)} missing, e.g. {str(missing[0])!r}); point dataset.root at the folder "
            "that holds them, or set dataset.download: true to fetch them there"
        )


def _cifar(spec: DatasetSpec, cls: type[_CIFAR10]) -> RawData:
    root = _root(spec)
    _require(spec, root, _cifar_files(cls, root))
    parts = [cls(str(root), train=train, download=spec.download) for train in (True, False)]
    # .data is uint8 (N, H, W, C); labels come as a list of ints.
    xs = [unit_images(torch.from_numpy(p.data).permute(0, 3, 1, 2), spec.image_size) for p in parts]
    ys = [torch.as_tensor(p.targets, dtype=torch.int64) for p in parts]
    return RawData(xs[0], ys[0], len(parts[0].classes), xs[1], ys[1])


@register_source("cifar10")
def load_cifar10(spec: DatasetSpec) -> RawData:
    """CIFAR-10 from ``dataset.root``/cifar-10-batches-py (torchvision's layout)."""
    return _cifar(spec, _CIFAR10)


@register_source("cifar100")
def load_cifar100(spec: DatasetSpec) -> RawData:
    """CIFAR-100 (fine labels) from ``dataset.root``/cifar-100-python."""
    return _cifar(spec, _CIFAR100)


@register_source("svhn")
def load_svhn(spec: DatasetSpec) -> RawData:
    """SVHN (train and test, not extra) from ``dataset.root``/{train,test}_32x32.mat."""
    root = _root(spec)
    _require(spec, root, _svhn_files(root))
    parts = [_SVHN(str(root), split=s, download=spec.download) for s in ("train", "test")]
    # .data is uint8 (N, C, H, W); torchvision already maps label 10 to digit 0.
    xs = [unit_images(torch.from_numpy(p.data), spec.image_size) for p in parts]
    ys = [torch.as_tensor(p.labels, dtype=torch.int64) for p in parts]
    return RawData(xs[0], ys[0], 10, xs[1], ys[1])


@register_source("fashion_mnist")
def load_fashion_mnist(spec: DatasetSpec) -> RawData:
    """Fashion-MNIST from ``dataset.root``/FashionMNIST/raw (the unpacked idx-ubyte files)."""
    root = _root(spec)
    _require(spec, root, _fashion_files(root))
    # Not subclassed: MNIST-style classes name their folder after the class (FashionMNIST/raw),
    # and the raw idx files carry no MD5 check to relax.
    parts = [
        datasets.FashionMNIST(str(root), train=t, download=spec.download) for t in (True, False)
    ]
    # .data is a uint8 tensor (N, H, W): one gray channel.
    xs = [unit_images(p.data.unsqueeze(1), spec.image_size) for p in parts]
    ys = [p.targets.to(torch.int64) for p in parts]
    return RawData(xs[0], ys[0], len(parts[0].classes), xs[1], ys[1])
