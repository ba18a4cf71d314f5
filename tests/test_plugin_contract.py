"""Every registered plugin (alone, with its typical partners, and in each of its declared
``variants``) through a real trial.

Driven by the registry: a new plugin (or a new variant of one) is tested on every backbone
without anyone adding it here. Forward, backward, optimizer step, and evaluation (eval mode
deterministic) all run for real.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from normstudy.plugins import plugin_registry
from normstudy.spec import SpecError, validate_data
from normstudy.trial import LocalReporter
from normstudy.trial._train import _Trial

FAST = ["test_resnet", "test_efficientnet"]
SLOW = ["resnet18", "resnet50", "efficientnet_b0"]
BACKBONES = FAST + [pytest.param(name, marks=pytest.mark.slow) for name in SLOW]


def setups() -> list[tuple[str, str]]:
    """(plugin, set-up) for every registered plugin: ``default`` (its defaults with its
    partners), then each of its variants."""
    return [
        (name, setup)
        for name, cls in plugin_registry().items()
        for setup in ["default", *cls.variants]
    ]


def plugins_of(plugin: str, setup: str) -> dict[str, Any]:
    cls = plugin_registry()[plugin]
    if setup == "default":
        return {plugin: {}, **cls.partners}
    return cls.variants[setup]


def _study(plugin: str, model: str, setup: str = "default") -> dict[str, Any]:
    plugins = plugins_of(plugin, setup)
    return {
        "name": "contract",
        "dataset": {"name": "synthetic", "num_samples": 160, "image_size": 16, "num_classes": 4},
        "model": {"name": model, "cifar_stem": True},
        "train": {
            "epochs": 1,
            "batch_size": 16,
            "eval_batch_size": 64,
            "lr": 0.01,
            "max_steps_per_epoch": 2,
            "threads": 1,
        },
        "evaluation": {"evalmode_train_samples": 32, "noise_sigmas": [0.1], "fgsm_eps": [0.01]},
        "plugins": plugins,
    }


@pytest.mark.parametrize(("plugin", "setup"), setups(), ids=[f"{p}-{s}" for p, s in setups()])
def test_variants_enable_their_plugin_and_validate(plugin: str, setup: str) -> None:
    plugins = plugins_of(plugin, setup)
    assert plugin in plugins
    validate_data(_study(plugin, "test_resnet", setup))  # no conflict, options all valid


@pytest.mark.parametrize("model", BACKBONES)
@pytest.mark.parametrize(("plugin", "setup"), setups(), ids=[f"{p}-{s}" for p, s in setups()])
def test_plugin_runs_a_real_trial(plugin: str, setup: str, model: str) -> None:
    try:
        spec = validate_data(_study(plugin, model, setup))
    except SpecError as err:  # a plugin may refuse a backbone, but only at validation
        assert plugin in str(err) or any(p in str(err) for p in plugin_registry()), err
        pytest.skip(f"{plugin} does not apply to {model}: {err.problems[0]}")
    torch.manual_seed(0)
    trial = _Trial(spec.trial_base(), LocalReporter())
    before = {n: p.detach().clone() for n, p in trial.model.named_parameters()}
    metrics = trial.run_epoch([("val/acc", "max")])

    numbers = {k: v for k, v in metrics.items() if isinstance(v, float)}
    bad = {k: v for k, v in numbers.items() if not math.isfinite(v)}
    assert not bad, f"non-finite metrics: {bad}"
    for key in ("train/loss", "val/acc", "test/acc", "test/aurc", "test/acc_fgsm@0.01"):
        assert key in metrics
    changed = [n for n, p in trial.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "the optimizer step changed no parameter"

    trial.model.eval()
    x = trial.splits.val.x[:8]
    with torch.no_grad():
        first, second = trial.model(x), trial.model(x)
    torch.testing.assert_close(first, second)  # nothing random at evaluation time
    assert trial.model.training is False
