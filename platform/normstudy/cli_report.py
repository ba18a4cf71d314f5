"""``normstudy report``, ``plot`` and ``export``: tables, figures and files from a study's
results (``register(app)`` adds them to the ``normstudy`` CLI)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer

from normstudy import cli_scaling
from normstudy.cli_common import HomeOpt, study_scores, study_spec
from normstudy.cli_output import err, out
from normstudy.cli_output import fail as _fail

if TYPE_CHECKING:
    import pyarrow as pa

    from normstudy.home import StudyPaths
    from normstudy.report import WrittenFigures
    from normstudy.spec import StudySpec
    from normstudy.storage import Location


def report(
    study: str,
    home: HomeOpt = None,
    format_: Annotated[
        list[str], typer.Option("--format", help="md, csv, latex or html (repeat)")
    ] = ["md"],  # noqa: B006
    out_dir: Annotated[
        str | None,
        typer.Option("--out", help="Folder or s3:// / gs:// URI (default reports/STUDY)."),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            help="The baseline configuration, key=value (repeat), e.g. "
            "plugins.gamma_init.value=1: adds one-sided paired t-tests over seeds (n >= 3), "
            "Holm-corrected."
        ),
    ] = None,
    figures: Annotated[
        bool,
        typer.Option("--figures", help="Also draw every figure (PNG and PDF) into OUT/figures."),
    ] = False,
    decimals: Annotated[int, typer.Option(help="Decimals of accuracies in %.")] = 1,
    highlight: Annotated[
        str,
        typer.Option(
            help="best: bold the best mean, underline what is not significantly worse; "
            "baseline: bold what beats the baseline significantly, underline the best (004)."
        ),
    ] = "best",
    labels: Annotated[
        str, typer.Option(help="short headers (γ init) with a key legend, or dotted keys.")
    ] = "short",
) -> None:
    """Export the study's tables (per trial, per configuration over seeds) and figures."""
    from normstudy.report import StudyContext, TableStyle, write_report
    from normstudy.results import read_results
    from normstudy.spec import SpecError, parse_override
    from normstudy.storage import StorageError, as_location

    bad = [f for f in format_ if f not in ("md", "csv", "latex", "html")]
    if bad:
        _fail(f"--format {bad[0]!r}: choose md, csv, latex or html")
    try:
        style = TableStyle(decimals, highlight=highlight, labels=labels)  # type: ignore[arg-type]
    except ValueError as e:
        _fail(f"--{e}")
    paths, spec = study_spec(study, home)
    if spec.scale:
        formats_ = cast(list[Literal["md", "csv", "latex", "html"]], format_)
        cli_scaling.report(spec, paths.home, out_dir, formats_, figures)
        return
    # Figures draw every epoch; tables need each trial's best only (read columnar, in batches).
    table = read_results(paths.results) if figures else None
    metric, mode = spec.search.metrics[0], spec.search.modes[0]
    data = table if table is not None else study_scores(paths, metric, mode)
    if not len(data):
        _fail(f"study {study!r} has no results yet in {paths.results}")
    try:
        base = dict(parse_override(item) for item in baseline or [])
    except SpecError as e:
        _fail(str(e).replace("--set", "--baseline"))
    if not base and spec.confirms and "baseline" in spec.configs:
        base = {"configuration": "baseline"}  # a confirm study's own baseline
    try:
        out_loc = as_location(out_dir or Path("reports") / study)
        drawn = draw_figures(spec, paths, table, out_loc / "figures") if table is not None else None
        written = write_report(
            study,
            data,
            spec.search.metrics[0],
            spec.search.modes[0],
            out_loc,
            cast(list[Literal["md", "csv", "latex", "html"]], format_),
            baseline=base or None,
            context=StudyContext.of(spec),
            style=style,
            figures=drawn.files if drawn else (),
        )
    except (ValueError, StorageError) as e:
        _fail(str(e))
    for path in [*(drawn.paths if drawn else []), *written]:
        out.print(f"wrote {path}", highlight=False, soft_wrap=True)


