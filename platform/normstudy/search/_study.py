"""Assemble and run a study: Ray Tune + OptunaSearch + scheduler + callbacks."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import yaml

from normstudy.home import StudyPaths, git_revision, tracking_uri

if TYPE_CHECKING:
    from collections.abc import Iterator

    from rich.console import Console

    from normstudy.spec import StudySpec
    from normstudy.storage import Location

T = TypeVar("T")


class StudyStateError(RuntimeError):
    """The study folder does not fit the request (exists without --resume, or changed)."""


@dataclasses.dataclass
class StudyOutcome:
    paths: StudyPaths
    num_trials: int
    errored: list[str]
    tracking_failures: list[str]
    interrupted: bool = False


def _objectives(spec: StudySpec) -> list[tuple[str, str]]:
    return list(zip(spec.search.metrics, spec.search.modes, strict=True))


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


def _reconcile_optuna(spec: StudySpec, paths: StudyPaths) -> None:
    """A restored searcher reopens the Optuna storage it was pickled with: bring the home's
    copy first (another machine may have run the study), then settle trials Tune never saved."""
    from normstudy.search._optuna_store import pull, storage_url
    from normstudy.search._reconcile import requeue_orphans

    pull(spec, paths)
    orphans = requeue_orphans(spec, paths, storage_url(spec, paths))
    if orphans:
        logging.getLogger("normstudy").warning(
            "Optuna trials %s were lost with the last driver: marked FAIL, their "
            "configurations run again",
            orphans,
        )


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


def _searcher(spec: StudySpec, paths: StudyPaths) -> Any:
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from normstudy.search._optuna_store import pull, storage_url
    from normstudy.search._searcher import ReplicatedSearch, StudySearch
    from normstudy.search._space import define_by_run, make_sampler, replicates

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pull(spec, paths)
    metrics = [f"best/{m}" for m in spec.search.metrics]
    space = {k: d.model_dump(mode="json") for k, d in spec.search.space.items()}
    single = len(metrics) == 1
    # Several seeds: the grid has them as an axis (paired comparisons); any other sampler
    # runs each configuration it proposes once per seed and is told the mean.
    replicated = replicates(spec)
    kind: Any = functools.partial(ReplicatedSearch, seeds=spec.seed_list())
    searcher = (kind if replicated else StudySearch)(
        epochs=spec.train.epochs,
        metric_names=list(spec.search.metrics),
        space=functools.partial(
            define_by_run, space=space, seeds=[] if replicated else spec.seed_list()
        ),
        metric=metrics[0] if single else metrics,
        mode=spec.search.modes[0] if single else list[str](spec.search.modes),
        sampler=make_sampler(spec),
        study_name=spec.name,
        storage=optuna.storages.RDBStorage(storage_url(spec, paths)),
    )
    return ConcurrencyLimiter(searcher, max_concurrent=spec.search.max_concurrent)


def _scheduler(spec: StudySpec) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from normstudy.search._schedulers import ConfigurationASHA

    s = spec.search.scheduler
    if s.name == "asha":  # with several seeds, rungs compare configurations (seed means)
        kind = ConfigurationASHA if len(spec.seed_list()) > 1 else ASHAScheduler
        return kind(
            time_attr="training_iteration",
            metric=f"best/{spec.search.metrics[0]}",
            mode=spec.search.modes[0],
            max_t=spec.train.epochs,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    return FIFOScheduler()


def _init_ray() -> None:
    """A Ray job (or a user with ``RAY_ADDRESS``) reaches its cluster, token auth as the cluster
    has it; otherwise a fresh local instance for this study alone, which needs no token."""
    import ray

    if ray.is_initialized():
        return
    # Tune's own console output would interleave with our live view: keep it quiet.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Parquet and MLflow hold the results: Tune's CSV/JSON/TensorBoard loggers would only
    # duplicate them, and tensorboardX imports torch into the driver, which needs none.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    address = os.environ.get("RAY_ADDRESS") or None
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address is None:
        from normstudy.search._reaper import children_of_this_process, start_reaper

        before = children_of_this_process()
    ray.init(
        address=address or "local",
        include_dashboard=False if address is None else None,
        log_to_driver=False,
        configure_logging=True,
        logging_level=logging.ERROR,
    )
    if address is None:  # what this driver started is stopped however the driver ends
        start_reaper(children_of_this_process() - before)


def init_ray_during(work: Callable[[], T]) -> T:
    """``work()`` on a thread while this thread starts the study's local Ray instance; its
    result (or its exception, re-raised here).

    ``normstudy run`` checks a study (preflight: torch, timm, a model on the meta device) for
    seconds, and a local Ray takes seconds to start: one overlaps the other. Ray must start on
    the main thread (started on another, its workers lose the GCS). Nothing is written to the
    study's home meanwhile: a study that fails its checks leaves only a Ray instance, which the
    process's exit stops. With ``RAY_ADDRESS`` (a cluster) ``work`` runs alone and Ray starts
    later, in `run_study`.
    """
    if os.environ.get("RAY_ADDRESS") or _ray_initialized():
        return work()
    from normstudy.home import cache_dir
    from normstudy.storage._credentials import move_aws_keys_to_file

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=run, name="preflight", daemon=True)
    move_aws_keys_to_file(cache_dir() / "credentials")  # before Ray sees the environment
    thread.start()
    try:
        _init_ray()
    finally:
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return cast("T", outcome["value"])


def _ray_initialized() -> bool:
    import ray

    return bool(ray.is_initialized())


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
    live = _live_view(spec, console, total)
    live.start("starting Ray")
    try:
        _init_ray()
        _check_resources(spec)
        tracker = _tracker(spec, paths, tracking)
        if resume:
            _settle_lost(paths, tracker, console)
        live.start("restoring the study" if resume else "starting the first trials")
        tuner = _tuner(spec, paths, _callbacks(spec, paths, tracker, live), resume)
    except BaseException:
        live.stop()
        if created and not resume:  # nothing ran: leave no half-made study behind
            paths.root.delete()
        raise
    with _graceful_stop():
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


@contextlib.contextmanager
def _graceful_stop() -> Iterator[None]:
    """SIGTERM (`ray job stop`, a batch scheduler) stops the study as Ctrl-C does: Tune's own
    SIGINT handler, installed while ``fit()`` runs, saves the experiment state and returns."""

    def on_term(signum: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def _tracker(spec: StudySpec, paths: StudyPaths, tracking: str | None) -> Any:
    from normstudy import __version__
    from normstudy.search._labels import searched_params
    from normstudy.tracking import StudyTracker, view_tags

    return StudyTracker(
        uri=tracking_uri(paths.home, tracking),
        study=spec.name,
        artifact_root=paths.artifacts,
        state_file=paths.tracking_state,
        tags={
            "normstudy.study": spec.name,
            "normstudy.version": __version__,
            "normstudy.git_rev": git_revision(),
            # a confirm study's runs name the search they confirm
            **({"normstudy.confirms": spec.confirms} if spec.confirms else {}),
        },
        experiment_tags=view_tags(
            score=f"best/{spec.search.metrics[0]}",
            mode=spec.search.modes[0],
            params=list(searched_params(dict.fromkeys(_searched_keys(spec)))),
        ),
    )


def _live_view(spec: StudySpec, console: Console, total: int) -> Any:
    from normstudy.search._live import LiveView

    return LiveView(
        console,
        total=total,
        epochs=spec.train.epochs,
        score_key=f"best/{spec.search.metrics[0]}",
        mode=spec.search.modes[0],
        searched=list(spec.search.space),
    )


def _searched_keys(spec: StudySpec) -> list[str]:
    """The dotted keys a trial's searcher samples (the seed too, where there are several)."""
    return [*spec.search.space, *(["seed"] if len(spec.seed_list()) > 1 else [])]


