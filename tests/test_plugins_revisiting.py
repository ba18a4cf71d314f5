"""Plugins of 004 (and every registered plugin's basic contract) on real timm backbones."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn
from torch.optim import lr_scheduler

from normstudy.models import (
    InputNorm,
    activation_std,
    build_model,
    first_conv,
    model_activation,
    norm_layers,
    param_groups,
)
from normstudy.plugins import (
    ParamGroup,
    Plugin,
    PluginContext,
    instantiate,
    plugin_registry,
    validate_plugin_options,
)
from normstudy.spec._model import ModelSpec, TrialConfig

torch.set_num_threads(1)

FAST = ["test_resnet", "test_efficientnet"]
SLOW = ["resnet18", "resnet50", "efficientnet_b0"]
BACKBONES = FAST + [pytest.param(name, marks=pytest.mark.slow) for name in SLOW]
WEIGHT_DECAY = 5e-4


def setup_trial(
    name: str, plugins: dict[str, Any], **model: Any
) -> tuple[TrialConfig, nn.Module, list[ParamGroup], list[Plugin]]:
    """What a trial does before its first step: the hooks in their documented order."""
    config = TrialConfig(model=ModelSpec(name=name, **model), plugins=plugins)
    made = instantiate(config.plugins, PluginContext(config, 10, 3, train_size=100))
    for plugin in made:
        plugin.adjust_config(config)
    torch.manual_seed(0)
    net = build_model(config, num_classes=10, in_chans=3)
    for plugin in made:
        net = plugin.patch_model(net)
    groups = param_groups(net, WEIGHT_DECAY)
    for plugin in made:
        groups = plugin.param_groups(groups, net)
    return config, net, groups, made


def sgd(groups: list[ParamGroup], lr: float = 0.1) -> torch.optim.SGD:
    return torch.optim.SGD(
        [
            {"params": g.params, "lr": lr * g.lr_scale, "weight_decay": g.weight_decay}
            for g in groups
        ],
        lr=lr,
        momentum=0.9,
    )


def act_drop_types(net: nn.Module) -> list[tuple[str, str]]:
    """act/drop of every BatchNormAct2d, also after a plugin turned it into a NormLayer or
    RemovedNorm (which keep them) or wrapped it (so names may change: compare as a multiset)."""
    from normstudy.models import NormLayer, RemovedNorm

    return sorted(
        (type(m.act).__name__, type(m.drop).__name__)
        for m in net.modules()
        if isinstance(m, BatchNormAct2d)
        or (isinstance(m, NormLayer | RemovedNorm) and m.source_type == "BatchNormAct2d")
    )


def input_norm_of(net: nn.Module) -> InputNorm:
    found = [m for m in net.modules() if isinstance(m, InputNorm)]
    assert len(found) == 1
    return found[0]


# --- every registered plugin -------------------------------------------------------------


@pytest.mark.parametrize("plugin", sorted(plugin_registry()))
def test_plugin_is_described_and_has_strict_defaults(plugin: str) -> None:
    cls = plugin_registry()[plugin]
    assert cls.describe() and "\n" not in cls.describe()
    assert validate_plugin_options({plugin: {}})[plugin] == cls.Options().model_dump(mode="json")
    with pytest.raises(ValueError, match=rf"plugins\.{plugin}\.no_such_option"):
        validate_plugin_options({plugin: {"no_such_option": 1}})


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("plugin", sorted(plugin_registry()))
def test_plugin_trains_and_keeps_the_model_whole(plugin: str, name: str) -> None:
    _, plain, _, _ = setup_trial(name, {})
    try:
        _, net, groups, _ = setup_trial(name, {plugin: {}, **plugin_registry()[plugin].partners})
    except ValueError as err:  # a plugin may refuse a backbone, but only with a clear error
        pytest.skip(f"{plugin} does not apply to {name}: {err}")
    assert act_drop_types(net) == act_drop_types(plain)  # BatchNormAct2d keep act and drop
    grouped = [id(p) for g in groups for p in g.params]
    trainable = [id(p) for p in net.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 10  # BN needs a real batch
    assert torch.isfinite(net.eval()(x)).all()
    net.train()
    features = net.forward_features(x)
    logits = net.forward_head(features)
    assert logits.shape == (8, 10) and torch.isfinite(logits).all()
    assert net.forward_head(features, pre_logits=True).shape[-1] == net.num_features
    assert net.get_classifier().out_features == 10
    nn.functional.cross_entropy(net(x), y).backward()
    sgd(groups).step()
    # Train mode: after one step at batch 2, eval-mode running statistics are not meaningful.
    assert torch.isfinite(net(x)).all()


# --- gamma_init ------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("value", [1.0, 0.25, 0.01])
def test_gamma_init_sets_every_gamma_and_beta(name: str, value: float) -> None:
    _, net, _, _ = setup_trial(name, {"gamma_init": {"value": value}})
    for _, bn in norm_layers(net):
        assert torch.equal(bn.weight, torch.full_like(bn.weight, value))
        assert not bn.bias.any()


@pytest.mark.parametrize("name", ["test_resnet", pytest.param("resnet18", marks=pytest.mark.slow)])
def test_gamma_init_keep_zero_init_keeps_zero_init_last(name: str) -> None:
    _, plain, _, _ = setup_trial(name, {})
    zero = {n for n, bn in norm_layers(plain) if not bn.weight.any()}
    assert zero  # timm's zero_init_last: one BN per residual block
    _, net, _, _ = setup_trial(name, {"gamma_init": {"value": 0.1, "keep_zero_init": True}})
    for n, bn in norm_layers(net):
        assert torch.equal(bn.weight, torch.full_like(bn.weight, 0.0 if n in zero else 0.1)), n
        assert not bn.bias.any()


@pytest.mark.parametrize("name", BACKBONES)
def test_gamma_init_identity_leaves_outputs_identical(name: str) -> None:
    _, plain, _, _ = setup_trial(name, {})
    _, net, _, _ = setup_trial(name, {"gamma_init": {"value": 1.0, "keep_zero_init": True}})
    x = torch.randn(2, 3, 32, 32)
    for train in (False, True):
        assert torch.equal(plain.train(train)(x), net.train(train)(x))


# --- lr_divisor ------------------------------------------------------------------------


def _schedulers(opt: torch.optim.Optimizer) -> dict[str, lr_scheduler.LRScheduler]:
    return {
        "cosine": lr_scheduler.CosineAnnealingLR(opt, T_max=10),
        "step": lr_scheduler.StepLR(opt, step_size=2, gamma=0.1),
        "warmup+cosine": lr_scheduler.SequentialLR(
            opt,
            [
                lr_scheduler.LinearLR(opt, 0.01, total_iters=3),
                lr_scheduler.CosineAnnealingLR(opt, 7),
            ],
            milestones=[3],
        ),
        # A floor as a *ratio* of each group's lr (not CosineAnnealingLR's absolute eta_min).
        "cosine_min_ratio": lr_scheduler.LambdaLR(
            opt, lambda e: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * e / 10))
        ),
    }


@pytest.mark.parametrize("schedule", ["cosine", "step", "warmup+cosine", "cosine_min_ratio"])
@pytest.mark.parametrize("name", BACKBONES)
def test_lr_divisor_ratio_survives_the_scheduler(name: str, schedule: str) -> None:
    plugins = {"lr_divisor": {"gamma": 100.0, "beta": 10.0}}
    _, _, groups, _ = setup_trial(name, plugins)
    expected = {"norm_weight": 1 / 100, "norm_bias": 1 / 10, "bias": 1.0, "weight": 1.0}
    assert {g.kind: g.lr_scale for g in groups} == expected
    assert {g.kind: g.weight_decay for g in groups} == {
        "norm_weight": 0.0, "norm_bias": 0.0, "bias": 0.0, "weight": WEIGHT_DECAY
    }  # fmt: skip
    opt = sgd(groups, lr=0.2)
    sched = _schedulers(opt)[schedule]
    for _ in range(8):
        base = opt.param_groups[[g.kind for g in groups].index("weight")]["lr"]
        for group, torch_group in zip(groups, opt.param_groups, strict=True):
            assert torch_group["lr"] / base == pytest.approx(expected[group.kind], rel=1e-9)
        opt.step()
        sched.step()


@pytest.mark.parametrize("name", FAST)
def test_lr_divisor_of_one_changes_nothing(name: str) -> None:
    _, _, plain, _ = setup_trial(name, {})
    _, _, groups, _ = setup_trial(name, {"lr_divisor": {"gamma": 1.0, "beta": 1.0}})
    assert [(g.kind, g.names, g.lr_scale, g.weight_decay) for g in groups] == [
        (g.kind, g.names, g.lr_scale, g.weight_decay) for g in plain
    ]


# --- input_norm ------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize(
    ("plugins", "gain"),
    [
        ({"input_norm": {}}, 1.0),
        ({"input_norm": {"gain": 0.5}}, 0.5),
        ({"input_norm": {}, "gamma_init": {"value": 0.25}}, 0.25),
        ({"input_norm": {"gain": 0.5}, "gamma_init": {"value": 0.25}}, 0.5),
    ],
)
def test_input_norm_layer(name: str, plugins: dict[str, Any], gain: float) -> None:
    config, net, groups, _ = setup_trial(name, plugins)
    assert config.dataset.normalize is False  # data arrive in [0, 1] only
    norm = input_norm_of(net)
    sigma = activation_std(model_activation(net))
    assert sigma == pytest.approx(0.5595 if "efficientnet" in name else 0.5838, abs=1e-4)
    assert torch.allclose(norm.weight, torch.full((3,), sigma * gain))
    assert not norm.bias.any() and not norm.bias.requires_grad
    assert all(p is not norm.bias for g in groups for p in g.params)
    # It sits in the first conv's slot, inside the model, right before that conv.
    slot = next(m for m in net.modules() if isinstance(m, nn.Sequential) and m[0] is norm)
    assert len(slot) == 2 and slot[1] is first_conv(net)[1]
    if "gamma_init" in plugins:  # gamma_init skipped it and set every other γ
        value = plugins["gamma_init"]["value"]
        assert all((bn.weight == value).all() for _, bn in norm_layers(net, skip_input_norm=True))


@pytest.mark.parametrize("name", BACKBONES)
def test_input_norm_bias_stays_zero_while_training(name: str) -> None:
    _, net, groups, _ = setup_trial(name, {"input_norm": {}, "lr_divisor": {}}, cifar_stem=True)
    norm = input_norm_of(net)
    assert any(norm.weight is p for g in groups if g.kind == "norm_weight" for p in g.params)
    opt = sgd(groups)
    start = norm.weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        x = torch.rand(4, 3, 16, 16) * 0.5 + 0.25
        nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3])).backward()
        norm.bias.grad = torch.ones(3)  # even with a gradient, no optimizer group moves it
        opt.step()
    assert not norm.bias.any()
    assert not torch.equal(norm.weight, start)  # γ̂ does learn
    x = torch.rand(2, 3, 16, 16)
    out = net.forward_head(net.forward_features(x))
    assert out.shape == (2, 10) and torch.equal(out, net(x))


# --- fan_in_init -----------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES)
def test_fan_in_init_statistics(name: str) -> None:
    _, net, _, _ = setup_trial(name, {"fan_in_init": {}})
    # Every big conv (ResNet's 1x1 convs have fan_in != fan_out, unlike timm's fan-out init).
    convs = [m.weight.detach() for m in net.modules() if isinstance(m, nn.Conv2d)]
    big = [w for w in convs if w.numel() >= 4096]
    assert any(w.shape[0] != w.shape[1] for w in big)  # fan_in != fan_out
    for weight in big:
        std, n = math.sqrt(2 / weight[0].numel()), weight.numel()  # Kaiming fan-in, relu gain
        assert float(weight.std()) == pytest.approx(std, rel=5 / math.sqrt(2 * n))  # 5 SEs
        assert abs(float(weight.mean())) < 5 * std / math.sqrt(n)
    linear = net.get_classifier()
    bound, largest = 1 / math.sqrt(linear.in_features), float(linear.weight.detach().abs().max())
    assert 0.9 * bound < largest <= bound
    biased = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert all(not m.bias.any() for m in biased if m.bias is not None)
    # Only conv/linear layers change: BN γ/β are timm's (γ=1 or zero_init_last's 0, β=0).
    assert all(
        not bn.bias.any() and set(bn.weight.tolist()) <= {0.0, 1.0} for _, bn in norm_layers(net)
    )


def test_plugins_run_in_documented_order() -> None:
    plugins: dict[str, Any] = {
        "gamma_init": {},
        "fan_in_init": {},
        "lr_divisor": {},
        "input_norm": {},
    }
    _, _, _, made = setup_trial("test_resnet", plugins)
    assert [p.name for p in made] == ["input_norm", "lr_divisor", "fan_in_init", "gamma_init"]


@pytest.mark.parametrize(
    ("plugins", "field"),
    [
        ({"gamma_init": {"value": 0.0}}, "plugins.gamma_init.value"),
        ({"gamma_init": {"value": 1.5}}, "plugins.gamma_init.value"),
        ({"lr_divisor": {"gamma": 0.5}}, "plugins.lr_divisor.gamma"),
        ({"lr_divisor": {"beta": 0}}, "plugins.lr_divisor.beta"),
        ({"input_norm": {"gain": -1.0}}, "plugins.input_norm.gain"),
    ],
)
def test_options_are_checked(plugins: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        validate_plugin_options(plugins)
