"""Datasets in memory: sources by name, class-wise splits, and tensor batches.

Importing this package imports torch; ``normstudy.spec`` and the plugin registry never import it.
"""

from normstudy.data._batches import (
    augment_batch,
    eval_batches,
    random_crop,
    random_flip,
    sample_batch,
    train_batches,
)
from normstudy.data._sources import (
    DatasetNotFoundError,
    RawData,
    get_source,
    register_source,
    source_names,
)
from normstudy.data._splits import Split, Splits, classwise_split, load_splits

__all__ = [
    "DatasetNotFoundError",
    "RawData",
    "Split",
    "Splits",
    "augment_batch",
    "classwise_split",
    "eval_batches",
    "get_source",
    "load_splits",
    "random_crop",
    "random_flip",
    "register_source",
    "sample_batch",
    "source_names",
    "train_batches",
]
