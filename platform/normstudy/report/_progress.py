"""How far a study is: trials by status and the best score so far, for `normstudy status`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from normstudy.results import read_scores

if TYPE_CHECKING:
    from normstudy.results._dataset import Mode
    from normstudy.storage import Location


@dataclass(frozen=True)
class Progress:
    trials: int
    counts: dict[str, int] = field(default_factory=dict)
    best: float | None = None


def study_progress(results: Location, metric: str, mode: Mode) -> Progress:
    """Trials with rows, counted by their latest status, and the best score among them."""
    scores = read_scores(results, metric, mode, keys=())
    best = next((s.score for s in scores if s.score is not None), None)
    return Progress(len(scores), dict(Counter(s.status or "?" for s in scores)), best)
