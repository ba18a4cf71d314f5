"""What the ``normstudy`` commands share: their common options, finding a study and its
description, the best-trials table, and how a run's MLflow failures are shown."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from normstudy.cli_output import err, out
from normstudy.cli_output import fail as _fail
from normstudy.redact import redact

HomeOpt = Annotated[
    str | None,
    typer.Option(
        "--home",
        help="Study home: a folder, s3://bucket/prefix or gs://bucket/prefix "
        "(default: $NORMSTUDY_HOME or ./studies).",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a field before validation: dotted.key=value (repeat)."),
]
TrackingOpt = Annotated[
    str | None,
    typer.Option(help="MLflow server (default: $MLFLOW_TRACKING_URI or HOME's store)."),
]


def load_file(path: Path, overrides: list[str] | None):  # type: ignore[no-untyped-def]
    from normstudy.spec import SpecError, load_spec

    try:
        return load_spec(path, overrides or [])
    except SpecError as e:
        _fail(str(e))


def home_location(home: str | None):  # type: ignore[no-untyped-def]
    from normstudy.home import resolve_home
    from normstudy.storage import StorageError

    try:
        return resolve_home(home)
    except StorageError as e:
        _fail(f"--home: {e}")


def study_spec(study: str, home: str | None):  # type: ignore[no-untyped-def]
    from normstudy.home import StudyPaths
    from normstudy.spec import SpecError, load_spec
    from normstudy.storage import StorageError

    paths = StudyPaths(home_location(home), study)
    try:
        if not paths.spec_file.exists():
            _fail(f"no study {study!r} in {paths.home} (run it first, or pass --home)")
        return paths, load_spec(paths.spec_file)
    except SpecError as e:
        _fail(str(e))
    except StorageError as e:
        _fail(str(e))


def print_best(search, paths, top: int, fmt: Literal["table", "json"]) -> None:  # type: ignore[no-untyped-def]
    from normstudy.report import best_table

    metric, mode = search.metrics[0], search.modes[0]
    searched = list(search.space)
    scores = study_scores(paths, metric, mode, keys=searched)
    if fmt == "table":
        out.print(f"best {metric} ({mode}) over epochs, per trial:")
    out.print(best_table(scores, top, fmt, searched=searched), highlight=False, soft_wrap=True)


def study_scores(paths, metric: str, mode: str, keys: list[str] | None = None):  # type: ignore[no-untyped-def]
    from normstudy.results import read_scores
    from normstudy.storage import StorageError

    try:
        return read_scores(paths.results, metric, mode, keys=keys)  # type: ignore[arg-type]
    except (ValueError, StorageError) as e:  # an unknown metric, a newer results version
        _fail(str(e))


def show_tracking_failures(failures: list[str], then: str) -> None:
    """A run's MLflow calls that failed (the first five), and ``then``: what sends the rest."""
    if not failures:
        return
    err.print(
        f"[yellow]MLflow: {len(failures)} logging calls failed; the Parquet results are "
        "complete. First ones:[/yellow]"
    )
    for line in failures[:5]:
        err.print(f"  {redact(line)}", highlight=False)
    err.print(f"  {then}", highlight=False)
