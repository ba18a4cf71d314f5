"""The study's search space as an Optuna define-by-run function, and samplers by name."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from normstudy.spec import StudySpec


def define_by_run(trial: optuna.Trial, space: dict[str, Any], seeds: list[int]) -> None:
    """Suggest every space key (module level: OptunaSearch pickles it with the searcher)."""
    from pydantic import TypeAdapter

    from normstudy.spec import Distribution

    adapter: TypeAdapter[Any] = TypeAdapter(Distribution)
    for key, raw in space.items():
        adapter.validate_python(raw).suggest(trial, key)
    if len(seeds) > 1:
        trial.suggest_categorical("seed", seeds)


def grid_axes(spec: StudySpec) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for key, dist in spec.search.space.items():
        values = dist.grid_values()
        assert values is not None  # the spec rejects continuous ranges under the grid sampler
        axes[key] = values
    seeds = spec.seed_list()
    if len(seeds) > 1:
        axes["seed"] = seeds
    return axes


def replicates(spec: StudySpec) -> bool:
    """Whether each proposed configuration runs once per seed (several seeds, not the grid)."""
    return spec.search.sampler != "grid" and len(spec.seed_list()) > 1


def num_trials(spec: StudySpec) -> int:
    """Trials to run: ``search.num_samples`` configurations, each once per seed; for the grid,
    the grid's size (seeds an axis) unless set smaller."""
    if spec.search.sampler != "grid":
        return spec.search.num_samples * (len(spec.seed_list()) if replicates(spec) else 1)
    size = math.prod(len(v) for v in grid_axes(spec).values())
    if "num_samples" in spec.search.model_fields_set:
        return min(size, spec.search.num_samples)
    return size


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The sampler named in the spec, seeded.

    TPE is set explicitly rather than left to Optuna 5's defaults: multivariate (the knobs
    studied here interact, e.g. γ init and its lr divisor) and a constant liar whenever trials
    run in parallel, so concurrent trials do not all get the same suggestion.
    """
    import optuna

    s = spec.search
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(
            seed=s.seed,
            multivariate=True,
            constant_liar=s.max_concurrent > 1,
            n_startup_trials=10 if s.n_startup_trials is None else s.n_startup_trials,
        )
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.sampler == "grid":
        from normstudy.search._grid import TuneGridSampler

        return TuneGridSampler(grid_axes(spec), seed=s.seed)
    if s.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=s.seed, n_startup_trials=s.n_startup_trials or 1)
    return optuna.samplers.NSGAIISampler(seed=s.seed)