def _callbacks(spec: StudySpec, paths: StudyPaths, tracker: Any, live: Any) -> list[Any]:
    from normstudy import __version__
    from normstudy.results import ResultsSink
    from normstudy.search._callbacks import OptunaSync, StudyCallback
    from normstudy.search._links import OptunaLinks
    from normstudy.search._optuna_store import storage_url

    score_keys = [f"best/{m}" for m in spec.search.metrics]
    return [
        StudyCallback(
            study=spec.name,
            base=spec.trial_base(),
            epochs=spec.train.epochs,
            sink=ResultsSink.for_study(paths.results, spec),
            tracker=tracker,
            meta={"version": __version__, "git_rev": git_revision()},
            score_keys=score_keys,
            artifacts_dir=paths.trial_artifacts,
            variants=spec.variants,
            links=OptunaLinks(url=storage_url(spec, paths), study=spec.name),
        ),
        live,
        OptunaSync(spec, paths),
    ]


def _tuner(spec: StudySpec, paths: StudyPaths, callbacks: list[Any], resume: bool) -> Any:
    from ray import tune

    from normstudy.search._space import num_trials
    from normstudy.search._trainable import tune_trainable

    trainable = tune.with_resources(
        tune.with_parameters(
            tune_trainable,
            base=spec.trial_base(),
            variants=spec.variants,
            objectives=_objectives(spec),
        ),
        # One Ray actor per trial, so a data-parallel trial's workers share one node.
        {"cpu": spec.trial_resources()["cpus"], "gpu": spec.trial_resources()["gpus"]},
    )
    if resume and tune.Tuner.can_restore(paths.tune.uri):
        _reconcile_optuna(spec, paths)
        tuner = tune.Tuner.restore(paths.tune.uri, trainable=trainable, resume_errored=True)
        # Callbacks hold threads and consoles and are pickled empty: give them anew.
        assert tuner._local_tuner is not None
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(spec, paths),
            scheduler=_scheduler(spec),
            num_samples=num_trials(spec),
            # The next trial runs in the worker process of the last one: imports, the dataset
            # (`cached_splits`) and compiled kernels are not paid again per trial.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=paths.tune.name,
            # A shared home (s3://, gs://, NFS) is what lets trials on other nodes save and
            # restore checkpoints: Ray refuses a driver-local path across nodes.
            storage_path=paths.root.uri,
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
            verbose=0,
        ),
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
    return metrics, searched_params({k: config[k] for k in _searched_keys(spec) if k in config})


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
