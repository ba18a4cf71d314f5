"""StudySearch tells Optuna what Optuna expects, driven the way Tune's controller drives it."""

from __future__ import annotations

import functools
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from normstudy.search._labels import run_name, searched_params, short_names
from normstudy.search._links import OptunaLinks
from normstudy.search._searcher import MLFLOW_RUN_ATTR, TUNE_TRIAL_ATTR, StudySearch
from normstudy.search._space import define_by_run

EPOCHS = 3
SPACE = {"train.lr": {"type": "loguniform", "low": 0.01, "high": 0.1}}


def _searcher(sampler: optuna.samplers.BaseSampler) -> StudySearch:
    return StudySearch(
        epochs=EPOCHS,
        metric_names=["val/acc"],
        space=functools.partial(define_by_run, space=SPACE, seeds=[0]),
        metric="best/val/acc",
        mode="max",
        sampler=sampler,
        study_name="s",
    )


def _result(epoch: int, acc: float, best: float) -> dict[str, float | int]:
    # Tune's training_iteration counts results since the last restore: not the epoch
    return {"epoch": epoch, "val/acc": acc, "best/val/acc": best, "training_iteration": 1}


@pytest.mark.parametrize(
    "sampler",
    [
        optuna.samplers.TPESampler(seed=0),
        optuna.samplers.RandomSampler(seed=0),
        optuna.samplers.GridSampler({"train.lr": [0.01, 0.02, 0.05]}, seed=0),
    ],
    ids=["tpe", "random", "grid"],
)
def test_states_values_and_names(sampler: optuna.samplers.BaseSampler) -> None:
    searcher = _searcher(sampler)
    for trial in ("done", "stopped", "failed"):
        assert searcher.suggest(trial) is not None
    # done: every epoch; Tune passes the last one to on_trial_complete only
    searcher.on_trial_result("done", _result(1, 0.5, 0.5))
    searcher.on_trial_result("done", _result(2, 0.4, 0.5))
    searcher.on_trial_result("done", _result(2, 0.4, 0.5))  # redone after a restore
    searcher.on_trial_complete("done", _result(3, 0.45, 0.5))
    # stopped by ASHA after its second epoch (the stopping result never passes on_trial_result)
    searcher.on_trial_result("stopped", _result(1, 0.2, 0.2))
    searcher.on_trial_complete("stopped", _result(2, 0.3, 0.3))
    searcher.on_trial_complete("failed", error=True)

    study: optuna.Study = searcher._ot_study
    assert study.metric_names == ["val/acc"]
    done, failed, stopped = (
        {t.user_attrs[TUNE_TRIAL_ATTR]: t for t in study.trials}[k]
        for k in ("done", "failed", "stopped")
    )
    assert done.state == TrialState.COMPLETE and done.value == 0.5
    assert done.intermediate_values == {1: 0.5, 2: 0.4, 3: 0.45}
    assert stopped.state == TrialState.PRUNED and stopped.value == 0.3  # its last epoch's
    assert stopped.intermediate_values == {1: 0.2, 2: 0.3}
    assert failed.state == TrialState.FAIL


def test_short_names_and_run_names() -> None:
    keys = ["train.lr", "plugins.lr.value", "plugins.gamma_init.value", "seed"]
    assert short_names(keys) == {
        "train.lr": "train.lr",  # would clash with plugins.lr.value
        "plugins.lr.value": "plugins.lr.value",
        "plugins.gamma_init.value": "gamma_init",
        "seed": "seed",
    }
    values = {"plugins.gamma_init.value": 0.2134, "train.lr": 0.0684, "seed": 3}
    assert searched_params(values) == {
        "searched.gamma_init": 0.2134,
        "searched.lr": 0.0684,
        "searched.seed": 3,
    }
    names = short_names(values)
    label = run_name("t007", {names[k]: v for k, v in values.items()})
    assert label == "t007 gamma_init=0.213 lr=0.0684 seed=3"


