"""The best trials of a study as a text table (rich) or JSON, for `normstudy best`."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from normstudy.report._stats import varying_keys
from normstudy.results import TrialScore

TABLE_TESTS = ("test/acc", "test/loss")


def best_table(
    scores: Sequence[TrialScore],
    top: int,
    format: Literal["table", "json"] = "table",
    *,
    searched: Iterable[str] = (),
) -> str:
    """The ``top`` best trials (all if top <= 0) as a text table or JSON.

    Config columns are those that vary between the given trials plus the ``searched`` keys.
    Values are raw (no percent scaling); JSON has null for missing or NaN numbers.

    Example:
        >>> print(best_table(trial_scores(read_results(d), "val/acc", "max"), 5))  # doctest: +SKIP
    """
    keys = sorted(set(varying_keys(s.config for s in scores)) | {_key(k) for k in searched})
    tests = sorted({k for s in scores for k in s.test})
    shown = list(scores[:top] if top > 0 else scores)
    records = [_record(s, keys, tests) for s in shown]
    if format == "json":
        return json.dumps(records, indent=2)
    if format != "table":
        raise ValueError(f"format must be 'table' or 'json', got {format!r}")
    # The terminal table keeps to the headline test metrics; JSON has them all.
    tests = [k for k in tests if k in TABLE_TESTS]
    from rich import box
    from rich.console import Console
    from rich.table import Table

    errors = ["error"] if any(s.error for s in shown) else []
    table = Table(box=box.SIMPLE_HEAD)
    for name in ["#", "trial", "seed", "status", "score", "best epoch", *keys, *tests, *errors]:
        table.add_column(name)
    for rank, s in enumerate(shown, 1):
        cells = [rank, s.trial_id, s.seed, s.status, s.score, s.best_epoch]
        texts = [_plain(c) for c in cells] + [_plain(s.config.get(k), verbatim=True) for k in keys]
        failed = [(s.error or "")[:80]] if errors else []
        table.add_row(*texts, *(_plain(s.test.get(k)) for k in tests), *failed)
    buffer = io.StringIO()
    # Wide enough never to wrap: the caller's terminal, not rich, decides.
    Console(file=buffer, width=1000, color_system=None).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def _record(score: TrialScore, keys: list[str], tests: list[str]) -> dict[str, Any]:
    return {
        "trial_id": score.trial_id,
        "seed": score.seed,
        "status": score.status,
        "score": _finite(score.score),
        "best_epoch": score.best_epoch,
        "config": {k: score.config.get(k) for k in keys},
        "test": {k: _finite(score.test.get(k)) for k in tests},
        "attempts": score.attempts,
        "error": score.error,
    }


def _key(key: str) -> str:
    return key.removeprefix("config.")


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _plain(value: Any, verbatim: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        # Metrics with fixed decimals; config values (often log-scale) with significant digits.
        return f"{value:.4g}" if verbatim else f"{value:.4f}"
    return str(value)
