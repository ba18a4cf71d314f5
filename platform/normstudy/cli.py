"""The ``normstudy`` command: a few lines per command over the parts of the package.

Heavy libraries (torch, ray, mlflow) are imported inside the commands that need them, so
``--help``, ``validate``, ``best`` and ``report`` start fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer

from normstudy import cli_scaling
from normstudy.cli_output import err, out
from normstudy.cli_output import fail as _fail
from normstudy.redact import redact

if TYPE_CHECKING:
    import pyarrow as pa

    from normstudy.home import StudyPaths
    from normstudy.report import WrittenFigures
    from normstudy.spec import StudySpec
    from normstudy.storage import Location

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter and scaling studies of normalization: Ray Tune + Optuna over timm "
    "models, MLflow runs, Parquet results, paper-style reports.",
)


def _version(value: bool) -> None:
    if value:
        from normstudy import __version__
        from normstudy.home import git_revision

        out.print(f"normstudy {__version__} (git {git_revision()})", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Hyperparameter and scaling studies of normalization."""


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


def _load(path: Path, overrides: list[str] | None):  # type: ignore[no-untyped-def]
    from normstudy.spec import SpecError, load_spec

    try:
        return load_spec(path, overrides or [])
    except SpecError as e:
        _fail(str(e))


def _home(home: str | None):  # type: ignore[no-untyped-def]
    from normstudy.home import resolve_home
    from normstudy.storage import StorageError

    try:
        return resolve_home(home)
    except StorageError as e:
        _fail(f"--home: {e}")


def _study_spec(study: str, home: str | None):  # type: ignore[no-untyped-def]
    from normstudy.home import StudyPaths
    from normstudy.spec import SpecError, load_spec
    from normstudy.storage import StorageError

    paths = StudyPaths(_home(home), study)
    try:
        if not paths.spec_file.exists():
            _fail(f"no study {study!r} in {paths.home} (run it first, or pass --home)")
        return paths, load_spec(paths.spec_file)
    except SpecError as e:
        _fail(str(e))
    except StorageError as e:
        _fail(str(e))


@app.command()
def validate(
    path: Path,
    set_: SetOpt = None,
    cluster: Annotated[
        Path | None,
        typer.Option(
            help="A Ray cluster file (cluster.yaml, clusters/*.yaml): check it offline and "
            "that one trial's resources fit one of its node types."
        ),
    ] = None,
) -> None:
    """Check a study description; print what it would run. Exit 2 on a bad field."""
    from normstudy.search._space import num_trials

    spec = _load(path, set_)
    out.print(
        f"[green]ok[/green] {spec.name}: {num_trials(spec)} trials of {spec.model.name} on "
        f"{spec.dataset.name}, {spec.train.epochs} epochs, sampler {spec.search.sampler}, "
        f"scheduler {spec.search.scheduler.name}"
    )
    for key, dist in spec.search.space.items():
        out.print(f"  {key}: {dist.model_dump(exclude_defaults=False)}", highlight=False)
    if spec.scale:
        cli_scaling.describe(spec)
    if cluster is not None:
        _check_cluster(cluster, spec.trial_resources(), spec.train.workers)


def _check_cluster(path: Path, resources: dict[str, float], workers: int = 1) -> None:
    # `validate --cluster`: Ray's own offline checks of the file, then whether a trial fits.
    from normstudy.cluster import (
        ClusterConfigError,
        check_fits,
        describe_node_types,
        fitting_node_types,
        load_cluster_config,
    )

    try:
        config = load_cluster_config(path)
        check_fits(resources, config, path)
    except ClusterConfigError as e:
        per = (
            f" (a trial asks for train.data_parallel.workers = {workers} times resources, all on "
            "one node)"
            if workers > 1
            else ""
        )
        _fail(f"{e}{per}")
    fits = describe_node_types(fitting_node_types(resources, config))
    out.print(f"fits node types: {fits}", highlight=False, soft_wrap=True)


