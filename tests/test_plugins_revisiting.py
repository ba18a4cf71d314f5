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
    NormLayer,
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
from tests.test_plugin_contract import plugins_of, setups

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
@pytest.mark.parametrize(("plugin", "setup"), setups(), ids=[f"{p}-{s}" for p, s in setups()])
def test_plugin_trains_and_keeps_the_model_whole(plugin: str, setup: str, name: str) -> None:
    _, plain, _, _ = setup_trial(name, {})
    try:
        _, net, groups, _ = setup_trial(name, plugins_of(plugin, setup))
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


# --- affine_form -----------------------------------------------------------------------


def _affine_layer(affine: str, channels: int = 4) -> tuple[nn.Module, Any]:
    """A lone BN patched to the formulation, with random γ, β (and γ₀), in training mode."""
    config = TrialConfig(plugins={"affine_form": {"affine": affine}})
    (plugin,) = instantiate(config.plugins, PluginContext(config, 10, 3, train_size=100))
    holder = plugin.patch_model(nn.Sequential(nn.BatchNorm2d(channels)))
    layer = holder[0]
    torch.manual_seed(3)
    with torch.no_grad():
        for param in layer.parameters():  # γ, β and, for A2, γ₀
            param.uniform_(-1.5, 1.5)
    return holder.train(), layer


def _affine_by_formula(
    affine: str, xhat: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, gamma0: Any
) -> torch.Tensor:
    g, b = gamma.view(1, -1, 1, 1), beta.view(1, -1, 1, 1)
    if affine == "standard":
        return g * xhat + b
    if affine == "A1":
        return g * (xhat + b)
    return g * (gamma0.view(1, -1, 1, 1) * xhat + b)


@pytest.mark.parametrize("affine", ["standard", "A1", "A2"])
def test_affine_formulations_follow_the_formula(affine: str) -> None:
    holder, layer = _affine_layer(affine)
    assert (getattr(layer, "gamma0", None) is not None) == (affine == "A2")
    x = torch.randn(8, 4, 3, 5) * 3 + 1
    params = {n: p.detach().clone().requires_grad_(True) for n, p in layer.named_parameters()}
    mean = x.mean((0, 2, 3), keepdim=True)
    var = x.var((0, 2, 3), unbiased=False, keepdim=True)
    xhat = (x - mean) / torch.sqrt(var + layer.eps)
    gamma0 = params.get("gamma0")
    expected = _affine_by_formula(affine, xhat, params["weight"], params["bias"], gamma0)
    out = holder(x)
    torch.testing.assert_close(out, expected)
    weights = torch.randn_like(out)
    got = torch.autograd.grad((out * weights).sum(), list(layer.parameters()))
    want = torch.autograd.grad((expected * weights).sum(), list(params.values()))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    holder.eval()  # running statistics, same formula
    xhat = (x - layer.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        layer.running_var.view(1, -1, 1, 1) + layer.eps
    )
    expected = _affine_by_formula(affine, xhat, params["weight"], params["bias"], gamma0)
    torch.testing.assert_close(holder(x), expected.detach())


@pytest.mark.parametrize("affine", ["A1", "A2"])
def test_affine_coefficients_and_shift(affine: str) -> None:
    """a, b of y = a·x̂ + b (analytic moments and weight norm's init rely on them), and
    ``set_shift`` solving b for β: also where γ = 0 (β is then left alone)."""
    from normstudy.models._analytic import norm_output_moments
    from normstudy.models._norm import affine_coefficients

    _, layer = _affine_layer(affine)
    gamma, beta = layer.weight.detach(), layer.bias.detach()
    scale = gamma * (layer.gamma0.detach() if affine == "A2" else 1.0)
    a, b = affine_coefficients(layer)
    torch.testing.assert_close(a, scale)
    torch.testing.assert_close(b, gamma * beta)
    mean, var = torch.rand(4), torch.rand(4) + 0.5
    m, v = norm_output_moments(layer, mean, var)
    torch.testing.assert_close(m, gamma * beta)
    torch.testing.assert_close(v, scale**2 * var / (var + layer.eps))
    with torch.no_grad():
        layer.weight[0] = 0.0
    old = layer.bias.detach().clone()
    shift = torch.tensor([5.0, -1.0, 0.5, 2.0])
    layer.affine_stage.set_shift(layer, shift)
    torch.testing.assert_close(layer.bias[1:], shift[1:] / layer.weight[1:].detach())
    assert layer.bias[0] == old[0]


