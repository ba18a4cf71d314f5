"""Plugins of 000 (Stochastic Normalizations as Bayesian Learning): norm_batch, projection,
weight_norm, analytic_norm; the formulas of PLUGINS.md checked on known tensors."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normstudy.models import build_model, param_groups
from normstudy.models._analytic import (
    INPUT_MEAN,
    INPUT_VAR,
    AnalyticStatistics,
    conv_moments,
    propagate,
    relu_moments,
)
from normstudy.models._ghost import GhostStatistics
from normstudy.models._norm import NormLayer, RemovedNorm, norm_positions, to_norm_layers
from normstudy.models._reparam import feeding_layers, row_norms, weight_norm_statistics
from normstudy.plugins import ParamGroup, Plugin, PluginContext, instantiate
from normstudy.spec import SpecError, validate_data
from normstudy.spec._model import ModelSpec, TrainSpec, TrialConfig
from normstudy.trial import LocalReporter
from normstudy.trial._train import _Trial

torch.set_num_threads(1)

FAST = ["test_resnet", "test_efficientnet"]
SLOW = ["resnet18", "resnet50", "efficientnet_b0"]
BACKBONES = FAST + [pytest.param(name, marks=pytest.mark.slow) for name in SLOW]
RESNETS = ["test_resnet", pytest.param("resnet18", marks=pytest.mark.slow)]
WEIGHT_DECAY = 5e-4


def setup_trial(
    name: str,
    plugins: dict[str, Any],
    *,
    batch_size: int = 16,
    splits: Any = None,
    seed: int = 0,
) -> tuple[nn.Module, list[ParamGroup], list[Plugin]]:
    """What a trial does before its first step (without data_init): hooks in their order."""
    config = TrialConfig(
        model=ModelSpec(name=name, cifar_stem=True),
        train=TrainSpec(batch_size=batch_size, weight_decay=WEIGHT_DECAY),
        plugins=plugins,
    )
    made = instantiate(config.plugins, PluginContext(config, 10, 3, train_size=100, splits=splits))
    torch.manual_seed(seed)
    net = build_model(config, num_classes=10, in_chans=3)
    for plugin in made:
        net = plugin.patch_model(net)
    groups = param_groups(net, WEIGHT_DECAY)
    for plugin in made:
        groups = plugin.param_groups(groups, net)
    return net, groups, made


def sgd(groups: list[ParamGroup], lr: float = 0.1) -> torch.optim.SGD:
    return torch.optim.SGD(
        [
            {"params": g.params, "lr": lr * g.lr_scale, "weight_decay": g.weight_decay}
            for g in groups
        ],
        lr=lr,
        momentum=0.9,
    )


def train_step(net: nn.Module, groups: list[ParamGroup], made: list[Plugin], x: Any) -> None:
    opt = sgd(groups)
    y = torch.arange(len(x)) % 10
    F.cross_entropy(net.train()(x), y).backward()
    opt.step()
    for plugin in made:
        plugin.after_step(net)


def study(plugins: dict[str, Any], model: str = "test_resnet", **train: Any) -> dict[str, Any]:
    return {
        "name": "stochastic",
        "dataset": {"name": "synthetic", "num_samples": 160, "image_size": 16, "num_classes": 4},
        "model": {"name": model, "cifar_stem": True},
        "train": {"epochs": 1, "lr": 0.01, "max_steps_per_epoch": 2, "threads": 1, **train},
        "evaluation": {"evalmode_train_samples": 0, "dropout50": False, "coverage": False},
        "plugins": plugins,
    }


def set_eps(net: nn.Module, eps: float) -> None:
    """Every BN as a ``NormLayer`` (the same function) with this eps."""
    for _, layer in to_norm_layers(net):
        layer.eps = eps


def norm_layer(channels: int = 3) -> NormLayer:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, channels))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, channels))
    return NormLayer(bn)


# --- norm_batch: ghost batch norm (N < B) ----------------------------------------------------


@pytest.mark.parametrize("size", [2, 4, 3])  # 3: groups 3, 3, 2 (a last partial group)
def test_ghost_statistics_normalize_each_group_like_bn(size: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * 2 + torch.arange(8.0).view(8, 1, 1, 1)  # groups differ
    layer = norm_layer()
    layer.statistics = GhostStatistics(size)
    out = layer.train()(x)
    expected = torch.cat(
        [
            F.batch_norm(g, None, None, layer.weight, layer.bias, training=True)
            for g in x.split(size)
        ]
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # Running statistics: one update per forward with the averages over groups (variance made
    # unbiased with the nominal group size N·H·W), momentum 0.1 from (0, 1).
    groups = x.split(size)
    n = size * 16
    mean = torch.stack([g.mean((0, 2, 3)) for g in groups]).mean(0)
    var = torch.stack([g.var((0, 2, 3), unbiased=False) for g in groups]).mean(0) * n / (n - 1)
    torch.testing.assert_close(layer.running_mean, 0.1 * mean)
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * var)
    assert int(layer.num_batches_tracked) == 1
    # Eval mode: BN with the running statistics.
    expected_eval = F.batch_norm(
        x, layer.running_mean, layer.running_var, layer.weight, layer.bias, training=False
    )
    torch.testing.assert_close(layer.eval()(x), expected_eval)


def test_ghost_statistics_couple_samples_only_within_their_group() -> None:
    x = torch.randn(8, 2, 3, 3, requires_grad=True)
    layer = norm_layer(2)
    layer.statistics = GhostStatistics(4)
    layer.train()(x)[0].sum().backward()  # output of sample 0 (group 0: samples 0..3)
    assert x.grad is not None
    touched = x.grad.flatten(1).abs().sum(1)
    assert (touched[:4] > 0).all() and (touched[4:] == 0).all()


def test_ghost_batch_no_larger_than_the_group_is_plain_bn() -> None:
    x = torch.randn(4, 3, 2, 2)
    layer, plain = norm_layer(), norm_layer()
    layer.statistics = GhostStatistics(4)
    torch.testing.assert_close(layer.train()(x), plain.train()(x))
    torch.testing.assert_close(layer.running_var, plain.running_var)


@pytest.mark.parametrize(
    ("size", "batch", "ok"),
    [(8, 32, True), (32, 32, True), (128, 32, True), (1024, 32, True), (12, 32, False)],
)
def test_norm_batch_validation(size: int, batch: int, ok: bool) -> None:
    data = study({"norm_batch": {"size": size}}, batch_size=batch)
    if ok:
        validate_data(data)
        return
    with pytest.raises(SpecError) as err:
        validate_data(data)
    assert "plugins.norm_batch.size (12)" in str(err.value)
    assert "train.batch_size (32)" in str(err.value)


@pytest.mark.parametrize("name", FAST)
def test_norm_batch_patches_only_ghost_sizes(name: str) -> None:
    net, _, _ = setup_trial(name, {"norm_batch": {"size": 4}}, batch_size=16)
    layers = [m for _, m in norm_positions(net)]
    assert layers and all(isinstance(m.statistics, GhostStatistics) for m in layers)
    assert all(m.statistics.size == 4 and m.owners["statistics"] == "norm_batch" for m in layers)
    for size in (16, 64):  # N >= B: BN's own statistics (over the N samples when N > B)
        net, _, _ = setup_trial(name, {"norm_batch": {"size": size}}, batch_size=16)
        assert not norm_positions(net)


@pytest.mark.parametrize(
    ("size", "batch", "steps", "extra", "effective"),
    [
        (64, 16, [16, 16], [48, 48], 64.0),  # N > B: N − B extra samples, N per batch
        (16, 16, [16], [0], 16.0),  # standard BN
        (4, 16, [16, 16], [0, 0], 4.0),  # ghost: groups of N
        (4, 16, [6], [0], (4 * 4 + 2 * 2) / 6),  # a short batch: groups 4 and 2
    ],
)
def test_norm_batch_extra_samples_and_effective_batch(
    size: int, batch: int, steps: list[int], extra: list[int], effective: float
) -> None:
    config = TrialConfig(train=TrainSpec(batch_size=batch), plugins={"norm_batch": {"size": size}})
    (plugin,) = instantiate(config.plugins, PluginContext(config, 10, 3, train_size=100))
    assert [plugin.extra_samples(b) for b in steps] == extra
    assert plugin.epoch_metrics(nn.Identity()) == {"norm_batch/effective": pytest.approx(effective)}
    # Reset each epoch; without steps, the configured N.
    assert plugin.epoch_metrics(nn.Identity()) == {"norm_batch/effective": float(size)}


def test_extra_samples_shape_the_batch_statistics_of_a_real_step() -> None:
    """N = 4B in the real trial step: the first BN sees all N samples, its running mean moves
    towards their mean, the loss uses the B, and the extra samples' inputs get gradients (they
    act through the batch statistics only)."""
    batch, size = 8, 32
    spec = validate_data(study({"norm_batch": {"size": size}}, batch_size=batch))
    trial = _Trial(spec.trial_base(), LocalReporter())
    model: Any = trial.model
    bn = model.bn1
    seen: list[torch.Tensor] = []
    bn.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    extra = torch.randn(size - batch, *trial.splits.train.x.shape[1:], requires_grad=True)
    calls: list[int] = []

    def fixed_extra(b: int) -> torch.Tensor:
        calls.append(trial.plugins[0].extra_samples(b))
        return extra

    trial._extra = fixed_extra  # type: ignore[method-assign]
    before = bn.running_mean.clone()
    x, y = trial.splits.train.x[:batch], trial.splits.train.y[:batch]
    sums = {"loss": 0.0, "correct": 0.0, "n": 0.0}
    trial._step(x, y, sums)
    assert calls == [size - batch]
    assert seen[0].shape[0] == size
    torch.testing.assert_close(bn.running_mean, 0.9 * before + 0.1 * seen[0].mean((0, 2, 3)))
    assert sums["n"] == batch  # loss and accuracy on the B training samples only
    assert extra.grad is not None and bool((extra.grad.flatten(1).abs().sum(1) > 0).all())
    metrics = trial.plugins[0].epoch_metrics(trial.model)
    assert metrics == {"norm_batch/effective": float(size)}


# --- projection ----------------------------------------------------------------------------

# (conv, norm) leaf names that timm's blocks pair, for the naming check of the probe.
RESNET_PAIRS = {("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")}
EFFNET_PAIRS = {
    ("conv_stem", "bn1"),
    ("conv", "bn1"),  # ConvBnAct
    ("conv_exp", "bn1"),  # EdgeResidual
    ("conv_pwl", "bn2"),
    ("conv_dw", "bn1"),  # DepthwiseSeparable
    ("conv_pw", "bn2"),
    ("conv_pw", "bn1"),  # InvertedResidual
    ("conv_dw", "bn2"),
    ("conv_pwl", "bn3"),
    ("conv_head", "bn2"),
}


def _follows_naming_convention(layer: str, norm: str, family: str) -> bool:
    *lparent, lleaf = layer.split(".")
    *nparent, nleaf = norm.split(".")
    if lparent != nparent:
        return False
    if lleaf.isdigit() and nleaf.isdigit():  # Sequential stems and downsamples: conv, then BN
        return int(nleaf) == int(lleaf) + 1
    return (lleaf, nleaf) in (RESNET_PAIRS if family == "resnet" else EFFNET_PAIRS)


@pytest.mark.parametrize("name", BACKBONES)
def test_feeding_layers_pair_every_norm_with_its_conv(name: str) -> None:
    plugins = {"input_norm": {}}  # its BN (before the stem conv) is not a normalization here
    net, _, _ = setup_trial(name, plugins)
    pairs, unfed = feeding_layers(net, 3)
    norms = [n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    input_norm = [n for n in norms if getattr(net.get_submodule(n), "normstudy_input_norm", 0)]
    assert len(input_norm) == 1 and not unfed
    assert [n for _, n in pairs] == [n for n in norms if n not in input_norm]  # forward order
    family = "efficientnet" if "efficientnet" in name else "resnet"
    slot = input_norm[0].rpartition(".")[0]  # Sequential(InputNorm, stem conv) in the conv's slot
    named = [(slot if layer == f"{slot}.1" else layer, norm) for layer, norm in pairs]
    bad = [p for p in named if not _follows_naming_convention(*p, family)]
    assert not bad
    layers = {layer for layer, _ in pairs}
    classifier = "fc" if family == "resnet" else "classifier"
    assert classifier not in layers and not any("se." in layer for layer in layers)


@pytest.mark.parametrize("name", BACKBONES)
def test_projection_keeps_rows_at_unit_norm(name: str) -> None:
    net, groups, made = setup_trial(name, {"projection": {}})
    (plugin,) = made
    projected = plugin.projected(net)  # type: ignore[attr-defined]
    pairs, _ = feeding_layers(net, 3)
    assert len(projected) == len({layer for layer, _ in pairs})
    by_kind = {g.kind: g for g in groups}
    assert {id(p) for p in by_kind["projected"].params} == {id(p) for p in projected}
    assert by_kind["projected"].weight_decay == 0.0
    assert not {id(p) for p in by_kind["weight"].params} & {id(p) for p in projected}
    classifier = net.get_classifier()  # type: ignore[operator]
    assert all(p is not classifier.weight for p in projected)
    for param in projected:  # projected at the start already
        torch.testing.assert_close(row_norms(param), torch.ones(param.shape[0]))
    train_step(net, groups, made, torch.randn(4, 3, 16, 16))
    for param in projected:
        norms = row_norms(param)
        assert float((norms - 1).abs().max()) < 1e-5
    assert float((row_norms(classifier.weight) - 1).abs().max()) > 1e-2  # left alone


def test_projection_skips_rows_that_are_not_scale_invariant() -> None:
    net, _, _ = setup_trial("test_resnet", {})
    layers = dict(to_norm_layers(net))
    layers["bn1"].scale = False  # mean-only: the loss depends on the scale of conv1's rows
    model: Any = net
    model.layer1[0].bn2 = RemovedNorm(model.layer1[0].bn2)  # no normalization at all
    config = TrialConfig(model=ModelSpec(name="test_resnet"), plugins={"projection": {}})
    (plugin,) = instantiate(config.plugins, PluginContext(config, 10, 3, train_size=100))
    plugin.patch_model(net)
    projected = set(plugin.names)  # type: ignore[attr-defined]
    assert "conv1.weight" not in projected and "layer1.0.conv2.weight" not in projected
    assert {"layer1.0.conv1.weight", "layer2.0.downsample.1.weight"} <= projected
    assert len(projected) == len(layers) - 2


@pytest.mark.parametrize("name", FAST)
def test_projection_does_not_change_what_a_bn_network_computes(name: str) -> None:
    """Only scale-invariant rows are projected: in train mode (batch statistics, eps ≈ 0 so
    that invariance is exact) the network is the same function before and after."""
    plain, _, _ = setup_trial(name, {})
    projected, _, _ = setup_trial(name, {"projection": {}})
    for net in (plain, projected):
        set_eps(net, 1e-12)  # BN's fused kernel wants eps > 0
    x = torch.randn(8, 3, 16, 16)
    torch.testing.assert_close(projected.train()(x), plain.train()(x), rtol=1e-4, atol=1e-5)


# --- weight_norm ---------------------------------------------------------------------------


def wn_layers(net: nn.Module) -> list[NormLayer]:
    return [
        m
        for m in net.modules()
        if isinstance(m, NormLayer) and m.statistics is weight_norm_statistics
    ]


@pytest.mark.parametrize("name", BACKBONES)
def test_weight_norm_reparametrizes_each_conv_feeding_a_norm(name: str) -> None:
    net, _, _ = setup_trial(name, {"weight_norm": {}})
    pairs, _ = feeding_layers(net, 3)
    layers = wn_layers(net)
    assert len(layers) == len(pairs) == len(norm_positions(net))
    for layer_name, _ in pairs:
        conv = net.get_submodule(layer_name)
        g = conv.parametrizations.weight.original0
        assert g.dim() == conv.weight.dim() and not g.requires_grad and bool((g == 1).all())
        torch.testing.assert_close(row_norms(conv.weight), torch.ones(conv.weight.shape[0]))
    assert all(
        not m.center and not m.scale and m.owners["statistics"] == "weight_norm" for m in layers
    )
    # Deterministic and batch-independent: the same function in train and eval mode.
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(net.train()(x)[:1], net.train()(x[:1]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net.eval()(x), net.train()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("plugins", [{}, {"gamma_init": {"value": 1.0}}])
def test_weight_norm_data_init_standardizes_the_init_batch(
    name: str, plugins: dict[str, Any]
) -> None:
    """Each position's pre-activation output on the init batch: mean β₀ and variance
    γ₀²·σ²/(σ² + eps) per channel, σ² its input's variance (γ₀, β₀: the BN's affine before; with
    γ₀ = 1, β₀ = 0: zero mean and unit variance up to BN's eps), as BN would give."""
    net, _, made = setup_trial(name, {**plugins, "weight_norm": {}})
    layers = wn_layers(net)
    gamma0 = [m.weight.detach().clone() for m in layers]
    beta0 = [m.bias.detach().clone() for m in layers]
    if plugins:
        assert all(bool((g == 1).all()) for g in gamma0) and all(not b.any() for b in beta0)
    torch.manual_seed(1)
    x = torch.randn(128, 3, 16, 16) * 0.7 + 0.3
    for plugin in made:
        plugin.data_init(net, x)
    captured: list[torch.Tensor] = []
    inputs: list[torch.Tensor] = []
    for layer in layers:  # drop is Identity: its output is the affine output, before the act
        layer.drop.register_forward_hook(lambda _, __, out: captured.append(out.detach().clone()))
        layer.register_forward_pre_hook(
            lambda _, args: inputs.append(args[0].var((0, 2, 3), unbiased=False))
        )
    with torch.no_grad():
        net.train()(x)
    assert len(captured) == len(inputs) == len(layers)
    for layer, out, sigma2, g0, b0 in zip(layers, captured, inputs, gamma0, beta0, strict=True):
        mean, var = out.mean((0, 2, 3)), out.var((0, 2, 3), unbiased=False)
        torch.testing.assert_close(mean, b0, rtol=0, atol=1e-4)
        expected = g0 * g0 * sigma2 / (sigma2 + layer.eps)
        torch.testing.assert_close(var, expected, rtol=1e-3, atol=1e-6)
        if plugins:  # all γ₀ = 1: unit variance wherever the input variance dwarfs eps
            assert bool(((var - 1).abs() < 1e-2)[sigma2 > 1e-3].all())


