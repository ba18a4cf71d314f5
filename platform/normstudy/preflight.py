"""Checks of a study that need torch, timm or the data files, run before anything starts.

``normstudy validate`` stays light (no torch); ``normstudy run`` calls :func:`preflight` after
validation and before any store opens (while a local Ray starts: ``search.init_ray_during``),
so a study whose every trial would fail (a ``model.kwargs`` key timm does not take, a dataset
root without the dataset) exits 2 and writes nothing. ``normstudy submit`` runs the model
checks: the data live on the cluster.

Example:
    >>> from normstudy.spec import load_spec
    >>> preflight(load_spec("searchspaces/quickstart.yaml"))
    []
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from normstudy.spec import DatasetSpec, ModelSpec, StudySpec

MAX_CHECKED = 16
"""Distinct model (or dataset) configurations built per study: the study's own and those its
search space reaches, one searched key at a time."""
_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']+)'")
_TWICE = re.compile(r"multiple values for keyword argument '([^']+)'")


def preflight(spec: StudySpec, *, data: bool = True) -> list[str]:
    """What would make every trial of ``spec`` fail, one line per problem naming its field.

    Args:
        spec: A validated study.
        data: Check the dataset files too (off where trials run on other machines).
    """
    found: dict[str, str] = {}  # problem -> where it was seen first
    for model, where in _variants(spec, "model"):
        for problem in _model(model):
            found.setdefault(problem, where)
    for dataset, where in _variants(spec, "dataset") if data else []:
        for problem in _dataset(dataset):
            found.setdefault(problem, where)
    return [problem + where for problem, where in found.items()]


def _variants(spec: StudySpec, section: str) -> list[tuple[Any, str]]:
    """``spec.<section>`` and each distinct one the search space reaches (one key at a time),
    with where it comes from."""
    from normstudy.spec import TrialConfig, resolve_config

    base = spec.trial_base()
    found = {_key(getattr(spec, section)): (getattr(spec, section), "")}
    for key, dist in spec.search.space.items():
        if key.split(".")[0] != section:
            continue
        for value in dist.candidates():
            cfg = TrialConfig.model_validate(resolve_config(base, {key: value}))
            part = getattr(cfg, section)
            found.setdefault(_key(part), (part, f" (with search.space[{key!r}] = {value!r})"))
    return list(found.values())[:MAX_CHECKED]


def _key(part: Any) -> str:
    return repr(part.model_dump(mode="json"))


def _model(model: ModelSpec) -> list[str]:
    """Build the model once on the meta device (shapes only, no memory, no init cost); a
    failure there is retried on the CPU, since a few model inits need real numbers."""
    import torch

    from normstudy.models import build_model
    from normstudy.spec import TrialConfig

    config = TrialConfig.model_validate({"model": model.model_dump(mode="json")})
    try:
        with torch.device("meta"):
            build_model(config, num_classes=10, in_chans=3)
        return []
    except Exception:
        pass
    try:
        build_model(config, num_classes=10, in_chans=3)
        return []
    except Exception as err:
        return [_model_problem(model, err)]


def _model_problem(model: ModelSpec, err: Exception) -> str:
    text = str(err)
    call = f"timm.create_model({model.name!r})"
    if isinstance(err, TypeError) and (found := _UNEXPECTED.search(text)):
        return f"model.kwargs.{found[1]}: not an argument of {call} ({text})"
    if isinstance(err, TypeError) and (found := _TWICE.search(text)):
        return f"model.kwargs.{found[1]}: normstudy sets it itself; leave it out of model.kwargs"
    return f"model: {call} with model.kwargs {model.kwargs} fails: {type(err).__name__}: {text}"


def _dataset(dataset: DatasetSpec) -> list[str]:
    from normstudy.data import DatasetNotFoundError

    try:
        if dataset.name == "imagefolder":
            _check_image_folder(dataset)
        elif dataset.root is not None and not dataset.download:
            _check_root(dataset)
    except DatasetNotFoundError as err:
        return [str(err)]
    return []


def _check_root(dataset: DatasetSpec) -> None:
    # The files each torchvision source reads: the data package's own lists and check, reached
    # in one place here so that a missing file is named exactly as a trial would name it.
    from normstudy.data import DatasetNotFoundError
    from normstudy.data import _torchvision as tv

    root = Path(dataset.root or "").expanduser().resolve()
    files = {
        "cifar10": lambda: tv._cifar_files(tv._CIFAR10, root),
        "cifar100": lambda: tv._cifar_files(tv._CIFAR100, root),
        "svhn": lambda: tv._svhn_files(root),
        "fashion_mnist": lambda: tv._fashion_files(root),
    }.get(dataset.name)
    if files is None:
        return  # digits and synthetic read no files
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"dataset.root {str(root)!r} is not a folder; point it at the {dataset.name} files, "
            "or set dataset.download: true to fetch them there"
        )
    tv._require(dataset, root, files())


def _check_image_folder(dataset: DatasetSpec) -> None:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

    from normstudy.data import DatasetNotFoundError

    root = Path(dataset.path or "").expanduser().resolve()
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset.path {str(root)!r} is not a folder")
    train = root / "train" if (root / "train").is_dir() else root
    try:
        classes, _ = find_classes(str(train))
    except FileNotFoundError:
        raise DatasetNotFoundError(
            f"dataset.path {str(train)!r} holds no class folders (one sub-folder per class)"
        ) from None
    for name in classes:
        if any(p.suffix.lower() in IMG_EXTENSIONS for p in (train / name).rglob("*")):
            return
    raise DatasetNotFoundError(
        f"dataset.path: no images ({', '.join(IMG_EXTENSIONS)}) under {str(train)!r}"
    )