def _explicit_path(net: nn.Module) -> nn.Module:
    """Every NormLayer through its stages rather than BN's fused kernel (an identity perturb),
    so two formulations are compared with the same operations."""
    for m in net.modules():
        if isinstance(m, NormLayer):
            m.perturb.append(lambda _layer, xhat: xhat)
    return net


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("affine", ["A1", "A2"])
def test_affine_formulations_start_as_bn_after_gamma_init(name: str, affine: str) -> None:
    """With 004's init (0 < γ ≤ 1, γ₀ = 1, β = 0) all three formulations compute the same
    network, timm's zero-initialized last γ of ResNet blocks (kept) included; gamma_init sets
    γ and β whatever the formulation."""
    plugins: dict[str, Any] = {"gamma_init": {"value": 0.25, "keep_zero_init": True}}
    _, plain, _, _ = setup_trial(name, {**plugins, "affine_form": {"affine": "standard"}})
    _, net, _, _ = setup_trial(name, {**plugins, "affine_form": {"affine": affine}})
    layers = norm_layers(net)
    assert all(
        isinstance(bn, NormLayer) and bn.owners["affine"] == "affine_form" for _, bn in layers
    )
    for (_, bn), (_, ref) in zip(layers, norm_layers(plain), strict=True):
        torch.testing.assert_close(bn.weight, ref.weight)
        assert not bn.bias.any()
        if affine == "A2":
            assert torch.equal(bn.gamma0, torch.ones_like(bn.weight))  # type: ignore[arg-type]
    _explicit_path(plain)
    x = torch.randn(4, 3, 32, 32)
    for train in (False, True):  # (x̂ + 0)·γ and (1·x̂ + 0)·γ are x̂·γ + 0 exactly
        torch.testing.assert_close(net.train(train)(x), plain.train(train)(x), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", FAST)
def test_affine_a2_gamma0_group_and_lr(name: str) -> None:
    plugins = {
        "affine_form": {"affine": "A2"},
        "lr_divisor": {"gamma": 100.0, "beta": 10.0, "gamma0": 4.0},
        "gamma_init": {},
    }
    _, net, groups, made = setup_trial(name, plugins)
    assert [p.name for p in made] == ["affine_form", "lr_divisor", "gamma_init"]
    by_kind = {g.kind: g for g in groups}
    gamma0 = {n for n, _ in net.named_parameters() if n.endswith(".gamma0")}
    assert gamma0 and set(by_kind["norm_gamma0"].names) == gamma0
    assert not gamma0 & {n for g in groups if g.kind != "norm_gamma0" for n in g.names}
    assert by_kind["norm_gamma0"].lr_scale == 1 / 4 and by_kind["norm_gamma0"].weight_decay == 0
    assert by_kind["norm_weight"].lr_scale == 1 / 100
    # One SGD step (momentum buffers start at the gradient): Δγ₀ = −(lr/c_γ₀)·∂L/∂γ₀.
    x = torch.rand(8, 3, 32, 32)
    before = {n: p.detach().clone() for n, p in net.named_parameters() if n in gamma0}
    nn.functional.cross_entropy(net.train()(x), torch.arange(8) % 10).backward()
    grads = {n: p.grad.detach().clone() for n, p in net.named_parameters() if n in gamma0}
    sgd(groups, lr=0.2).step()
    for n, p in net.named_parameters():
        if n in gamma0:
            torch.testing.assert_close(p.detach(), before[n] - 0.2 / 4 * grads[n])
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_lr_divisor_default_leaves_gamma0_at_the_base_lr() -> None:
    plugins = {"affine_form": {"affine": "A2"}, "lr_divisor": {}}
    _, _, groups, _ = setup_trial("test_resnet", plugins)
    scales = {g.kind: g.lr_scale for g in groups}
    assert scales["norm_gamma0"] == 1.0 and scales["norm_weight"] == 1 / 100


def test_affine_form_is_searchable_and_checked() -> None:
    from normstudy.spec import SpecError, validate_data
    from normstudy.spec._space import resolve_config

    study = {
        "name": "affine",
        "model": {"name": "test_resnet"},
        "plugins": {"affine_form": {}, "gamma_init": {}, "lr_divisor": {}},
        "search": {
            "space": {
                "plugins.affine_form.affine": {
                    "type": "categorical",
                    "choices": ["standard", "A1", "A2"],
                }
            }
        },
    }
    spec = validate_data(study)
    for choice in ("standard", "A1", "A2"):
        config = resolve_config(spec.trial_base(), {"plugins.affine_form.affine": choice})
        assert TrialConfig.model_validate(config).plugins["affine_form"]["affine"] == choice
    study["search"]["space"]["plugins.affine_form.affine"]["choices"] = ["A1", "A3"]  # type: ignore[index]
    with pytest.raises(SpecError, match=r"plugins\.affine_form\.affine"):
        validate_data(study)
    with pytest.raises(SpecError, match=r"plugins\.affine_form and plugins\.bayesian_scale"):
        validate_data({"name": "x", "plugins": {"affine_form": {}, "bayesian_scale": {}}})
    with pytest.raises(SpecError, match=r"plugins\.affine_form and plugins\.remove_norm"):
        validate_data({"name": "x", "plugins": {"affine_form": {}, "remove_norm": {}}})
