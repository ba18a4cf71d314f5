"""What a report states about its study (captions) and how it shows numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from normstudy.spec import StudySpec

Highlight = Literal["best", "baseline"]


@dataclass(frozen=True)
class StudyContext:
    """The setting every caption states: dataset, model, epochs and seeds.

    Example:
        >>> StudyContext("cifar10", "resnet18", 200, "15 seeds (MD5 of k = 1..15)").text()
        'cifar10, resnet18, 200 epochs, 15 seeds (MD5 of k = 1..15)'
    """

    dataset: str
    model: str
    epochs: int
    seeds: str

    @classmethod
    def of(cls, spec: StudySpec) -> StudyContext:
        from normstudy.spec._model import SeedsSpec

        dataset: str = spec.dataset.name
        if spec.dataset.image_size:
            dataset += f" ({spec.dataset.image_size}px)"
        model = spec.model.name + (" (CIFAR stem)" if spec.model.cifar_stem else "")
        seeds = spec.seed_list()
        if isinstance(spec.seeds, SeedsSpec):
            text = f"{len(seeds)} seeds (MD5 of k = 1..{spec.seeds.count})"
        elif len(seeds) <= 5:
            text = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
        else:
            text = f"{len(seeds)} seeds"
        return cls(dataset, model, spec.train.epochs, text)

    def text(self) -> str:
        return f"{self.dataset}, {self.model}, {self.epochs} epochs, {self.seeds}"


@dataclass(frozen=True)
class TableStyle:
    """How tables show numbers and what they emphasize.

    Attributes:
        decimals: Decimals of metrics in percent.
        percent: Accuracies (``acc`` columns within [0, 1]) in percent; else as fractions.
        highlight: "best": bold the best mean, underline what is not significantly worse than
            it; "baseline" (004's Table 1): bold what is significantly better than the
            baseline, underline the best mean.
        labels: "short" headers (``γ init``) with a key legend, or the dotted "keys".
    """

    decimals: int = 1
    percent: bool = True
    highlight: Highlight = "best"
    labels: Literal["short", "keys"] = "short"

    def __post_init__(self) -> None:
        if not 0 <= self.decimals <= 6:
            raise ValueError(f"decimals must be within 0..6, got {self.decimals}")
        if self.highlight not in ("best", "baseline"):
            raise ValueError(f"highlight must be 'best' or 'baseline', got {self.highlight!r}")
        if self.labels not in ("short", "keys"):
            raise ValueError(f"labels must be 'short' or 'keys', got {self.labels!r}")
