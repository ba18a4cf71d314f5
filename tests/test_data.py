"""normstudy.data on real (bundled or generated) files: splits, sources, batches."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from normstudy.data import (
    DatasetNotFoundError,
    Split,
    classwise_split,
    eval_batches,
    load_splits,
    sample_batch,
    source_names,
    train_batches,
)
from normstudy.spec._model import DATASET_NAMES, AugmentSpec, DatasetSpec

NO_AUG = AugmentSpec()
FULL_AUG = AugmentSpec(crop_padding=2, flip=True)


def _expected_held(n: int, fraction: float) -> int:
    k = int(np.floor(fraction * n + 0.5))
    return min(max(k, 1), n - 1) if fraction > 0 and n >= 2 else k


# --- classwise_split ------------------------------------------------------------------------


def test_classwise_split_proportional_disjoint_sorted() -> None:
    counts = [50, 30, 7, 2, 1]
    targets = np.random.default_rng(1).permutation(np.repeat(np.arange(5), counts))
    kept, held = classwise_split(targets, 0.2, seed=3)
    assert np.intersect1d(kept, held).size == 0
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(targets)))
    assert np.array_equal(kept, np.sort(kept)) and np.array_equal(held, np.sort(held))
    per_class = np.bincount(targets[held], minlength=5)
    assert per_class.tolist() == [10, 6, 1, 1, 0]  # 0.4 -> at least 1; a singleton stays kept


def test_classwise_split_deterministic_and_seeded() -> None:
    targets = np.arange(200) % 4
    first = classwise_split(targets, 0.3, seed=7)
    np.random.seed(123)  # the global RNGs must not matter
    torch.manual_seed(123)
    again = classwise_split(targets, 0.3, seed=7)
    other = classwise_split(targets, 0.3, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])
    assert classwise_split(targets, 0.0, seed=7)[1].size == 0
    assert classwise_split(targets, 0.3, seed=-5)[1].size == 60  # negative seeds are fine


def test_classwise_split_class_independent_of_others() -> None:
    targets = np.array([0] * 20 + [1] * 20)
    _, held_both = classwise_split(targets, 0.25, seed=0)
    _, held_alone = classwise_split(targets[:20], 0.25, seed=0)
    assert np.array_equal(held_both[held_both < 20], held_alone)


# --- digits, normalization ------------------------------------------------------------------


def test_digits_split_sizes_and_range() -> None:
    splits = load_splits(DatasetSpec(name="digits", normalize=False))
    assert (splits.num_classes, splits.in_chans, splits.image_size) == (10, 1, 16)
    counts = np.bincount(
        np.concatenate([s.y.numpy() for s in (splits.train, splits.val, splits.test)])
    )
    assert counts.sum() == 1797
    tests = [_expected_held(n, 0.2) for n in counts]
    vals = [_expected_held(n - t, 0.1) for n, t in zip(counts, tests, strict=True)]
    assert (len(splits.test), len(splits.val)) == (sum(tests), sum(vals))
    assert len(splits.train) == 1797 - sum(tests) - sum(vals)
    for part in (splits.train, splits.val, splits.test):
        assert part.x.dtype == torch.float32 and part.y.dtype == torch.int64
        assert part.x.shape[1:] == (1, 16, 16)
        assert part.x.min() >= 0.0 and part.x.max() <= 1.0
    native = load_splits(DatasetSpec(name="digits", image_size=8, normalize=False))
    assert set((native.train.x * 16).unique().round().tolist()) == set(range(17))


def test_normalize_uses_train_statistics() -> None:
    spec = DatasetSpec(name="synthetic", num_samples=300, image_size=8, split_seed=2)
    plain = load_splits(spec.model_copy(update={"normalize": False}))
    normed = load_splits(spec)
    var, mean = torch.var_mean(normed.train.x, dim=(0, 2, 3), correction=0)
    assert torch.allclose(mean, torch.zeros(3), atol=1e-5)
    assert torch.allclose(var.sqrt(), torch.ones(3), atol=1e-4)
    assert plain.mean == pytest.approx(normed.mean) and plain.std == pytest.approx(normed.std)
    m, s = torch.tensor(plain.mean)[:, None, None], torch.tensor(plain.std)[:, None, None]
    for name in ("val", "test"):  # held-out parts use the training part's statistics
        expected = (getattr(plain, name).x - m) / s
        assert torch.allclose(getattr(normed, name).x, expected, atol=1e-5)
    assert normed.normalized and not plain.normalized
    assert plain.train.x.min() >= 0.0 and plain.train.x.max() <= 1.0


# --- torchvision sources on fabricated files ------------------------------------------------

Fabricated = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]  # uint8 NCHW, labels


def _images(n: int, c: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, c, size, size), dtype=np.uint8)


def _pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def _write_cifar10(root: Path) -> Fabricated:
    folder = root / "cifar-10-batches-py"
    train_x, test_x = _images(20, 3, 32, 0), _images(10, 3, 32, 1)
    train_y, test_y = np.arange(20) % 10, np.arange(10) % 10
    for b in range(5):  # five batches of 4 images, in torchvision's (N, 3072) channel-major rows
        rows = slice(4 * b, 4 * b + 4)
        entry = {"data": train_x[rows].reshape(4, -1), "labels": train_y[rows].tolist()}
        _pickle(folder / f"data_batch_{b + 1}", entry)
    _pickle(folder / "test_batch", {"data": test_x.reshape(10, -1), "labels": test_y.tolist()})
    _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return train_x, train_y, test_x, test_y, 10


def _write_cifar100(root: Path) -> Fabricated:
    folder = root / "cifar-100-python"
    train_x, test_x = _images(12, 3, 32, 2), _images(6, 3, 32, 3)
    train_y, test_y = np.arange(12) % 3 * 40, np.arange(6) % 3 * 40
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        entry = {
            "data": x.reshape(len(x), -1),
            "fine_labels": y.tolist(),
            "coarse_labels": [0] * len(y),
        }
        _pickle(folder / name, entry)
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    return train_x, train_y, test_x, test_y, 100


def _write_svhn(root: Path) -> Fabricated:
    root.mkdir(parents=True, exist_ok=True)
    train_x, test_x = _images(12, 3, 32, 4), _images(6, 3, 32, 5)
    train_y, test_y = np.arange(12) % 4, np.arange(6) % 4
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        # The .mat layout: X is (H, W, C, N); digit 0 is stored as label 10.
        labels = np.where(y == 0, 10, y).astype(np.uint8)[:, None]
        scipy.io.savemat(root / f"{name}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": labels})
    return train_x, train_y, test_x, test_y, 10


def _write_fashion_mnist(root: Path) -> Fabricated:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    train_x, test_x = _images(12, 1, 28, 6), _images(6, 1, 28, 7)
    train_y, test_y = np.arange(12) % 3, np.arange(6) % 3
    for prefix, x, y in (("train", train_x, train_y), ("t10k", test_x, test_y)):
        # idx-ubyte: big-endian magic (0x08 = uint8, then the number of dimensions) and sizes.
        images = struct.pack(">IIII", 0x803, len(x), 28, 28) + x.tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(images)
        labels = struct.pack(">II", 0x801, len(y)) + y.astype(np.uint8).tobytes()
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(labels)
    return train_x, train_y, test_x, test_y, 10


WRITERS: dict[str, Callable[[Path], Fabricated]] = {
    "cifar10": _write_cifar10,
    "cifar100": _write_cifar100,
    "svhn": _write_svhn,
    "fashion_mnist": _write_fashion_mnist,
}


def test_every_spec_dataset_has_a_source() -> None:
    assert set(source_names()) == set(DATASET_NAMES)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_torchvision_source_reads_fabricated_files(name: str, tmp_path: Path) -> None:
    train_x, train_y, test_x, test_y, num_classes = WRITERS[name](tmp_path)
    spec = DatasetSpec(name=name, root=str(tmp_path), val_fraction=0.0, normalize=False)  # type: ignore[arg-type]
    splits = load_splits(spec)
    assert (splits.num_classes, splits.in_chans, splits.image_size) == (
        num_classes,
        train_x.shape[1],
        train_x.shape[-1],
    )
    assert torch.equal(splits.train.x, torch.from_numpy(train_x).float() / 255)
    assert torch.equal(splits.test.x, torch.from_numpy(test_x).float() / 255)
    assert splits.train.y.tolist() == train_y.tolist()
    assert splits.test.y.tolist() == test_y.tolist()
    assert len(splits.val) == 0
    small = load_splits(spec.model_copy(update={"image_size": 16, "val_fraction": 0.25}))
    assert small.train.x.shape[1:] == (train_x.shape[1], 16, 16) and small.image_size == 16
    assert len(small.val) > 0 and len(small.train) + len(small.val) == len(train_y)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_missing_files_name_the_root(name: str, tmp_path: Path) -> None:
    spec = DatasetSpec(name=name, root=str(tmp_path / "nowhere"))  # type: ignore[arg-type]
    with pytest.raises(DatasetNotFoundError, match=r"dataset\.root.*dataset\.download: true"):
        load_splits(spec)


# --- image folders --------------------------------------------------------------------------

COLORS = {"blue": (0, 0, 255), "red": (255, 0, 0)}


def _write_pngs(folder: Path, per_class: int, classes: dict[str, tuple[int, int, int]]) -> None:
    for name, color in classes.items():
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (10 + i, 12), color).save(folder / name / f"{i}.png")
    Image.new("L", (9, 9), 128).save(folder / next(iter(classes)) / "gray.png")


def test_imagefolder_flat_layout(tmp_path: Path) -> None:
    _write_pngs(tmp_path, 5, COLORS)  # blue: 6 images (one gray), red: 5
    spec = DatasetSpec(name="imagefolder", path=str(tmp_path), image_size=8, normalize=False)
    splits = load_splits(spec)
    assert (splits.num_classes, splits.in_chans, splits.image_size) == (2, 3, 8)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 11
    assert np.bincount(splits.test.y.numpy()).tolist() == [1, 1]
    red = splits.train.x[splits.train.y == 1]  # classes are numbered in sorted order
    assert torch.allclose(red[:, 0], torch.ones(())) and torch.allclose(red[:, 2], torch.zeros(()))


def test_imagefolder_train_test_layout(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "train", 4, COLORS)
    _write_pngs(tmp_path / "test", 2, {"red": COLORS["red"]})  # a test folder may lack classes
    splits = load_splits(DatasetSpec(name="imagefolder", path=str(tmp_path), normalize=False))
    assert splits.image_size == 32 and len(splits.test) == 3
    assert splits.test.y.tolist() == [1, 1, 1]  # "red" keeps its train label
    assert len(splits.train) + len(splits.val) == 9


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"dataset\.path"):
        load_splits(DatasetSpec(name="imagefolder", path=str(tmp_path / "nowhere")))
    _write_pngs(tmp_path / "train", 2, {"red": COLORS["red"]})
    _write_pngs(tmp_path / "test", 1, {"green": (0, 255, 0)})
    with pytest.raises(ValueError, match="green"):
        load_splits(DatasetSpec(name="imagefolder", path=str(tmp_path)))


# --- synthetic ------------------------------------------------------------------------------


def test_synthetic_deterministic_and_learnable() -> None:
    spec = DatasetSpec(name="synthetic", num_samples=400, num_classes=4, channels=2, image_size=8)
    a, b = load_splits(spec), load_splits(spec)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert (a.in_chans, a.image_size, a.num_classes) == (2, 8, 4)
    other = load_splits(spec.model_copy(update={"split_seed": 1}))
    assert not torch.equal(a.train.x, other.train.x)
    # Nearest class mean, a linear classifier, must beat chance (0.25) by far.
    means = torch.stack([a.train.x[a.train.y == k].mean(0) for k in range(4)]).flatten(1)
    predicted = torch.cdist(a.test.x.flatten(1), means).argmin(1)
    assert (predicted == a.test.y).float().mean() > 0.6


# --- batches --------------------------------------------------------------------------------


def _indexed_split(n: int, size: int = 8) -> Split:
    """Sample i is filled with i, and y = i: every batch shows which samples it holds."""
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, size, size)
    return Split(x.contiguous(), torch.arange(n))


def _epoch(split: Split, seed: int, augment: AugmentSpec, **kw: object) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [t for batch in train_batches(split, 4, gen, augment, **kw) for t in batch]  # type: ignore[arg-type]


def test_train_batches_reproducible_per_seed() -> None:
    digits = load_splits(DatasetSpec(name="digits", image_size=8)).train
    split = Split(digits.x[:64], digits.y[:64])
    first, again, other = (_epoch(split, s, FULL_AUG) for s in (0, 0, 1))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_train_batches_sizes_and_coverage() -> None:
    split = _indexed_split(10)
    assert [len(y) for y in _epoch(split, 0, NO_AUG)[1::2]] == [4, 4]
    ys = _epoch(split, 0, NO_AUG, drop_last=False)[1::2]
    assert [len(y) for y in ys] == [4, 4, 2]
    assert sorted(torch.cat(ys).tolist()) == list(range(10))  # a permutation: no repeats
    tiny = _epoch(_indexed_split(3), 0, NO_AUG)  # smaller than a batch: one short batch
    assert len(tiny) == 2 and sorted(tiny[1].tolist()) == [0, 1, 2]
    x, y = _epoch(split, 0, NO_AUG, device="cpu")[:2]
    assert torch.equal(x[:, 0, 0, 0], y.float())  # images travel with their labels


def test_flip_on_an_asymmetric_image() -> None:
    ramp = torch.arange(8, dtype=torch.float32).expand(64, 1, 8, 8).contiguous()
    split = Split(ramp, torch.zeros(64, dtype=torch.int64))
    gen = torch.Generator().manual_seed(0)
    x, _ = sample_batch(split, 64, gen, AugmentSpec(flip=True))
    flipped = x[:, 0, 0, 0] == 7
    assert torch.equal(x[flipped], ramp[flipped].flip(-1)) and torch.equal(
        x[~flipped], ramp[~flipped]
    )
    assert 10 < int(flipped.sum()) < 54  # both outcomes, near 1/2


def test_crop_keeps_shape_and_takes_a_window_of_the_padded_image() -> None:
    image = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    split = Split(image.expand(32, 1, 8, 8).contiguous(), torch.zeros(32, dtype=torch.int64))
    x, _ = sample_batch(split, 32, torch.Generator().manual_seed(0), AugmentSpec(crop_padding=2))
    assert x.shape == (32, 1, 8, 8)
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2), mode="reflect")[0, 0]
    windows = {(dy, dx): padded[dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)}
    found = [next(k for k, w in windows.items() if torch.equal(w, sample[0])) for sample in x]
    assert len(set(found)) > 5  # offsets differ per sample
    with pytest.raises(ValueError, match="crop_padding"):
        sample_batch(split, 2, torch.Generator(), AugmentSpec(crop_padding=8))


def test_eval_batches_in_order_unaugmented() -> None:
    split = _indexed_split(10)
    batches = list(eval_batches(split, 4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([x for x, _ in batches]), split.x)


def test_sample_batch_seeded_and_with_repeats_beyond_size() -> None:
    split = _indexed_split(6)
    draw = [sample_batch(split, 4, torch.Generator().manual_seed(s), NO_AUG)[1] for s in (3, 3)]
    assert torch.equal(draw[0], draw[1]) and len(set(draw[0].tolist())) == 4
    x, y = sample_batch(split, 20, torch.Generator().manual_seed(0), FULL_AUG)
    assert x.shape == (20, 3, 8, 8) and len(y) == 20
