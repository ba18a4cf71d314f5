"""Cluster commands (``register(app)`` adds them): ``submit`` a study as a Ray job, ``status``.

Ray and MLflow are imported inside the commands, so ``normstudy --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from normstudy.cli_output import err, out
from normstudy.cli_output import fail as _fail


def submit(
    path: Annotated[str, typer.Argument(help="The study description (YAML).")],
    address: Annotated[
        str,
        typer.Option(
            envvar="RAY_ADDRESS",
            help="The cluster's dashboard / Jobs API, e.g. http://127.0.0.1:8265 "
            "(forwarded by `ray dashboard cluster.yaml`).",
        ),
    ],
    home: Annotated[
        str | None,
        typer.Option(help="Study home shared by the cluster: s3://..., gs://... or an NFS path."),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: dotted.key=value.")
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="The cluster's MLflow server as both the driver and this machine reach it "
            "(default: $MLFLOW_TRACKING_URI).",
        ),
    ] = None,
    follow_: Annotated[bool, typer.Option("--follow", help="Stream the job's logs.")] = False,
) -> None:
    """Validate a study here, then run it on a Ray cluster as a job (an existing study
    resumes). Credentials come from this machine's environment, never from the YAML."""
    import os

    from normstudy.cluster._submit import SubmitError, check_tracking, follow, submit_study
    from normstudy.home import StudyPaths, resolve_home
    from normstudy.spec import SpecError, load_spec
    from normstudy.storage import StorageError

    try:
        spec = load_spec(path, set_ or [])
    except SpecError as e:
        _fail(str(e))
    if not (home or os.environ.get("NORMSTUDY_HOME")):
        _fail(
            "submit needs --home (or NORMSTUDY_HOME): a home every node reaches, "
            "s3://bucket/prefix, gs://bucket/prefix or an NFS path mounted on every node"
        )
    from normstudy.preflight import preflight  # the model here; the data are on the cluster

    if problems := preflight(spec, data=False):
        _fail(f"{path}: the study cannot run\n" + "\n".join(f"  - {p}" for p in problems))
    try:
        paths = StudyPaths(resolve_home(home), spec.name)
    except StorageError as e:
        _fail(f"--home: {e}")
    if paths.home.is_local:
        err.print(
            f"note: {paths.home} is a local path: every node of the cluster must mount it there "
            "(NFS); otherwise use s3:// or gs://",
            highlight=False,
        )
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not paths.home.is_local and not uri:
        _fail(
            "a study on a cluster logs to the head node's MLflow server: pass --tracking-uri "
            "(e.g. http://127.0.0.1:5000 through `ray attach cluster.yaml -p 5000`) or set "
            "MLFLOW_TRACKING_URI"
        )
    try:
        if uri:
            check_tracking(uri)
        submission = submit_study(spec, paths, address=address, tracking_uri=uri)
    except (SubmitError, StorageError) as e:
        _fail(str(e))
    verb = "resumes" if submission.resumed else "runs"
    out.print(f"submitted {submission.submission_id}: {verb} {spec.name} in {paths.home}")
    out.print(f"follow it: ray job logs --follow {submission.submission_id} --address {address}")
    if follow_:
        status = follow(address, submission.submission_id, lambda t: sys.stdout.write(t))
        out.print(f"job {submission.submission_id}: {status}")
        if status != "SUCCEEDED":
            raise typer.Exit(1)


def status(
    study: Annotated[str | None, typer.Argument(help="One study (default: all).")] = None,
    home: Annotated[
        str | None, typer.Option(help="Study home (default: $NORMSTUDY_HOME or ./studies).")
    ] = None,
    format_: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    watch: Annotated[bool, typer.Option("--watch", help="Refresh the table until Ctrl-C.")] = False,
    every: Annotated[
        float, typer.Option(help="Seconds between refreshes with --watch.", min=0.5)
    ] = 5.0,
) -> None:
    """The studies of a home: trials done / running / pruned / failed, best so far, elapsed
    time, the driver or job."""
    import json

    from normstudy.home import resolve_home
    from normstudy.storage import StorageError

    try:
        home_loc = resolve_home(home)
    except StorageError as e:
        _fail(str(e))
    if study and not (home_loc / study / "study.yaml").exists():
        _fail(f"no study {study!r} in {home_loc} (pass --home)")
    if format_ not in ("table", "json"):
        _fail(f"--format must be table or json, got {format_!r}")
    if watch and format_ == "json":
        _fail("--watch shows a table: drop --format json (or poll `status --format json`)")
    if not watch:
        records = _status_records(home_loc, study)
        if format_ == "json":
            out.print_json(json.dumps(records))
        else:
            out.print(_status_table(home_loc, records))
        return
    _watch(home_loc, study, every)


