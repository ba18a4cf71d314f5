"""``normstudy validate``, ``run`` and ``confirm``: check a study description, run a study
end to end, re-run a search's best over many seeds (``register(app)`` adds them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from normstudy import cli_scaling
from normstudy.cli_common import (
    HomeOpt,
    SetOpt,
    TrackingOpt,
    home_location,
    load_file,
    print_best,
    show_tracking_failures,
    study_spec,
)
from normstudy.cli_output import err, out
from normstudy.cli_output import fail as _fail
from normstudy.cli_report import run_figures


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

    spec = load_file(path, set_)
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
        check_cluster(cluster, spec.trial_resources(), spec.train.workers)


def check_cluster(path: Path, resources: dict[str, float], workers: int = 1) -> None:
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


def run(
    path: Path,
    home: HomeOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted study.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Delete the study's earlier results first.")
    ] = False,
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
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
    spec = load_file(path, set_)
    if resume and overwrite:
        _fail("--resume and --overwrite exclude each other")
    refuse_if_running(spec.name, home)  # at once, not after the checks and Ray's start
    from normstudy.preflight import preflight  # torch, timm, the data: before any store
    from normstudy.search import init_ray_during

    data = cli_scaling.data_checks(env_file)
    checks = cli_scaling.preflight_parts if spec.scale else preflight
    problems = init_ray_during(lambda: checks(spec, data=data))
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
        cli_scaling.run_and_show(
            spec, home_location(home), home, resume, overwrite, tracking_uri, again
        )
        return
    run_and_show(spec, home, resume, overwrite, tracking_uri, top, again)


def refuse_if_running(study: str, home: str | None) -> None:
    """Exits 2 naming the driver when a live one holds the study's lease. `run_study` takes
    the lease itself (race-free); this only spares a second driver the seconds of checks and
    Ray's start before it hears so."""
    from normstudy.home import StudyPaths
    from normstudy.storage import LEASE_FILE, LeaseHeldError, StorageError, live_holder

    root = StudyPaths(home_location(home), study).root
    try:
        holder = live_holder(root)
    except StorageError:
        return  # the run itself reports what is wrong with the home
    if holder is not None:
        _fail(str(LeaseHeldError(root / LEASE_FILE, holder)))


def run_and_show(  # type: ignore[no-untyped-def]
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

    home_dir = home_location(home)
    try:
        outcome = run_study(
            spec, home_dir, out, resume=resume, overwrite=overwrite, tracking=tracking_uri
        )
    except (StudyStateError, StorageError) as e:
        _fail(str(e))
    more = f" --home {home_dir}" if home else ""
    show_tracking_failures(
        outcome.tracking_failures,
        f"what waits in the outbox is sent on --resume or by: normstudy sync-mlflow {spec.name}"
        + more,
    )
    print_best(spec.search, outcome.paths, top, "table")
    out.print(f"results: {outcome.paths.results}")
    if outcome.interrupted:
        err.print(f"[yellow]interrupted[/yellow] — resume with: {again}", highlight=False)
        raise typer.Exit(130)
    if home_dir.is_local and not (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        out.print(f"MLflow UI: normstudy ui --home {home_dir}")
    run_figures(spec, outcome.paths, f" --home {home_dir}" if home else "")
    if outcome.errored:
        _fail(f"{len(outcome.errored)} trials failed: {', '.join(outcome.errored)}", code=1)


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
    tracking_uri: TrackingOpt = None,
) -> None:
    """Re-run a search's top configurations (and a baseline) over many seeds, every epoch:
    a linked study HOME/STUDY-confirm whose report is the paper table."""
    from normstudy.confirm import ConfirmError, confirm_spec
    from normstudy.preflight import preflight
    from normstudy.results import read_results, trial_scores
    from normstudy.spec import SpecError, parse_override

    paths, search = study_spec(study, home)
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
    run_and_show(spec, home, resume, False, tracking_uri, top + 1, again)


def register(app: typer.Typer) -> None:
    app.command()(validate)
    app.command()(run)
    app.command()(confirm)
