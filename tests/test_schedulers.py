"""ASHA over configurations: rungs compare the mean over a configuration's seeds."""

from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from normstudy.search._schedulers import ConfigurationASHA, configuration_key


def _trials(configs: list[dict]) -> list[Trial]:
    return [Trial("t", config=c, stub=True) for c in configs]


def _decide(scheduler: ASHAScheduler, trials: list[Trial], values: list[float]) -> list[str]:
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    return [
        scheduler.on_trial_result(None, t, {"training_iteration": 1, "acc": v})
        for t, v in zip(trials, values, strict=True)
    ]


def test_replicas_share_a_key_and_configurations_do_not() -> None:
    a1, a2 = {"lr": 0.1, "seed": 1}, {"lr": 0.1, "seed": 2, "__trial_index__": 1}
    assert configuration_key(a1) == configuration_key(a2)
    assert configuration_key(a1) != configuration_key({"lr": 0.2, "seed": 1})


def test_a_rung_judges_the_mean_over_seeds_not_one_seed() -> None:
    """Config B: two seeds at 0.6; config A: seeds at 0.1, then 0.9 (mean 0.5). With reduction
    factor 2 a rung keeps the upper half. Judged per seed, A's lucky second seed passes (0.9 is
    above the cutoff); judged per configuration it reports A's mean, 0.5, and is stopped."""
    configs = [
        {"lr": 0.6, "seed": 1},
        {"lr": 0.6, "seed": 2},
        {"lr": 0.1, "seed": 1},
        {"lr": 0.1, "seed": 2},
    ]
    values = [0.6, 0.6, 0.1, 0.9]
    kwargs = dict(
        time_attr="training_iteration", metric="acc", mode="max", max_t=4,
        grace_period=1, reduction_factor=2,
    )  # fmt: skip
    per_seed = _decide(ASHAScheduler(**kwargs), _trials(configs), values)
    grouped = _decide(ConfigurationASHA(**kwargs), _trials(configs), values)
    assert per_seed == ["CONTINUE", "CONTINUE", "STOP", "CONTINUE"]
    assert grouped == ["CONTINUE", "CONTINUE", "STOP", "STOP"]
