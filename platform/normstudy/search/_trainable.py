"""What Ray Tune runs: the plain trial function behind a Tune reporter."""

from __future__ import annotations

from typing import Any


def tune_trainable(
    params: dict[str, Any],
    base: dict[str, Any],
    variants: dict[str, dict[str, dict[str, Any]]],
    objectives: list[tuple[str, str]],
) -> None:
    from normstudy.spec import resolve_config
    from normstudy.trial import TuneReporter, run_trial

    run_trial(resolve_config(base, params, variants), TuneReporter(), objectives)