@app.command()
def run(
    path: Path,
    home: HomeOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted study.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Delete the study's earlier results first.")
    ] = False,
    set_: SetOpt = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow server (default: $MLFLOW_TRACKING_URI or HOME's store)."),
    ] = None,
    top: Annotated[int, typer.Option(help="Rows of the final table.")] = 10,
    env_file: Annotated[
        Path | None,
        typer.Option(
            help="KEY=value lines (MLflow URI and credentials) loaded into the environment "
            "first; `normstudy submit` ships one so that no secret shows in job listings."
        ),
    ] = None,
) -> None:
    """Run a study end to end (local Ray unless RAY_ADDRESS is set), then print the best."""
    if env_file is not None:
        from normstudy.cluster._submit import SubmitError, load_env_file

        try:
            load_env_file(env_file)
        except (OSError, SubmitError) as e:
            _fail(f"--env-file: {e}")
    spec = _load(path, set_)
    if resume and overwrite:
        _fail("--resume and --overwrite exclude each other")
    from normstudy.preflight import preflight  # torch, timm, the data: before Ray or any store

    data = cli_scaling.data_checks(env_file)
    problems = cli_scaling.preflight_parts(spec, data) if spec.scale else preflight(spec, data=data)
    if problems:
        _fail(f"{path}: the study cannot run\n" + "\n".join(f"  - {p}" for p in problems))
    if env_file is not None:
        # A Ray job runs in an unpacked working_dir that Ray may clean up before the job ends:
        # resolve paths first, then leave it.
        from normstudy.home import cache_dir

        spec = spec.with_absolute_paths()
        cache_dir().mkdir(parents=True, exist_ok=True)
        os.chdir(cache_dir())
    again = f"normstudy run {path} --resume" + (f" --home {home}" if home else "")
    if spec.scale:
        cli_scaling.run_and_show(spec, _home(home), home, resume, overwrite, tracking_uri, again)
        return
    _run_and_show(spec, home, resume, overwrite, tracking_uri, top, again)


def _run_and_show(  # type: ignore[no-untyped-def]
    spec,
    home: str | None,
    resume: bool,
    overwrite: bool,
    tracking_uri: str | None,
    top: int,
    again: str,
) -> None:
    """Runs a validated, preflighted study; prints the best trials; exits as the study ended
    (130 interrupted, 1 when trials failed)."""
    from normstudy.search import StudyStateError, run_study
    from normstudy.storage import StorageError

    home_dir = _home(home)
    try:
        outcome = run_study(
            spec, home_dir, out, resume=resume, overwrite=overwrite, tracking=tracking_uri
        )
    except (StudyStateError, StorageError) as e:
        _fail(str(e))
    if outcome.tracking_failures:
        err.print(
            f"[yellow]MLflow: {len(outcome.tracking_failures)} logging calls failed; the "
            "Parquet results are complete. First ones:[/yellow]"
        )
        for line in outcome.tracking_failures[:5]:
            err.print(f"  {redact(line)}", highlight=False)
        err.print(
            "  what waits in the outbox is sent on --resume or by: normstudy sync-mlflow "
            f"{spec.name}" + (f" --home {home_dir}" if home else ""),
            highlight=False,
        )
    _print_best(spec.search, outcome.paths, top, "table")
    out.print(f"results: {outcome.paths.results}")
    if outcome.interrupted:
        err.print(f"[yellow]interrupted[/yellow] — resume with: {again}", highlight=False)
        raise typer.Exit(130)
    if home_dir.is_local and not (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        out.print(f"MLflow UI: normstudy ui --home {home_dir}")
    _run_figures(spec, outcome.paths, f" --home {home_dir}" if home else "")
    if outcome.errored:
        _fail(f"{len(outcome.errored)} trials failed: {', '.join(outcome.errored)}", code=1)


def _run_figures(spec: StudySpec, paths: StudyPaths, home_arg: str) -> None:
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
        drawn = _draw_figures(
            spec, paths, table, paths.figures, kinds=kinds, formats=["png"], brief=True
        )
    except Exception as e:  # a figure is a convenience; the results are complete
        err.print(f"[yellow]figures not drawn:[/yellow] {type(e).__name__}: {e}", highlight=False)
        return
    if drawn.paths:
        out.print(f"figures: {paths.figures}", highlight=False, soft_wrap=True)


@app.command()
def confirm(
    study: Annotated[str, typer.Argument(help="The search study whose best to confirm.")],
    top: Annotated[int, typer.Option(help="How many of its best configurations.")] = 3,
    seeds: Annotated[int, typer.Option(help="Run each over the first N MD5 seeds.")] = 15,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            help="The baseline's values, dotted.key=value (repeat); keys it leaves out keep "
            "the study's base values. E.g. --baseline plugins.gamma_init.value=1.0"
        ),
    ] = None,
    home: HomeOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted confirm study.")] = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow server (default: $MLFLOW_TRACKING_URI or HOME's store)."),
    ] = None,
) -> None:
    """Re-run a search's top configurations (and a baseline) over many seeds, every epoch:
    a linked study HOME/STUDY-confirm whose report is the paper table."""
    from normstudy.confirm import ConfirmError, confirm_spec
    from normstudy.preflight import preflight
    from normstudy.results import read_results, trial_scores
    from normstudy.spec import SpecError, parse_override

    paths, search = _study_spec(study, home)
    try:
        pairs = dict(parse_override(text) for text in baseline or [])
        scores = trial_scores(
            read_results(paths.results), search.search.metrics[0], search.search.modes[0]
        )
        spec = confirm_spec(search, scores, top=top, seeds=seeds, baseline=pairs)
    except (ConfirmError, SpecError) as e:
        _fail(str(e))
    if problems := preflight(spec, data=not os.environ.get("RAY_ADDRESS")):
        _fail(f"{spec.name}: the study cannot run\n" + "\n".join(f"  - {p}" for p in problems))
    out.print(
        f"confirming {study}: {', '.join(spec.configs)} × {seeds} seeds -> study {spec.name}",
        highlight=False,
    )
    args = " ".join(f"--baseline {b}" for b in baseline or [])
    again = f"normstudy confirm {study} --top {top} --seeds {seeds} {args} --resume" + (
        f" --home {home}" if home else ""
    )
    _run_and_show(spec, home, resume, False, tracking_uri, top + 1, again)