@pytest.mark.parametrize("name", FAST)
def test_weight_norm_comes_after_the_weight_inits(name: str) -> None:
    """``nn.init.*(conv.weight)`` does nothing on a parametrized conv: the inits run first
    (lower ``order``), so the directions v are the initialized weights."""
    inited, _, _ = setup_trial(name, {"fan_in_init": {}})
    net, _, made = setup_trial(name, {"fan_in_init": {}, "weight_norm": {}})
    assert [p.name for p in made] == ["fan_in_init", "weight_norm"]
    pairs, _ = feeding_layers(net, 3)
    for layer, _ in pairs:
        v = net.get_submodule(layer).parametrizations.weight.original1
        torch.testing.assert_close(v, inited.get_submodule(layer).weight)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("decay", [False, True])
def test_weight_norm_parameter_groups(name: str, decay: bool) -> None:
    net, groups, _ = setup_trial(name, {"weight_norm": {"direction_weight_decay": decay}})
    by_kind = {g.kind: g for g in groups}
    names = {g.kind: set(g.names) for g in groups}
    directions = {n for n, _ in net.named_parameters() if n.endswith("weight.original1")}
    others = {
        n for n, p in net.named_parameters() if p.ndim > 1 and p.requires_grad
    } - directions  # the classifier, SE convs: not feeding a norm
    magnitudes = {n for n, _ in net.named_parameters() if n.endswith("weight.original0")}
    assert directions and names["wn_direction"] == directions
    assert by_kind["wn_direction"].weight_decay == (WEIGHT_DECAY if decay else 0.0)
    assert not magnitudes & set().union(*names.values())  # frozen 4-D g: in no group at all
    scales = {f"{n}.weight" for n, m in net.named_modules() if m in wn_layers(net)}
    assert scales <= names["norm_weight"] and by_kind["norm_weight"].weight_decay == 0.0
    assert names["weight"] == others and ("fc.weight" in others or "classifier.weight" in others)


