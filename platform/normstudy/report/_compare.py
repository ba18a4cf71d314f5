"""Which configurations a table emphasizes: paired tests against a reference, Holm-corrected."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from normstudy.report._stats import MIN_PAIRS, ConfigGroup, MeanStd, Mode, PairedTest, holm
from normstudy.report._stats import paired_test as _paired_test

if TYPE_CHECKING:
    from normstudy.report._context import Highlight
    from normstudy.report._render import ReportTable
    from normstudy.results import TrialScore

ALPHA = 0.05
"""Significance level of the paired tests (after Holm's correction)."""


@dataclass(frozen=True)
class Stat:
    """An aggregated column: its name, which direction is better, and a trial's value."""

    name: str
    mode: Mode
    value: Callable[[TrialScore], float | None]


def compare(
    reference: ConfigGroup, others: Mapping[int, ConfigGroup], stat: Stat, *, against: bool = False
) -> tuple[dict[int, PairedTest], dict[int, float]]:
    """Paired one-sided tests of each of ``others`` against ``reference``, Holm-corrected over
    those that could be tested (n ≥ 3 shared seeds).

    Args:
        reference: The baseline (tests: "other beats it"), or with ``against`` the best
            (tests: "it beats other").
        others: The compared configurations by row index.
        stat: The value compared, with its better direction.

    Returns:
        The tests by row index, and the Holm-adjusted p-values of those that ran.
    """
    ref = reference.samples(stat.value)
    tests = {}
    for i, group in others.items():
        samples = group.samples(stat.value)
        a, b = (ref, samples) if against else (samples, ref)
        tests[i] = _paired_test(a, b, stat.mode)
    adjusted = holm({i: t.p for i, t in tests.items() if t.p is not None})
    return tests, adjusted


def emphasize(
    table: ReportTable,
    stat: Stat,
    cells: list[MeanStd | None],
    groups: list[ConfigGroup],
    highlight: Highlight,
) -> None:
    """Bold and underline the stat's cells (rows in ``groups`` order) as ``highlight`` says."""
    means = {r: c.mean for r, c in enumerate(cells) if c is not None and not math.isnan(c.mean)}
    if not means:
        return
    best = (max if stat.mode == "max" else min)(means.values())
    top = [r for r, m in means.items() if m == best]
    if highlight == "baseline":
        table.underline |= {(r, stat.name) for r in top}
        holm_col = f"p Holm {stat.name}"
        if holm_col in table.columns:
            j = table.columns.index(holm_col)
            for r, row in enumerate(table.rows):
                if isinstance(row[j], float) and row[j] < ALPHA:
                    table.bold |= {(r, stat.name), (r, f"p {stat.name}"), (r, holm_col)}
        return
    table.bold |= {(r, stat.name) for r in top}
    others = {r: groups[r] for r in means if r not in top}
    tests, adjusted = compare(groups[top[0]], others, stat, against=True)
    # Not significantly worse: tested and not rejected (NaN: identical pairs, no difference).
    table.underline |= {(r, stat.name) for r, p in adjusted.items() if math.isnan(p) or p >= ALPHA}
    untested = sum(t.p is None for t in tests.values())
    note = (
        f"{untested} of {len(tests)} configurations share fewer than {MIN_PAIRS} seeds with the "
        "best: not compared with it, not underlined."
    )
    if untested and note not in table.notes:
        table.notes.append(note)
