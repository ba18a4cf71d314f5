"""``normstudy doctor`` (``register(app)`` adds it to the ``normstudy`` CLI)."""

from __future__ import annotations

from typing import Annotated

import typer

from normstudy.cli_common import HomeOpt, TrackingOpt
from normstudy.cli_output import err, out
from normstudy.cli_output import fail as _fail

_STYLE = {"ok": "green", "note": "yellow", "problem": "red"}


def doctor(
    study: Annotated[str, typer.Argument(help="The study to check.")],
    home: HomeOpt = None,
    tracking_uri: TrackingOpt = None,
    fix: Annotated[
        bool,
        typer.Option("--repair", help="Repair what can be rebuilt (not while a driver runs)."),
    ] = False,
) -> None:
    """Check a study's results, Tune state, Optuna storage and MLflow runs against each other.
    Exit 0 when no problem is left, 1 when one is, 2 when the study cannot be checked (or
    --repair while a driver runs it)."""
    from normstudy.doctor import examine, repair
    from normstudy.home import StudyPaths, resolve_home
    from normstudy.home import tracking_uri as resolve_tracking_uri
    from normstudy.redact import redact
    from normstudy.spec import SpecError, load_spec
    from normstudy.storage import LeaseHeldError, StorageError, StudyLease, live_holder

    try:
        paths = StudyPaths(resolve_home(home), study)
        if not paths.spec_file.exists():
            _fail(f"no study {study!r} in {paths.home} (run it first, or pass --home)")
        spec = load_spec(paths.spec_file)
        try:
            uri: str | None = resolve_tracking_uri(paths.home, tracking_uri)
        except StorageError:
            uri = None
        holder = None if fix else live_holder(paths.root)  # --repair: the lease says who
        if holder is not None:
            err.print(
                f"[yellow]note:[/yellow] a driver runs the study ({holder.describe()}); what "
                "it is writing may show as a problem",
                highlight=False,
                soft_wrap=True,
            )
        if fix:  # the lease keeps a driver from starting while the stores are rewritten
            with StudyLease(paths.root):
                findings = examine(spec, paths, uri)
                repair(findings)
        else:
            findings = examine(spec, paths, uri)
    except LeaseHeldError as e:
        _fail(f"{e} Repair after it ends.")
    except (SpecError, StorageError) as e:
        _fail(str(e))
    out.print(f"doctor: study {study} in {paths.home}", highlight=False)
    for f in findings:  # one line each (and never folded), for logs and grep
        level: str = "fixed" if f.fixed else f.level
        if f.level == "problem" and f.repair is not None and not f.fixed:
            level += " (repairable)"
        style = "green" if f.fixed else _STYLE[f.level]
        text = redact(f.message + (f" → {f.repaired}" if f.repaired else ""))
        out.print(
            f"{f.store:<8} [{style}]{level:<21}[/{style}] {text}", highlight=False, soft_wrap=True
        )
    left = [f for f in findings if f.level == "problem" and not f.fixed]
    if left:
        hint = "" if fix else "; `--repair` fixes those marked repairable"
        repairable = sum(1 for f in left if f.repair is not None)
        out.print(f"{len(left)} problems ({repairable} repairable){hint}", highlight=False)
        raise typer.Exit(1)
    out.print("no problems", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