@pytest.mark.parametrize("name", FAST)
def test_weight_norm_with_projection_projects_the_directions(name: str) -> None:
    net, groups, made = setup_trial(name, {"weight_norm": {}, "projection": {}})
    names = {g.kind: set(g.names) for g in groups}
    directions = {n for n, _ in net.named_parameters() if n.endswith("weight.original1")}
    assert names["projected"] == directions and "wn_direction" not in names
    train_step(net, groups, made, torch.randn(4, 3, 16, 16))
    for n, param in net.named_parameters():
        if n in directions:
            assert float((row_norms(param) - 1).abs().max()) < 1e-5, n


# --- analytic_norm: moments ----------------------------------------------------------------

# Monte Carlo tolerance used below: 6 standard errors of the estimate (of a mean: σ/√n; of a
# variance: √((μ₄ − σ⁴)/n), with μ₄ the empirical fourth central moment).


def assert_moments_match(samples: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
    n = samples.shape[0]
    mc_mean, mc_var = samples.mean(0), samples.var(0, unbiased=False)
    fourth = ((samples - mc_mean) ** 4).mean(0)
    se_mean = torch.sqrt(mc_var / n)
    se_var = torch.sqrt((fourth - mc_var**2).clamp_min(0) / n)
    assert bool(((mean - mc_mean).abs() <= 6 * se_mean + 1e-7).all()), (mean, mc_mean)
    assert bool(((var - mc_var).abs() <= 6 * se_var + 1e-7).all()), (var, mc_var)


def test_rectified_gaussian_moments_match_monte_carlo() -> None:
    gen = torch.Generator().manual_seed(0)
    mu = torch.tensor([-2.0, -0.5, 0.0, 0.7, 3.0, 1.0], dtype=torch.float64)
    sigma = torch.tensor([0.5, 2.0, 1.0, 0.3, 1.5, 1e-3], dtype=torch.float64)
    z = torch.randn(400_000, len(mu), generator=gen, dtype=torch.float64)
    mean, var = relu_moments(mu, sigma**2)
    assert_moments_match(torch.relu(mu + sigma * z), mean, var)


def test_linear_relu_linear_moments_match_monte_carlo() -> None:
    """Exact case of the propagation: Gaussian inputs of equal variance and a first layer with
    orthogonal rows make the hidden units independent, so the second layer's Σ w²·v is exact;
    the analytic moments then match Monte Carlo within 6 standard errors (n = 400,000)."""
    gen = torch.Generator().manual_seed(0)
    d_in, hidden, d_out, n = 12, 6, 4, 400_000
    stack = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out)).double()
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(d_in, hidden, generator=gen, dtype=torch.float64))
        stack[0].weight.copy_(q.T * torch.linspace(0.5, 2.0, hidden, dtype=torch.float64)[:, None])
        stack[0].bias.copy_(torch.linspace(-1.0, 1.0, hidden))
    m = torch.linspace(-1.0, 1.0, d_in, dtype=torch.float64)
    v = torch.full((d_in,), 2.0, dtype=torch.float64)
    x = m + v.sqrt() * torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        assert_moments_match(stack[0](x), *propagate(stack[0], m, v))
        assert_moments_match(stack[:2](x), *propagate(stack[:2], m, v))
        assert_moments_match(stack(x), *propagate(stack, m, v))


