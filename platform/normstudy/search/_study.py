"""Run a study: its folder and lease, Ray (``_ray``), the Tune run (``_tuner``), then the
summaries for MLflow and the outcome for the CLI."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

import yaml

from normstudy.home import StudyPaths
from normstudy.search import _ray, _tuner

if TYPE_CHECKING:
    from rich.console import Console

    from normstudy.spec import StudySpec
    from normstudy.storage import Location


class StudyStateError(RuntimeError):
    """The study folder does not fit the request (exists without --resume, or changed)."""


@dataclasses.dataclass
class StudyOutcome:
    paths: StudyPaths
    num_trials: int
    errored: list[str]
    tracking_failures: list[str]
    interrupted: bool = False


def _prepare_folder(spec: StudySpec, paths: StudyPaths, resume: bool, overwrite: bool) -> None:
    resolved = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    if overwrite:
        _clear_folder(paths.root)
    if resume:
        if not paths.spec_file.exists():
            raise StudyStateError(
                f"nothing to resume: no study {spec.name!r} in {paths.home} (run without --resume)"
            )
        if paths.spec_file.read_text() != resolved:
            raise StudyStateError(
                f"the study description of {spec.name!r} changed since it started "
                f"({paths.spec_file}); resume with the same description and --set values, or "
                "start a new study (another name or --home)"
            )
        return
    if paths.spec_file.exists():
        raise StudyStateError(
            f"study {spec.name!r} already exists in {paths.home}: pass --resume to continue it, "
            "--overwrite to start it again, or choose another --home"
        )
    paths.results.mkdir()
    paths.spec_file.write_text(resolved)


def _settle_lost(paths: StudyPaths, tracker: Any, console: Console) -> None:
    """Results of trials a killed driver started but Tune never saved: errors, in MLflow too."""
    from normstudy.search._reconcile import lost_results, settle_lost_results

    lost = lost_results(paths)
    settle_lost_results(paths, lost)
    for trial_id in lost:
        tracker.trial_ended(trial_id, {}, "FAILED")
    if lost:
        console.print(
            f"[yellow]notice:[/yellow] trials {', '.join(lost)} were lost with the last driver "
            "(Tune never saved them): their results are marked error",
            highlight=False,
            soft_wrap=True,
        )


def run_study(
    spec: StudySpec,
    home: Location,
    console: Console,
    *,
    resume: bool = False,
    overwrite: bool = False,
    tracking: str | None = None,
) -> StudyOutcome:
    """Run (or resume) ``spec`` with its folder under ``home``; return what happened.

    One driver per study: the study folder's lease is taken first, before the folder is
    checked, created or (``overwrite``) emptied, and before Ray, the tracker or Tune start; it is
    held until the run ends, however it ends. A live holder elsewhere raises `StudyStateError`
    naming it, having touched nothing; a stale one is taken over with a notice on ``console``.
    """
    from normstudy.home import cache_dir
    from normstudy.storage import LeaseHeldError, StudyLease
    from normstudy.storage._credentials import move_aws_keys_to_file

    move_aws_keys_to_file(cache_dir() / "credentials")  # before any store or Ray sees them
    lease = StudyLease(StudyPaths(home, spec.name).root)
    try:
        lease.acquire()
    except LeaseHeldError as e:
        raise StudyStateError(str(e)) from e
    with lease:
        if lease.notice:
            console.print(
                f"[yellow]notice:[/yellow] {lease.notice}", highlight=False, soft_wrap=True
            )
        return _run_leased(
            spec, home, console, resume=resume, overwrite=overwrite, tracking=tracking
        )


def _clear_folder(root: Location) -> None:
    """``--overwrite``: everything in the study folder goes but the lease that guards it."""
    import pyarrow.fs as pafs

    from normstudy.storage import LEASE_FILE, StorageError

    try:
        found = root.fs.get_file_info(pafs.FileSelector(root.fs_path, allow_not_found=True))
    except OSError as e:
        raise StorageError(f"cannot list {root}: {e}") from e
    for info in found:  # the lease, and its heartbeat's temp files, stay
        if not info.base_name.lstrip(".").startswith(LEASE_FILE):
            (root / info.base_name).delete()


def _run_leased(
    spec: StudySpec,
    home: Location,
    console: Console,
    *,
    resume: bool,
    overwrite: bool,
    tracking: str | None,
) -> StudyOutcome:
    from normstudy.search._space import num_trials

    spec = spec.with_absolute_paths()
    paths = StudyPaths(home, spec.name)
    created = overwrite or not paths.spec_file.exists()
    _prepare_folder(spec, paths, resume, overwrite)
    total = num_trials(spec)
    console.print(
        f"study {spec.name}: {total} trials of {spec.model.name} on {spec.dataset.name} "
        f"({spec.search.sampler}, {spec.search.scheduler.name}); home {home}",
        highlight=False,
    )
    live = _tuner.live_view(spec, console, total)
    live.start("starting Ray")
    try:
        _ray.init_ray()
        _check_resources(spec)
        tracker = _tuner.tracker(spec, paths, tracking)
        if resume:
            _settle_lost(paths, tracker, console)
        live.start("restoring the study" if resume else "starting the first trials")
        callbacks = _tuner.callbacks(spec, paths, tracker, live)
        tuner = _tuner.build_tuner(spec, paths, callbacks, resume)
    except BaseException:
        live.stop()
        if created and not resume:  # nothing ran: leave no half-made study behind
            paths.root.delete()
        raise
    with _ray.graceful_stop():
        try:
            grid = tuner.fit()
        finally:
            live.stop()
    _compact_results(paths, console)
    results = [grid[i] for i in range(len(grid))]
    errored = [(r.metrics or {}).get("trial_id", "?") for r in results if r.error is not None]
    unfinished = _unfinished(paths)
    interrupted = bool(unfinished) or len(grid) < total
    for trial_id in unfinished:  # they resume with --resume; until then MLflow says so
        tracker.trial_ended(trial_id, {}, "KILLED", tags={"normstudy.status": "interrupted"})
    status = "KILLED" if interrupted else "FAILED" if errored else "FINISHED"
    best = _best_summary(spec, paths)
    metrics, params = _study_run_summary(spec, paths, best)
    # MLflow's params are immutable: the best configuration is logged once the study has
    # ended, not when it was interrupted (a resume may still find a better one).
    tracker.study_ended(best, status=status, metrics=metrics, params={} if interrupted else params)
    failures = tracker.close(float(os.environ.get("NORMSTUDY_TRACKING_FLUSH_S", "60")))
    return StudyOutcome(paths, len(grid), errored, failures, interrupted)


def _compact_results(paths: StudyPaths, console: Console) -> None:
    """Finished trials into one part file, so `best` and `report` open few files. A failure
    loses nothing (the trials' own files stay until the part is written) and waits for the
    next run; it must not hide the study's outcome."""
    from normstudy.results import compact

    try:
        compact(paths.results)
    except OSError as e:
        console.print(f"[yellow]compaction of {paths.results} left for later:[/yellow] {e}")


def _unfinished(paths: StudyPaths) -> list[str]:
    """Trials whose results are still 'running' (the study was stopped before they ended)."""
    from normstudy.results import read_results

    table = read_results(paths.results, ["status"]).to_pylist()
    return sorted({r["trial_id"] for r in table if r["status"] == "running"})


def _check_resources(spec: StudySpec) -> None:
    """On a local Ray instance, a trial asking for more than the machine has would wait forever:
    fail at once instead (a cluster with an autoscaler may still grow, so it is not checked)."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        return
    have = ray.cluster_resources()
    workers = spec.train.workers
    for field, key in (("cpus", "CPU"), ("gpus", "GPU")):
        want = spec.trial_resources()[field]
        if want > have.get(key, 0.0):
            each = getattr(spec.resources, field)
            per = f" ({workers} workers × {each:g})" if workers > 1 else ""
            raise StudyStateError(
                f"resources.{field} is {want:g} per trial{per} but this machine has "
                f"{have.get(key, 0.0):g}; lower it (e.g. --set resources.{field}="
                f"{have.get(key, 0.0) / workers:g}) or submit the study to a cluster"
            )


def _study_run_summary(
    spec: StudySpec, paths: StudyPaths, best: dict[str, Any] | None
) -> tuple[dict[str, float], dict[str, Any]]:
    """The study run's metrics (the best score, trials by status) and params (the best
    trial's searched values, named as on the trials' runs)."""
    from normstudy.results import read_results
    from normstudy.search._labels import searched_params

    table = read_results(paths.results).select(["trial_id", "status"]).to_pylist()
    status_of = {r["trial_id"]: r["status"] for r in table}
    metrics = {"trials": float(len(status_of))}
    for status in ("completed", "stopped", "error"):
        metrics[f"trials/{status}"] = float(sum(s == status for s in status_of.values()))
    if best is None:
        return metrics, {}
    metrics[str(best["metric"])] = float(best["score"])
    config = best["config"]
    keys = [k for k in _tuner.searched_keys(spec) if k in config]
    return metrics, searched_params({k: config[k] for k in keys})


def _best_summary(spec: StudySpec, paths: StudyPaths) -> dict[str, Any] | None:
    from normstudy.results import read_scores

    scores = read_scores(paths.results, spec.search.metrics[0], spec.search.modes[0])
    if not scores or scores[0].score is None:
        return None
    top = scores[0]
    return {
        "trial_id": top.trial_id,
        "metric": f"best/{spec.search.metrics[0]}",
        "score": top.score,
        "best_epoch": top.best_epoch,
        "config": top.config,
    }
