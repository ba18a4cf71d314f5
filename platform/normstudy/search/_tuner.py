"""The Tune run of a study, assembled: the trainable with its resources, OptunaSearch (or the
replicating searcher), the scheduler, and the callbacks that write Parquet, MLflow and the live
view."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from normstudy.home import StudyPaths, git_revision, tracking_uri

if TYPE_CHECKING:
    from rich.console import Console

    from normstudy.spec import StudySpec


def objectives(spec: StudySpec) -> list[tuple[str, str]]:
    return list(zip(spec.search.metrics, spec.search.modes, strict=True))


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


def tracker(spec: StudySpec, paths: StudyPaths, tracking: str | None) -> Any:
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
            params=list(searched_params(dict.fromkeys(searched_keys(spec)))),
        ),
    )


def live_view(spec: StudySpec, console: Console, total: int) -> Any:
    from normstudy.search._live import LiveView

    return LiveView(
        console,
        total=total,
        epochs=spec.train.epochs,
        score_key=f"best/{spec.search.metrics[0]}",
        mode=spec.search.modes[0],
        searched=list(spec.search.space),
    )


def searched_keys(spec: StudySpec) -> list[str]:
    """The dotted keys a trial's searcher samples (the seed too, where there are several)."""
    return [*spec.search.space, *(["seed"] if len(spec.seed_list()) > 1 else [])]


def callbacks(spec: StudySpec, paths: StudyPaths, tracker: Any, live: Any) -> list[Any]:
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


def build_tuner(spec: StudySpec, paths: StudyPaths, callbacks: list[Any], resume: bool) -> Any:
    from ray import tune

    from normstudy.search._space import num_trials
    from normstudy.search._trainable import tune_trainable

    trainable = tune.with_resources(
        tune.with_parameters(
            tune_trainable,
            base=spec.trial_base(),
            variants=spec.variants,
            objectives=objectives(spec),
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
