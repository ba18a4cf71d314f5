"""The trial as a plain function: determinism, checkpoint resume, metrics, per-group lrs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from normstudy.spec import TrialConfig
from normstudy.spec._metrics import TIMINGS
from normstudy.trial import LocalReporter, run_trial
from normstudy.trial._metrics import expected_calibration_error
from normstudy.trial._reporter import load_state
from normstudy.trial._schedule import lr_factor
from normstudy.trial._train import _Trial


def _config(**train: Any) -> dict[str, Any]:
    return TrialConfig.model_validate(
        {
            "dataset": {"name": "digits", "image_size": 8, "augment": {"crop_padding": 1}},
            "model": {"name": "test_resnet", "cifar_stem": True},
            "train": {
                "epochs": 3,
                "batch_size": 64,
                "lr": 0.05,
                "max_steps_per_epoch": 5,
                "threads": 1,
                **train,
            },
            "plugins": {"gamma_init": {"value": 0.5}, "lr_divisor": {"gamma": 10.0}},
            "seed": 7,
        }
    ).model_dump(mode="json")


REQUIRED = {
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "val/ece",
    "lr",
    *TIMINGS,
    "test/acc",
    "test/loss",
    "best/val/acc",
    "epoch",
}


def _without_time(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k not in TIMINGS} for h in history]


def test_reports_every_metric_each_epoch() -> None:
    reporter = LocalReporter()
    run_trial(_config(), reporter)
    assert [h["epoch"] for h in reporter.history] == [1, 2, 3]
    for h in reporter.history:
        assert set(h) >= REQUIRED
        assert 0.0 <= h["val/acc"] <= 1.0 and h["val/loss"] > 0
    best = max(h["val/acc"] for h in reporter.history)
    assert reporter.history[-1]["best/val/acc"] == best


def test_test_metrics_come_from_the_best_validation_epoch() -> None:
    reporter = LocalReporter()
    run_trial(_config(epochs=4), reporter)
    history = reporter.history
    best_epoch = max(range(4), key=lambda i: (history[i]["val/acc"], -i))
    assert history[-1]["test/acc"] == history[best_epoch]["test/acc"]


def test_same_config_and_seed_give_the_same_metrics() -> None:
    a, b = LocalReporter(), LocalReporter()
    run_trial(_config(), a)
    run_trial(_config(), b)
    assert _without_time(a.history) == _without_time(b.history)
    c = LocalReporter()
    run_trial({**_config(), "seed": 8}, c)
    assert _without_time(c.history) != _without_time(a.history)


class _Crash(RuntimeError):
    pass


class _CrashingReporter(LocalReporter):
    """Saves the checkpoint of epoch ``after``, then dies (a preempted worker)."""

    def __init__(self, folder: Path, after: int) -> None:
        super().__init__(folder)
        self.after = after

    def report(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        super().report(metrics, state)
        if len(self.history) == self.after:
            raise _Crash


def test_resume_from_checkpoint_continues_exactly(tmp_path: Path) -> None:
    whole = LocalReporter()
    run_trial(_config(), whole)

    with pytest.raises(_Crash):
        run_trial(_config(), _CrashingReporter(tmp_path, after=2))
    resumed = LocalReporter(tmp_path)
    run_trial(_config(), resumed)
    assert [h["epoch"] for h in resumed.history] == [3]
    assert _without_time(resumed.history) == _without_time(whole.history[2:])
    # The checkpoint holds every epoch's numbers so far: the record a lost result file is
    # rebuilt from (`normstudy doctor --repair`).
    record = load_state(tmp_path)["history"]
    numbers = [{k: v for k, v in h.items() if isinstance(v, float | int)} for h in whole.history]
    assert [h["epoch"] for h in record] == [1, 2, 3]
    assert _without_time(record) == _without_time(numbers)


def test_lr_divisor_ratio_survives_the_schedule() -> None:
    trial = _Trial(
        _config(epochs=5, schedule={"name": "cosine", "warmup_epochs": 2}), LocalReporter()
    )
    for epoch in range(5):
        lrs = {g["kind"]: g["lr"] for g in trial.optimizer.param_groups}
        factor = lr_factor(trial.cfg.train, epoch)
        assert lrs["weight"] == pytest.approx(0.05 * factor)
        assert lrs["norm_weight"] == pytest.approx(0.05 * factor / 10.0)
        assert lrs["norm_bias"] == pytest.approx(0.05 * factor)
        trial.optimizer.step()  # no gradients: changes nothing, keeps torch's order check quiet
        trial.scheduler.step()
    decays = {g["kind"]: g["weight_decay"] for g in trial.optimizer.param_groups}
    assert decays["weight"] == trial.cfg.train.weight_decay
    assert decays["norm_weight"] == decays["norm_bias"] == decays["bias"] == 0.0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cosine", [0.01, 1.0, 0.5 * (1 + math.cos(math.pi / 3))]),
        ("step", [0.01, 1.0, 1.0]),
        ("exponential", [0.01, 1.0, 0.5]),
        ("constant", [0.01, 1.0, 1.0]),
    ],
)
def test_schedules_with_warmup(name: str, expected: list[float]) -> None:
    cfg = TrialConfig.model_validate(
        {
            "train": {
                "epochs": 4,
                "schedule": {"name": name, "warmup_epochs": 1, "gamma": 0.5, "step_size": 5},
            }
        }
    )
    assert [lr_factor(cfg.train, e) for e in range(3)] == pytest.approx(expected)


def test_ece_matches_a_direct_computation() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]], dtype=torch.float64)
    targets = torch.tensor([0, 1, 1, 1])
    # bins of width 1/15: 0.9 -> correct; 0.6 -> wrong; 0.7 -> correct; 0.8 -> correct
    expected = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7) + abs(1 - 0.8)) / 4
    assert expected_calibration_error(probs, targets) == pytest.approx(expected)


def test_divergence_is_an_error_not_silent_nan() -> None:
    with pytest.raises(FloatingPointError, match="training loss"):
        run_trial(_config(lr=1e12, momentum=0.0), LocalReporter())
