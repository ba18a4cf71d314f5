"""How far a study is: trials by status and the best score so far, for `normstudy status`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from normstudy.results import read_results, read_scores

if TYPE_CHECKING:
    from normstudy.results._dataset import Mode
    from normstudy.storage import Location


@dataclass(frozen=True)
class Progress:
    """Trials with rows, by status; the best score; the first and the latest write (UTC)."""

    trials: int
    counts: dict[str, int] = field(default_factory=dict)
    best: float | None = None
    first: datetime | None = None
    last: datetime | None = None


def study_progress(results: Location, metric: str, mode: Mode) -> Progress:
    """Trials with rows, counted by their latest status, and the best score among them."""
    import pyarrow.compute as pc

    scores = read_scores(results, metric, mode, keys=())
    stamps = read_results(results, columns=["meta.updated_at"])["meta.updated_at"]
    best = next((s.score for s in scores if s.score is not None), None)
    span = pc.min_max(stamps).as_py() if len(stamps) else {}
    counts = dict(Counter(s.status or "?" for s in scores))
    return Progress(len(scores), counts, best, span.get("min"), span.get("max"))


def format_duration(seconds: float | None) -> str:
    """``4m05s``, ``2h07m``; ``-`` for unknown."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
