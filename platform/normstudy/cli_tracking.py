"""MLflow commands (``register(app)`` adds them to the ``normstudy`` CLI).

MLflow is imported inside the commands, so ``normstudy --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from normstudy.cli_common import HomeOpt, TrackingOpt
from normstudy.cli_output import err, out
from normstudy.cli_output import fail as _fail


def sync_mlflow(
    study: Annotated[str, typer.Argument(help="The study whose MLflow outbox to send.")],
    home: HomeOpt = None,
    tracking_uri: TrackingOpt = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 300.0,
) -> None:
    """Send what MLflow could not take during a study (its outbox) now. Exit 0 when nothing is
    left, 1 when the server does not answer or operations remain, 2 while a driver runs the
    study (it sends the outbox itself)."""
    from normstudy.home import StudyPaths, resolve_home
    from normstudy.home import tracking_uri as resolve_tracking_uri
    from normstudy.redact import redact
    from normstudy.spec import SpecError, load_spec
    from normstudy.storage import LeaseHeldError, StorageError, StudyLease
    from normstudy.tracking import sync_outbox

    try:
        paths = StudyPaths(resolve_home(home), study)
        if not paths.spec_file.exists():
            _fail(f"no study {study!r} in {paths.home} (run it first, or pass --home)")
        spec = load_spec(paths.spec_file)
        uri = resolve_tracking_uri(paths.home, tracking_uri)
        # The lease keeps a driver from starting (and sending the same outbox) meanwhile.
        with StudyLease(paths.root) as lease:
            if lease.notice:
                err.print(f"notice: {lease.notice}", highlight=False, soft_wrap=True)
            result = sync_outbox(
                uri=uri,
                study=spec.name,
                artifact_root=paths.artifacts,
                state_file=paths.tracking_state,
                timeout_s=timeout,
            )
    except LeaseHeldError as e:
        _fail(f"{e} A running driver sends the outbox itself: sync-mlflow is for after it ends.")
    except (SpecError, StorageError) as e:
        _fail(str(e))
    for line in result.problems:
        err.print(f"[yellow]not logged:[/yellow] {line}", highlight=False, soft_wrap=True)
    out.print(
        f"MLflow outbox of {study}: {result.sent} operations sent, {result.left} remain",
        highlight=False,
    )
    if result.unreachable:
        err.print(
            f"the MLflow server at {redact(uri)} does not answer ({result.unreachable}); "
            "run this again when it does",
            highlight=False,
            soft_wrap=True,
        )
    if result.left:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("sync-mlflow")(sync_mlflow)
