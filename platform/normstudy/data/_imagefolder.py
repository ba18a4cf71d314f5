"""Image folders: ``path/<class>/*.png``, or ``path/train/<class>/`` and ``path/test/<class>/``.

Images are decoded with PIL, converted to RGB (in_chans 3, also for grayscale files) and resized
to ``image_size`` (default 32) once, into memory. A ``train/`` sub-folder switches to the split
layout, so a class may not be called ``train`` in the flat layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from normstudy.data._sources import DatasetNotFoundError, RawData, register_source, unit_images

if TYPE_CHECKING:
    from normstudy.spec._model import DatasetSpec


def _read(path: str, size: int) -> np.ndarray:
    with Image.open(path) as img:
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def _load(
    folder: Path, class_to_idx: dict[str, int], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # allow_empty: a test folder may lack some classes; the train folder is checked by the caller.
    items = make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not items:
        raise DatasetNotFoundError(
            f"dataset.path: no images ({', '.join(IMG_EXTENSIONS)}) under {str(folder)!r}"
        )
    pixels = np.stack([_read(path, size) for path, _ in items])  # (N, H, W, C)
    x = unit_images(torch.from_numpy(pixels).permute(0, 3, 1, 2), None)
    return x, torch.tensor([label for _, label in items], dtype=torch.int64)


@register_source("imagefolder")
def load_imagefolder(spec: DatasetSpec) -> RawData:
    """Load ``dataset.path``; the test split is ``test/`` when present, else cut class-wise."""
    assert spec.path is not None  # DatasetSpec requires a path for this source
    root = Path(spec.path).expanduser().resolve()
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset.path {str(root)!r} is not a folder")
    split_layout = (root / "train").is_dir()
    train_dir = root / "train" if split_layout else root
    classes, class_to_idx = find_classes(train_dir)
    size = spec.image_size or 32
    train_x, train_y = _load(train_dir, class_to_idx, size)
    test_dir = root / "test"
    if not (split_layout and test_dir.is_dir()):
        return RawData(train_x, train_y, len(classes))
    unknown = sorted(set(find_classes(test_dir)[0]) - set(classes))
    if unknown:
        raise ValueError(f"dataset.path: test/ has classes that train/ lacks: {unknown}")
    test_x, test_y = _load(test_dir, class_to_idx, size)
    return RawData(train_x, train_y, len(classes), test_x, test_y)