def test_stack_means_are_exact_without_independence() -> None:
    """With arbitrary weights the hidden units are correlated, which only the variances of
    the second layer ignore: every mean (and the first two layers' variances) stays exact."""
    gen = torch.Generator().manual_seed(1)
    stack = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    m = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.3], dtype=torch.float64)
    v = torch.tensor([1.0, 0.5, 2.0, 0.1, 1.5], dtype=torch.float64)
    x = m + v.sqrt() * torch.randn(400_000, 5, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        assert_moments_match(stack[:2](x), *propagate(stack[:2], m, v))
        out = stack(x)
        mean, _ = propagate(stack, m, v)
    se = out.std(0) / math.sqrt(len(out))
    assert bool(((mean - out.mean(0)).abs() <= 6 * se).all())


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_moments_sum_over_channels_and_kernel_window(groups: int) -> None:
    """Independent pixels: a conv is a linear map of its window (no padding: no border)."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, groups=groups, bias=True).double()
    m = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
    v = torch.tensor([1.0, 0.5, 2.0, 0.1], dtype=torch.float64)
    x = m.view(1, 4, 1, 1) + v.sqrt().view(1, 4, 1, 1) * torch.randn(
        100_000, 4, 3, 3, generator=gen, dtype=torch.float64
    )
    with torch.no_grad():
        out = conv(x).flatten(1)  # one output position per sample: independent samples
        mean, var = conv_moments(conv, m, v)
    assert_moments_match(out, mean, var)


# --- analytic_norm: on ResNets -------------------------------------------------------------


def fake_splits(mean: list[float], std: list[float], n: int = 64) -> Any:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=gen) * torch.tensor(std).view(1, 3, 1, 1)
    return SimpleNamespace(train=SimpleNamespace(x=x + torch.tensor(mean).view(1, 3, 1, 1)))


@pytest.mark.parametrize("name", RESNETS)
def test_analytic_norm_stem_statistics_follow_the_formula(name: str) -> None:
    splits = fake_splits([0.5, -0.2, 0.1], [1.0, 2.0, 0.5])
    net, _, _ = setup_trial(name, {"analytic_norm": {}}, splits=splits)
    model: Any = net
    x = splits.train.x
    m, v = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(getattr(model, INPUT_MEAN), m)
    torch.testing.assert_close(getattr(model, INPUT_VAR), v)
    layers = [layer for _, layer in norm_positions(net)]
    assert all(isinstance(layer.statistics, AnalyticStatistics) for layer in layers)
    assert all(layer.owners["statistics"] == "analytic_norm" for layer in layers)
    # Stem: μ̂ = Σ_{c,kh,kw} w·m_c, σ̂² = Σ_{c,kh,kw} w²·v_c.
    w = model.conv1.weight.detach()
    mu, var = model.bn1.statistics(model.bn1, torch.zeros(1, w.shape[0], 1, 1))
    torch.testing.assert_close(mu.flatten(), torch.einsum("ocij,c->o", w, m))
    torch.testing.assert_close(var.flatten(), torch.einsum("ocij,c->o", w * w, v))
    # The first block's bn1 sees ReLU(γ·x̂ + β) of the stem: rectified N(β, γ²σ̂²/(σ̂² + eps)).
    bn = model.bn1
    hm, hv = relu_moments(
        bn.bias.detach(), bn.weight.detach() ** 2 * var.flatten() / (var.flatten() + bn.eps)
    )
    block = model.layer1[0]
    w1 = block.conv1.weight.detach()
    mu1, var1 = block.bn1.statistics(block.bn1, torch.zeros(1, w1.shape[0], 1, 1))
    torch.testing.assert_close(mu1.flatten(), torch.einsum("ocij,c->o", w1, hm))
    torch.testing.assert_close(var1.flatten(), torch.einsum("ocij,c->o", w1 * w1, hv))


def test_analytic_norm_propagates_through_the_input_norm() -> None:
    """With input_norm the stem conv sees BN-standardized data: mean β = 0, variance
    γ̂²·v/(v + eps), so μ̂ = 0 and σ̂² = Σ w²·γ̂²·v/(v + eps) at the stem."""
    splits = fake_splits([0.5, 0.4, 0.6], [0.2, 0.3, 0.1])
    net, _, _ = setup_trial("test_resnet", {"input_norm": {}, "analytic_norm": {}}, splits=splits)
    model: Any = net
    norm, conv = model.conv1[0], model.conv1[1]
    v = getattr(model, INPUT_VAR)
    hv = norm.weight.detach() ** 2 * v / (v + norm.eps)
    w = conv.weight.detach()
    mu, var = model.bn1.statistics(model.bn1, torch.zeros(1, w.shape[0], 1, 1))
    torch.testing.assert_close(mu.flatten(), torch.zeros(w.shape[0]))
    torch.testing.assert_close(var.flatten(), torch.einsum("ocij,c->o", w * w, hv))


@pytest.mark.parametrize("name", RESNETS)
def test_analytic_norm_is_batch_independent_and_scale_invariant(name: str) -> None:
    net, _, _ = setup_trial(name, {"analytic_norm": {}})
    set_eps(net, 0.0)  # eps breaks the exact 1-homogeneity of σ̂ slightly
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        out = net.train()(x)
        torch.testing.assert_close(net.train()(x[:1]), out[:1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.eval()(x), out, rtol=1e-5, atol=1e-5)
        # μ̂(cw) = cμ̂(w), σ̂(cw) = cσ̂(w): scaling the rows leaves the network unchanged.
        for i, conv in enumerate(convs):
            conv.weight.mul_(torch.linspace(0.5, 3.0, conv.weight.shape[0]).view(-1, 1, 1, 1) + i)
        torch.testing.assert_close(net.train()(x), out, rtol=1e-4, atol=1e-5)
    # Gradients flow through μ̂(w), σ̂(w): the loss is invariant to each row's scale, so its
    # gradient is orthogonal to the row (Euler); with detached statistics it would not be.
    F.cross_entropy(net.train()(x), torch.tensor([0, 1, 2, 3])).backward()
    radial = []
    for conv in convs:
        assert conv.weight.grad is not None
        w, g = conv.weight.detach().flatten(1), conv.weight.grad.flatten(1)
        if g.abs().max() > 0:  # layers behind a zero-initialized γ get no gradient yet
            radial.append(float(((w * g).sum(1) / w.norm(dim=1)).abs().max() / g.norm(dim=1).max()))
    assert radial and max(radial) < 1e-4


def test_analytic_norm_state_survives_a_checkpoint() -> None:
    splits = fake_splits([0.5, -0.2, 0.1], [1.0, 2.0, 0.5])
    net, _, _ = setup_trial("test_resnet", {"analytic_norm": {}}, splits=splits)
    fresh, _, _ = setup_trial("test_resnet", {"analytic_norm": {}}, seed=1)
    x = torch.randn(2, 3, 16, 16)
    assert INPUT_MEAN in net.state_dict() and INPUT_VAR in net.state_dict()
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), net.eval()(x))


@pytest.mark.parametrize(
    ("model", "kwargs", "accepted"),
    [
        ("test_resnet", {}, True),
        ("resnet18", {}, True),
        ("resnet50", {"act_layer": "relu"}, True),
        ("test_efficientnet", {}, False),
        ("efficientnet_b0", {}, False),
        ("resnet18", {"act_layer": "silu"}, False),
    ],
)
def test_analytic_norm_validation_names_the_model(
    model: str, kwargs: dict[str, Any], accepted: bool
) -> None:
    data = study({"analytic_norm": {}}, model=model)
    data["model"]["kwargs"] = kwargs
    if accepted:
        validate_data(data)
        return
    with pytest.raises(SpecError, match=r"plugins\.analytic_norm") as err:
        validate_data(data)
    assert (model if not kwargs else "act_layer") in str(err.value)


# --- composition ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("weight_norm", "analytic_norm"),
        ("weight_norm", "norm_batch"),
        ("analytic_norm", "norm_batch"),
    ],
)
def test_deterministic_normalizations_conflict(first: str, second: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_data(study({first: {}, second: {}}))
    assert f"plugins.{first}" in str(err.value) and f"plugins.{second}" in str(err.value)


@pytest.mark.parametrize("plugin", ["weight_norm", "analytic_norm"])
def test_projection_composes_with_the_deterministic_normalizations(plugin: str) -> None:
    spec = validate_data(study({plugin: {}, "projection": {}}))
    config = TrialConfig.model_validate(spec.trial_base())
    names = [p.name for p in instantiate(spec.plugins, PluginContext(config, 4, 3, 1))]
    assert names == [plugin, "projection"]  # projection last: it projects the final weights


@pytest.mark.parametrize(
    "stochastic",
    [{"noise": {"sigma_u": 0.5, "sigma_v": 0.5}}, {"bayesian_scale": {"sigma_init": 0.5}}],
)
def test_weight_norm_data_init_ignores_noise_and_sampled_scales(stochastic: dict[str, Any]) -> None:
    """The init pass matches statistics of the deterministic network (S = s, no noise), so a
    noisy variant starts from exactly the init of the plain one."""
    plain, _, plain_made = setup_trial("test_resnet", {"weight_norm": {}})
    noisy, _, noisy_made = setup_trial("test_resnet", {"weight_norm": {}, **stochastic})
    torch.manual_seed(1)
    x = torch.randn(128, 3, 16, 16)
    for net, made in ((plain, plain_made), (noisy, noisy_made)):
        torch.manual_seed(2)
        for plugin in made:
            plugin.data_init(net, x)
    for a, b in zip(wn_layers(plain), wn_layers(noisy), strict=True):
        torch.testing.assert_close(a.weight, b.weight)
        torch.testing.assert_close(a.bias, b.bias)