def _watch(home_loc: Any, study: str | None, every: float) -> None:
    import time

    from rich.live import Live

    try:
        with Live(console=out, auto_refresh=False) as live:
            while True:
                live.update(_status_table(home_loc, _status_records(home_loc, study)))
                live.refresh()
                time.sleep(every)
    except KeyboardInterrupt:
        pass


def _status_records(home_loc: Any, study: str | None) -> list[dict[str, Any]]:
    from datetime import UTC, datetime

    from normstudy.cluster._submit import job_state
    from normstudy.home import StudyPaths, list_studies
    from normstudy.report import study_progress
    from normstudy.spec import SpecError, load_spec
    from normstudy.storage import StorageError, live_holder

    try:
        names = [study] if study else list_studies(home_loc)
    except StorageError as e:
        _fail(str(e))
    records: list[dict[str, Any]] = []
    for name in names:
        paths = StudyPaths(home_loc, name)
        try:
            spec = load_spec(paths.spec_file)
            metric = spec.search.metrics[0]
            parts = _scaling_parts(home_loc, name) if spec.scale else [name]
            p = _sum_progress(
                [study_progress(StudyPaths(home_loc, n).results, metric, spec.search.modes[0])
                 for n in parts]
            )  # fmt: skip
            holder = live_holder(paths.root)
        except (SpecError, StorageError, ValueError) as e:
            records.append({"study": name, "error": str(e)})
            continue
        end = datetime.now(UTC) if holder is not None else p.last
        elapsed = (end - p.first).total_seconds() if p.first and end else None
        job = job_state(paths)
        if holder is not None and job in ("", "-", None):
            job = f"driver on {holder.host} (pid {holder.pid})"
        if spec.scale:
            job = f"scaling study over {len(parts)} parts; {job}"
        records.append(
            {
                "study": name,
                "trials": p.trials,
                "of": None if spec.scale else _planned(spec),
                **{k: p.counts.get(s, 0) for k, s in _COUNTS.items()},
                "metric": metric,
                "best": p.best,
                "elapsed_s": elapsed,
                "running_now": holder is not None,
                "job": job,
            }
        )
    return records


def _scaling_parts(home_loc: Any, name: str) -> list[str]:
    """The studies a scaling study ran: one per scale point, and the transfer study."""
    import re

    from normstudy.home import list_studies

    part = re.compile(rf"{re.escape(name)}-(s\d+|transfer)")
    return [n for n in list_studies(home_loc) if part.fullmatch(n)]


def _sum_progress(parts: list[Any]) -> Any:
    """One study's progress, or a scaling study's over its parts (no best: scales differ)."""
    from normstudy.report import Progress

    if len(parts) == 1:
        return parts[0]
    counts: dict[str, int] = {}
    for p in parts:
        for status, n in p.counts.items():
            counts[status] = counts.get(status, 0) + n
    firsts = [p.first for p in parts if p.first]
    lasts = [p.last for p in parts if p.last]
    return Progress(
        sum(p.trials for p in parts),
        counts,
        None,
        min(firsts) if firsts else None,
        max(lasts) if lasts else None,
    )


def _planned(spec: Any) -> int | None:
    from normstudy.search._space import num_trials

    try:
        return int(num_trials(spec))
    except Exception:
        return None


def _status_table(home_loc: Any, records: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    from normstudy.report import format_duration

    if not records:
        return f"no studies in {home_loc}"
    table = Table("study", "trials", *_COUNTS, "best", "elapsed", "job")
    for column in table.columns[:2]:  # names and k/N whole, the job column folds instead
        column.no_wrap = True
    for r in records:
        if "error" in r:
            table.add_row(r["study"], "?", *[""] * len(_COUNTS), r["error"][:60], "", "")
            continue
        best = f"{r['best']:.4f} ({r['metric']})" if r["best"] is not None else "-"
        counts = [str(r[k]) for k in _COUNTS]
        trials = f"{r['trials']}/{r['of']}" if r["of"] else str(r["trials"])
        table.add_row(r["study"], trials, *counts, best, format_duration(r["elapsed_s"]), r["job"])
    return table


# Column -> results status. ASHA's early-stopped trials are "pruned" as Optuna calls them.
_COUNTS = {"done": "completed", "running": "running", "pruned": "stopped", "failed": "error"}


def register(app: typer.Typer) -> None:
    app.command()(submit)
    app.command()(status)
