"""The ``normstudy`` command: a few lines per command over the parts of the package.

This module holds the app, ``best``, ``ui`` and ``plugins``; ``cli_run`` (validate, run,
confirm), ``cli_report`` (report, plot, export), ``cli_cluster``, ``cli_doctor``,
``cli_tracking`` and ``cli_diagnostics`` add the others; ``cli_common`` has what they share.
Heavy libraries (torch, ray, mlflow) are imported inside the commands that need them, so
``--help``, ``validate``, ``best`` and ``report`` start fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer

from normstudy import cli_scaling
from normstudy.cli_common import HomeOpt, home_location, print_best, study_spec
from normstudy.cli_output import err, out
from normstudy.cli_output import fail as _fail
from normstudy.redact import redact

if TYPE_CHECKING:
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


def _is_scaling(paths) -> bool:  # type: ignore[no-untyped-def]
    """Whether a stored study description has a ``scale:`` section (without validating it)."""
    from normstudy.spec._yaml import parse_yaml

    data = parse_yaml(paths.spec_file.read_text())
    return isinstance(data, dict) and bool(data.get("scale"))


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

    paths = StudyPaths(home_location(home), study)
    try:  # only the search section: best must start fast
        search = load_search(paths.spec_file)
        if _is_scaling(paths):  # a scaling study: its points' best trials
            _, spec = study_spec(study, home)
            cli_scaling.best(spec, paths.home, top, cast(Literal["table", "json"], format_))
            return
    except SpecError as e:
        if not paths.spec_file.exists():
            _fail(f"no study {study!r} in {paths.home} (run it first, or pass --home)")
        _fail(str(e))
    except StorageError as e:
        _fail(str(e))
    print_best(search, paths, top, cast(Literal["table", "json"], format_))


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

    home_dir = home_location(home)
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


def _register_commands() -> None:
    """Every command, in the order ``--help`` lists them."""
    from normstudy import (
        cli_cluster,
        cli_diagnostics,
        cli_doctor,
        cli_report,
        cli_run,
        cli_tracking,
    )

    cli_run.register(app)
    app.command()(best)
    cli_report.register(app)
    app.command()(ui)
    app.command()(plugins)
    cli_diagnostics.register(app)
    cli_doctor.register(app)
    cli_cluster.register(app)
    cli_tracking.register(app)


_register_commands()


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
    try:
        app()  # standalone: ends with SystemExit
    except SystemExit as done:
        _exit_now(done.code)


def _exit_now(code: object) -> None:
    """Ends the process once the command is done: flushes the console, runs the atexit
    handlers (Ray's shutdown, logging's flush, MLflow's), then `os._exit`. What it skips is the
    interpreter's own teardown of torch, Ray, pyarrow and MLflow's modules: ~3.5 s of CPU after
    every study on a 2-core machine, with nothing left to write. While a non-daemon thread
    still runs, the interpreter's own exit (which waits for it) is kept."""
    import atexit
    import threading

    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon for t in threading.enumerate()):
        sys.exit(code)  # type: ignore[arg-type]
    if isinstance(code, str):  # sys.exit("message"): what the interpreter would print
        print(code, file=sys.stderr)
        code = 1
    status = code if isinstance(code, int) else 0 if code is None else 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