def _print_best(search, paths, top: int, fmt: Literal["table", "json"]) -> None:  # type: ignore[no-untyped-def]
    from normstudy.report import best_table

    metric, mode = search.metrics[0], search.modes[0]
    searched = list(search.space)
    scores = _scores(paths, metric, mode, keys=searched)
    if fmt == "table":
        out.print(f"best {metric} ({mode}) over epochs, per trial:")
    out.print(best_table(scores, top, fmt, searched=searched), highlight=False, soft_wrap=True)


def _is_scaling(paths) -> bool:  # type: ignore[no-untyped-def]
    """Whether a stored study description has a ``scale:`` section (without validating it)."""
    from normstudy.spec._yaml import parse_yaml

    data = parse_yaml(paths.spec_file.read_text())
    return isinstance(data, dict) and bool(data.get("scale"))


def _scores(paths, metric: str, mode: str, keys: list[str] | None = None):  # type: ignore[no-untyped-def]
    from normstudy.results import read_scores
    from normstudy.storage import StorageError

    try:
        return read_scores(paths.results, metric, mode, keys=keys)  # type: ignore[arg-type]
    except (ValueError, StorageError) as e:  # an unknown metric, a newer results version
        _fail(str(e))


@app.command()
def best(
    study: str,
    home: HomeOpt = None,
    top: Annotated[int, typer.Option(help="How many trials.")] = 5,
    format_: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """The best trials of a study by its metric (read from the Parquet results)."""
    if format_ not in ("table", "json"):
        _fail(f"--format must be table or json, got {format_!r}")
    from normstudy.home import StudyPaths
    from normstudy.spec import SpecError, load_search
    from normstudy.storage import StorageError

    paths = StudyPaths(_home(home), study)
    try:  # only the search section: best must start fast
        search = load_search(paths.spec_file)
        if _is_scaling(paths):  # a scaling study: its points' best trials
            _, spec = _study_spec(study, home)
            cli_scaling.best(spec, paths.home, top, cast(Literal["table", "json"], format_))
            return
    except SpecError as e:
        if not paths.spec_file.exists():
            _fail(f"no study {study!r} in {paths.home} (run it first, or pass --home)")
        _fail(str(e))
    except StorageError as e:
        _fail(str(e))
    _print_best(search, paths, top, cast(Literal["table", "json"], format_))


@app.command()
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
    paths, spec = _study_spec(study, home)
    if spec.scale:
        formats_ = cast(list[Literal["md", "csv", "latex", "html"]], format_)
        cli_scaling.report(spec, paths.home, out_dir, formats_, figures)
        return
    # Figures draw every epoch; tables need each trial's best only (read columnar, in batches).
    table = read_results(paths.results) if figures else None
    data = (
        table if table is not None else _scores(paths, spec.search.metrics[0], spec.search.modes[0])
    )
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
        drawn = (
            _draw_figures(spec, paths, table, out_loc / "figures") if table is not None else None
        )
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


@app.command()
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

    paths, spec = _study_spec(study, home)
    if spec.scale:
        cli_scaling.plot(spec, paths.home, out_dir, format_ or ["png", "pdf"])
        return
    table = read_results(paths.results)
    try:
        folder = as_location(out_dir or Path("reports") / study / "figures")
        formats = format_ or ["png", "pdf"]
        drawn = _draw_figures(spec, paths, table, folder, kinds=kind, formats=formats)
    except (ValueError, StorageError) as e:
        _fail(str(e))
    for path in drawn.paths:
        out.print(f"wrote {path}", highlight=False, soft_wrap=True)


def _draw_figures(
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


@app.command()
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
    paths, spec = _study_spec(study, home)
    objective = (spec.search.metrics[0], spec.search.modes[0]) if per_trial else None
    name = f"{study}-trials" if per_trial else study
    try:
        target = as_location(out_file or f"{name}.{format_}")
        rows = export_results(paths.results, target, format_, per_trial=objective)  # type: ignore[arg-type]
    except (ValueError, StorageError) as e:
        _fail(str(e))
    out.print(f"wrote {rows} rows to {target}", highlight=False)


@app.command()
def ui(
    home: HomeOpt = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to serve on.")] = "127.0.0.1",
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            help="More Host headers MLflow answers besides localhost and private IPs "
            "(comma-separated, wildcards allowed: 'box.lab.org:5000,lab.*'); needed when "
            "browsers reach it by a name or a public IP."
        ),
    ] = None,
    cors_allowed_origins: Annotated[
        str | None, typer.Option(help="Origins allowed to call its API from a browser page.")
    ] = None,
) -> None:
    """Serve the MLflow UI on the study home's store (a local home; a cluster's server has
    its own UI). MLflow refuses (403) requests whose Host header is not localhost or a private
    IP unless ``--allowed-hosts`` names it: it guards against DNS rebinding."""
    from normstudy.home import local_tracking_uri

    home_dir = _home(home)
    if not home_dir.is_local:
        _fail(
            f"{home_dir} is a remote home: its runs are on the cluster's MLflow server "
            "(forward its port: ray attach cluster.yaml -p 5000, then http://127.0.0.1:5000)"
        )
    if not (home_dir / "mlflow.db").exists():
        _fail(f"no MLflow store in {home_dir} (run a study first, or pass --home)")
    mlflow = Path(sys.executable).with_name("mlflow")
    args = [
        str(mlflow),
        "server",
        "--backend-store-uri",
        local_tracking_uri(home_dir),
        "--artifacts-destination",
        (home_dir / "mlartifacts").local_path.as_uri(),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if allowed_hosts:  # added to MLflow's defaults (this machine, private IPs), not instead
        from mlflow.server.security_utils import get_default_allowed_hosts

        args += ["--allowed-hosts", ",".join([*get_default_allowed_hosts(), allowed_hosts])]
    if cors_allowed_origins:
        args += ["--cors-allowed-origins", cors_allowed_origins]
    out.print(f"MLflow UI on http://{host}:{port} (Ctrl-C stops it)")
    for name, url in _study_views(home_dir, f"http://{host}:{port}"):
        out.print(f"  {name}: {url}", highlight=False, soft_wrap=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not allowed_hosts:
        err.print(
            "note: MLflow answers 403 to a Host header that is not localhost or a private IP: "
            "pass --allowed-hosts NAME[:PORT] for the name browsers use",
            highlight=False,
        )
    os.execv(args[0], args)


def _study_views(home_dir: Location, server: str) -> list[tuple[str, str]]:
    """Each study's runs table in the UI: trials sorted by the score, the searched params."""
    from normstudy.home import local_tracking_uri
    from normstudy.tracking import view_link
    from normstudy.tracking._client import client
    from normstudy.tracking._view import TAG

    try:
        experiments = client(local_tracking_uri(home_dir)).search_experiments()
    except Exception:  # the UI serves the store anyway; only the links are missing
        return []
    return [(e.name, view_link(server, e.experiment_id)) for e in experiments if TAG in e.tags]


@app.command()
def plugins() -> None:
    """The registered plugins with their options and defaults."""
    from rich.table import Table

    from normstudy.plugins import plugin_registry

    table = Table("plugin / option", "type", "default", "description", show_lines=False)
    for name, cls in plugin_registry().items():
        table.add_row(f"[bold]{name}[/bold]", "", "", cls.describe())
        for option, field in cls.Options.model_fields.items():
            table.add_row(
                f"  {option}",
                _type_name(field.annotation),
                repr(field.get_default(call_default_factory=True)),
                field.description or "",
            )
    out.print(table)


def _type_name(annotation: object) -> str:
    import types
    import typing

    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return _type_name(args[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(a) for a in args)
    name = getattr(annotation, "__name__", None)
    return "None" if annotation is type(None) else name or str(annotation)


def _register_extra_commands() -> None:
    from normstudy import cli_cluster, cli_diagnostics, cli_doctor, cli_tracking

    cli_diagnostics.register(app)
    cli_doctor.register(app)
    cli_cluster.register(app)
    cli_tracking.register(app)


_register_extra_commands()


def _show_damaged(message: Warning | str, category: type[Warning], *args: object) -> None:
    err.print(f"[yellow]warning:[/yellow] {redact(str(message))}", highlight=False)


def main() -> None:
    import warnings

    from normstudy.results import DamagedResultWarning

    show = warnings.showwarning

    def showwarning(message: Warning | str, category: type[Warning], *args: object) -> None:
        if issubclass(category, DamagedResultWarning):
            _show_damaged(message, category)
        else:
            show(message, category, *args)  # type: ignore[arg-type]

    warnings.showwarning = showwarning  # type: ignore[assignment]
    app()