def test_links_find_trials_by_tune_id_and_record_run_ids(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    running, finished = study.ask(), study.ask()
    running.set_user_attr(TUNE_TRIAL_ATTR, "tune-a")
    finished.set_user_attr(TUNE_TRIAL_ATTR, "tune-b")
    study.tell(finished, state=TrialState.FAIL)
    links = OptunaLinks(url=url, study="s")
    assert (links.number("tune-a"), links.number("tune-b")) == (0, 1)
    assert links.number("unknown") is None
    links.link_run("tune-a", "run-a")
    links.link_run("tune-b", "run-b")  # finished: left alone, quietly
    attrs = [t.user_attrs for t in optuna.load_study(study_name="s", storage=url).trials]
    assert attrs[0][MLFLOW_RUN_ATTR] == "run-a" and MLFLOW_RUN_ATTR not in attrs[1]
    assert OptunaLinks(url=url, study="nope").number("tune-a") is None  # no such study


# -- seed replication -----------------------------------------------------------------------
def _replicated(seeds: list[int]):
    from normstudy.search._searcher import ReplicatedSearch

    return ReplicatedSearch(
        seeds=seeds,
        epochs=EPOCHS,
        metric_names=["val/acc"],
        space=functools.partial(define_by_run, space=SPACE, seeds=[]),
        metric="best/val/acc",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="r",
    )


def test_every_configuration_runs_once_per_seed_and_optuna_gets_the_mean() -> None:
    from normstudy.search._searcher import TUNE_TRIALS_ATTR

    searcher = _replicated([11, 22])
    configs = {t: searcher.suggest(t) for t in ("a1", "a2", "b1", "b2")}
    assert [c["seed"] for c in configs.values()] == [11, 22, 11, 22]
    rest = {t: {k: v for k, v in c.items() if k != "seed"} for t, c in configs.items()}
    assert rest["a1"] == rest["a2"] != rest["b1"] == rest["b2"]
    study = searcher._ot_study
    assert len(study.trials) == 2  # one Optuna trial per configuration, none for the seed
    assert "seed" not in study.trials[0].params
    assert study.trials[0].user_attrs[TUNE_TRIALS_ATTR] == ["a1", "a2"]
    # a: both seeds run all epochs; intermediate values are the seeds' means, once both report
    searcher.on_trial_result("a1", _result(1, 0.4, 0.4))
    assert study.trials[0].intermediate_values == {}
    searcher.on_trial_result("a2", _result(1, 0.6, 0.6))
    assert study.trials[0].intermediate_values == {1: pytest.approx(0.5)}
    for epoch, (x, y) in {2: (0.5, 0.7)}.items():
        searcher.on_trial_result("a1", _result(epoch, x, x))
        searcher.on_trial_result("a2", _result(epoch, y, y))
    searcher.on_trial_complete("a1", _result(3, 0.45, 0.5))
    assert study.trials[0].state == TrialState.RUNNING  # waits for its other seed
    searcher.on_trial_complete("a2", _result(3, 0.8, 0.8))
    a = study.trials[0]
    assert a.state == TrialState.COMPLETE and a.value == pytest.approx((0.5 + 0.8) / 2)
    assert a.intermediate_values == {
        1: pytest.approx(0.5),
        2: pytest.approx(0.6),
        3: pytest.approx((0.45 + 0.8) / 2),
    }
    # b: one seed stopped early by the scheduler -> the configuration is PRUNED
    searcher.on_trial_complete("b1", _result(1, 0.1, 0.1))
    searcher.on_trial_complete("b2", _result(3, 0.2, 0.2))
    b = study.trials[1]
    assert b.state == TrialState.PRUNED
    assert b.intermediate_values[1] == pytest.approx(0.1)  # b2 reported no epoch 1 here


def test_a_configuration_whose_seeds_all_failed_is_failed() -> None:
    searcher = _replicated([1, 2, 3])
    for trial in ("x1", "x2", "x3"):
        searcher.suggest(trial)
    for trial in ("x1", "x2", "x3"):
        searcher.on_trial_complete(trial, error=True)
    assert searcher._ot_study.trials[0].state == TrialState.FAIL


def test_the_grid_sampler_tells_the_last_point_without_stopping_optuna() -> None:
    from normstudy.search._grid import TuneGridSampler

    for sampler, raises in ((optuna.samplers.GridSampler, True), (TuneGridSampler, False)):
        study = optuna.create_study(sampler=sampler({"x": [1, 2]}, seed=0))
        trials = [study.ask() for _ in range(2)]
        for t in trials:
            t.suggest_categorical("x", [1, 2])
        study.tell(trials[0], 1.0)
        if raises:  # Optuna's own: study.stop() outside an optimize loop
            with pytest.raises(RuntimeError, match=r"Study\.stop"):
                study.tell(trials[1], 1.0)
        else:
            study.tell(trials[1], 1.0)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
