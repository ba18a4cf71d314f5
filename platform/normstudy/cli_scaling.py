"""What ``run``, ``validate``, ``best`` and ``report`` do for a scaling study (a ``scale:``
section): a few lines each over `normstudy.scaling`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from normstudy.cli_output import err, out
from normstudy.cli_output import fail as _fail

if TYPE_CHECKING:
    from normstudy.spec import StudySpec
    from normstudy.storage import Location


def describe(spec: StudySpec) -> None:
    """``validate``: the scale points, each point's trials and the transfer phase's."""
    from normstudy.scaling import point_specs
    from normstudy.search._space import num_trials
    from normstudy.spec._scale import describe_point

    parts = point_specs(spec)
    seeds = len(spec.seed_list())
    out.print(
        f"  scale: {len(parts)} points × {num_trials(parts[0])} trials, then a transfer "
        f"phase of {2 * len(parts) - 1} configurations × {seeds} seeds",
        highlight=False,
    )
    for part in parts:
        out.print(f"    {part.name}: {describe_point(part.scale_point)}", highlight=False)


def preflight_parts(spec: StudySpec, *, data: bool = True) -> list[str]:
    """`preflight` of every scale point (a model or a dataset an axis reaches)."""
    from normstudy.preflight import preflight
    from normstudy.scaling import point_specs

    problems = [p for part in point_specs(spec) for p in preflight(part, data=data)]
    return list(dict.fromkeys(problems))


def run_and_show(
    spec: StudySpec,
    home_dir: Location,
    home: str | None,
    resume: bool,
    overwrite: bool,
    tracking_uri: str | None,
    again: str,
) -> None:
    """Runs a validated, preflighted scaling study, prints its optima; exits as it ended."""
    from normstudy.cli_common import show_tracking_failures
    from normstudy.scaling import load_analysis, run_scaling, scaling_tables
    from normstudy.search import StudyStateError
    from normstudy.storage import StorageError

    try:
        outcome = run_scaling(
            spec, home_dir, out, resume=resume, overwrite=overwrite, tracking=tracking_uri
        )
    except (StudyStateError, StorageError) as e:
        _fail(str(e))
    show_tracking_failures(
        outcome.tracking_failures,
        "what waits in each part's outbox is sent on --resume or by: normstudy sync-mlflow PART",
    )
    if outcome.interrupted:
        err.print(f"[yellow]interrupted[/yellow] — resume with: {again}", highlight=False)
        raise typer.Exit(130)
    if outcome.skipped_transfer:
        err.print(f"[yellow]no transfer phase:[/yellow] {outcome.skipped_transfer}")
    from normstudy.report import render

    for table in scaling_tables(load_analysis(spec, home_dir)).values():
        out.print(render(table, "md"), highlight=False, soft_wrap=True)
    more = f" --home {home}" if home else ""
    out.print(f"tables: normstudy report {spec.name}{more}", highlight=False)
    if outcome.errored:
        _fail(f"{len(outcome.errored)} trials failed: {', '.join(outcome.errored)}", code=1)


def best(spec: StudySpec, home_dir: Location, top: int, fmt: Literal["table", "json"]) -> None:
    """``best``: each scale point's best trials."""
    from normstudy.home import StudyPaths
    from normstudy.report import best_table
    from normstudy.results import read_results, trial_scores
    from normstudy.scaling import point_specs

    found = {}
    for part in point_specs(spec):
        table = read_results(StudyPaths(home_dir, part.name).results)
        scores = trial_scores(table, part.search.metrics[0], part.search.modes[0])
        found[part.name] = best_table(scores, top, fmt, searched=list(part.search.space))
        if fmt == "table":
            out.print(f"{part.name} ({', '.join(f'{k}={v}' for k, v in part.scale_point.items())})")
            out.print(found[part.name], highlight=False, soft_wrap=True)
    if fmt == "json":
        out.print(json.dumps({k: json.loads(v) for k, v in found.items()}, indent=2))


def report(
    spec: StudySpec,
    home_dir: Location,
    out_dir: str | None,
    formats: list[Literal["md", "csv", "latex", "html"]],
    figures: bool,
) -> None:
    """``report``: the scaling tables (and with ``figures`` the scaling figures), to files."""
    from normstudy.scaling import load_analysis, write_scaling_figures, write_scaling_report
    from normstudy.storage import StorageError, as_location

    analysis = load_analysis(spec, home_dir)
    if not any(p.configurations for p in analysis.points):
        _fail(f"scaling study {spec.name!r} has no scored trial yet in {home_dir}")
    try:
        folder = as_location(out_dir or Path("reports") / spec.name)
        drawn = write_scaling_figures(analysis, folder / "figures") if figures else None
        written = write_scaling_report(analysis, folder, formats, drawn.files if drawn else ())
    except (ValueError, StorageError) as e:
        _fail(str(e))
    for reason in drawn.skipped if drawn else []:
        err.print(f"[yellow]figure skipped:[/yellow] {reason}", highlight=False, soft_wrap=True)
    for path in [*(drawn.paths if drawn else []), *written]:
        out.print(f"wrote {path}", highlight=False, soft_wrap=True)


def plot(spec: StudySpec, home_dir: Location, out_dir: str | None, formats: list[str]) -> None:
    """``plot``: the scaling figures."""
    from normstudy.scaling import load_analysis, write_scaling_figures
    from normstudy.storage import StorageError, as_location

    try:
        folder = as_location(out_dir or Path("reports") / spec.name / "figures")
        drawn = write_scaling_figures(load_analysis(spec, home_dir), folder, formats)
    except (ValueError, StorageError) as e:
        _fail(str(e))
    for reason in drawn.skipped:
        err.print(f"[yellow]figure skipped:[/yellow] {reason}", highlight=False, soft_wrap=True)
    for path in drawn.paths:
        out.print(f"wrote {path}", highlight=False, soft_wrap=True)


def data_checks(env_file: Path | None) -> bool:
    return env_file is None and not os.environ.get("RAY_ADDRESS")