def plot(
    study: str,
    home: HomeOpt = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(help="Figure kinds (repeat; default all): curves, params, optuna."),
    ] = None,
    out_dir: Annotated[
        str | None, typer.Option("--out", help="Folder (default reports/STUDY/figures).")
    ] = None,
    format_: Annotated[
        list[str] | None,
        typer.Option("--format", help="png, pdf or svg (repeat; default png, pdf)"),
    ] = None,
) -> None:
    """Draw the study's figures: learning curves, score vs searched keys, Optuna's plots."""
    from normstudy.results import read_results
    from normstudy.storage import StorageError, as_location

    paths, spec = study_spec(study, home)
    if spec.scale:
        cli_scaling.plot(spec, paths.home, out_dir, format_ or ["png", "pdf"])
        return
    table = read_results(paths.results)
    try:
        folder = as_location(out_dir or Path("reports") / study / "figures")
        formats = format_ or ["png", "pdf"]
        drawn = draw_figures(spec, paths, table, folder, kinds=kind, formats=formats)
    except (ValueError, StorageError) as e:
        _fail(str(e))
    for path in drawn.paths:
        out.print(f"wrote {path}", highlight=False, soft_wrap=True)


def export(
    study: str,
    home: HomeOpt = None,
    format_: Annotated[str, typer.Option("--format", help="parquet, csv or jsonl")] = "parquet",
    out_file: Annotated[
        str | None,
        typer.Option("--out", help="File, local or s3:// / gs:// (default ./STUDY.FORMAT)."),
    ] = None,
    per_trial: Annotated[
        bool, typer.Option(help="One row per trial: its best epoch by the study's metric.")
    ] = False,
) -> None:
    """One file with the study's rows (typed as stored), for pandas, R, DuckDB, a spreadsheet."""
    from normstudy.results import EXPORT_FORMATS, export_results
    from normstudy.storage import StorageError, as_location

    if format_ not in EXPORT_FORMATS:
        _fail(f"--format {format_!r}: choose {', '.join(EXPORT_FORMATS)}")
    paths, spec = study_spec(study, home)
    objective = (spec.search.metrics[0], spec.search.modes[0]) if per_trial else None
    name = f"{study}-trials" if per_trial else study
    try:
        target = as_location(out_file or f"{name}.{format_}")
        rows = export_results(paths.results, target, format_, per_trial=objective)  # type: ignore[arg-type]
    except (ValueError, StorageError) as e:
        _fail(str(e))
    out.print(f"wrote {rows} rows to {target}", highlight=False)


def draw_figures(
    spec: StudySpec,
    paths: StudyPaths,
    table: pa.Table,
    folder: Location,
    *,
    kinds: list[str] | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    brief: bool = False,
) -> WrittenFigures:
    from normstudy.report import FigureInput, write_figures

    data = FigureInput.of(spec, paths, table, brief=brief)
    drawn = write_figures(data, folder, kinds, formats, dpi=100 if brief else 150)
    for reason in drawn.skipped:
        err.print(f"[yellow]figure skipped:[/yellow] {reason}", highlight=False, soft_wrap=True)
    return drawn


def run_figures(spec: StudySpec, paths: StudyPaths, home_arg: str) -> None:
    # The quick figures (a second or two): a run ends with where to look. Never fails the run.
    from normstudy.report import figure_kinds
    from normstudy.results import read_results

    out.print(
        f"tables and every figure: normstudy report {spec.name}{home_arg} --figures "
        "--format latex --format html",
        highlight=False,
        soft_wrap=True,
    )
    try:
        table = read_results(paths.results)
        kinds = figure_kinds(cheap_only=True)
        drawn = draw_figures(
            spec, paths, table, paths.figures, kinds=kinds, formats=["png"], brief=True
        )
    except Exception as e:  # a figure is a convenience; the results are complete
        err.print(f"[yellow]figures not drawn:[/yellow] {type(e).__name__}: {e}", highlight=False)
        return
    if drawn.paths:
        out.print(f"figures: {paths.figures}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command()(report)
    app.command()(plot)
    app.command()(export)
