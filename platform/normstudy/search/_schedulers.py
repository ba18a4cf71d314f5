"""ASHA over configurations: with seed replication, a rung compares configurations by the mean
over the seeds of each that reached the rung, not single seeds."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import ASHAScheduler

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

# Config keys that tell the replicas of one configuration apart.
REPLICA_KEYS = ("seed", "__trial_index__")


def configuration_key(config: dict[str, Any]) -> str:
    """The configuration a trial runs, without its seed: equal for all its replicas."""
    rest = {k: v for k, v in config.items() if k not in REPLICA_KEYS}
    return json.dumps(rest, sort_keys=True, default=str)


class ConfigurationASHA(ASHAScheduler):
    """`ASHAScheduler` whose rung decisions see, for each trial, the mean of its metric over the
    replicas (seeds) of its configuration that have reported at that time step so far.

    The first seed to reach a rung is judged by itself; a later one by the mean of the seeds
    that got there, itself included. Stopping stays per trial (Tune stops trials, not groups):
    a configuration whose mean falls below the rung's cutoff loses its replicas one by one as
    they reach it, and they reach it with the same mean.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._reported: dict[tuple[str, Any], dict[str, float]] = {}

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        metric = str(self._metric)  # set: Tune refuses to add trials to ASHA without one
        value, step = result.get(metric), result.get(self._time_attr)
        if isinstance(value, int | float) and math.isfinite(value) and step is not None:
            seen = self._reported.setdefault((configuration_key(dict(trial.config)), step), {})
            seen[trial.trial_id] = float(value)
            result = {**result, metric: sum(seen.values()) / len(seen)}
        return str(super().on_trial_result(tune_controller, trial, result))
