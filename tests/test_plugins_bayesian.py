"""Bayesian learning of the scale's variance (000 ``bayesian_scale``): σ(u), KL, sampling, MC."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from normstudy.data import Split
from normstudy.models import NormLayer, build_model, norm_positions
from normstudy.models._stochastic_layers import (
    SCALE_U,
    kl_to_prior,
    log_sigma_of,
    mc_probabilities,
    sigma_of,
    u_for_sigma,
)
from normstudy.plugins import Plugin, PluginContext, StepOutputs, instantiate
from normstudy.spec._model import ModelSpec, TrialConfig

torch.set_num_threads(1)

FAST = ["test_resnet", "test_efficientnet"]
SLOW = ["resnet18", "resnet50", "efficientnet_b0"]
BACKBONES = FAST + [pytest.param(name, marks=pytest.mark.slow) for name in SLOW]


def setup(name: str, options: dict[str, Any], train_size: int = 100) -> tuple[nn.Module, Plugin]:
    config = TrialConfig(
        model=ModelSpec(name=name, cifar_stem=True), plugins={"bayesian_scale": options}
    )
    (plugin,) = instantiate(config.plugins, PluginContext(config, 10, 3, train_size=train_size))
    torch.manual_seed(0)
    net = plugin.patch_model(build_model(config, num_classes=10, in_chans=3))
    return net, plugin


def single_layer(options: dict[str, Any], channels: int) -> tuple[NormLayer, Plugin]:
    config = TrialConfig(plugins={"bayesian_scale": options})
    (plugin,) = instantiate(config.plugins, PluginContext(config, 10, 3, train_size=100))
    holder = plugin.patch_model(nn.Sequential(nn.BatchNorm2d(channels)))
    ((_, layer),) = norm_positions(holder)
    assert isinstance(layer, NormLayer)
    return layer.train(), plugin


def sampled_scales(layer: NormLayer, n: int, h: int = 1) -> torch.Tensor:
    """S for n samples: the affine of x̂ = 0 (column 0) and x̂ = 1 (column 1) gives b and S + b."""
    xhat = torch.zeros(n, layer.num_features, h, 2)
    xhat[..., 1] = 1.0
    out = layer.affine_stage(layer, xhat)
    return out[..., 1] - out[..., 0]  # (n, C, h)


# --- σ = e^u (u < 0), u + 1 (u ≥ 0) ---------------------------------------------------------


def test_sigma_parametrization_values_and_inverse() -> None:
    u = torch.tensor([-30.0, -2.0, -0.1, 0.0, 0.3, 4.0], dtype=torch.float64)
    expected = torch.tensor([math.exp(-30), math.exp(-2), math.exp(-0.1), 1.0, 1.3, 5.0])
    torch.testing.assert_close(sigma_of(u), expected.double())
    for sigma in (1e-4, 0.05, 0.9, 1.0, 2.5):
        assert float(sigma_of(torch.tensor(u_for_sigma(sigma)))) == pytest.approx(sigma)


def test_sigma_derivatives_are_bounded_and_continuous_at_zero() -> None:
    u = torch.tensor(
        [-1e3, -50.0, -5.0, -1e-6, 0.0, 1e-6, 5.0, 50.0, 1e3], dtype=torch.float64
    ).requires_grad_(True)
    (d_sigma,) = torch.autograd.grad(sigma_of(u).sum(), u)
    (d_log,) = torch.autograd.grad(log_sigma_of(u).sum(), u)
    torch.testing.assert_close(log_sigma_of(u[1:]), sigma_of(u[1:]).log())  # e^-1000 underflows
    assert torch.isfinite(d_sigma).all() and torch.isfinite(d_log).all()
    assert (d_sigma.abs() <= 1.0).all() and (d_log.abs() <= 1.0 + 1e-12).all()
    # The paper's reason: d log σ/du = 1 as u → −∞ (e^u alone: dσ/du → ∞ as u → ∞ instead).
    assert d_log[0] == pytest.approx(1.0) and d_sigma[-1] == pytest.approx(1.0)
    # Continuous at 0, in value and in derivative (both sides 1).
    left, zero, right = sigma_of(u.detach()[3:6])
    assert float(left) == pytest.approx(1.0, abs=1e-5) and float(right) == pytest.approx(1.0)
    assert float(zero) == 1.0
    torch.testing.assert_close(d_sigma[3:6], torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)


# --- KL to the prior, in the loss ------------------------------------------------------------


@pytest.mark.parametrize("prior_std", [10.0, 2.0])
def test_kl_matches_the_closed_form(prior_std: float) -> None:
    torch.manual_seed(0)
    s, u = torch.randn(50).double() + 1, torch.rand(50).double() * 8 - 6
    sigma = torch.where(u < 0, u.exp(), u + 1)
    reference = kl_divergence(Normal(s, sigma), Normal(1.0, prior_std))
    torch.testing.assert_close(kl_to_prior(s, u, prior_std), reference)
    formula = torch.log(prior_std / sigma) + (sigma**2 + (s - 1) ** 2) / (2 * prior_std**2) - 0.5
    torch.testing.assert_close(kl_to_prior(s, u, prior_std), formula)


@pytest.mark.parametrize("per", ["channel", "layer"])
@pytest.mark.parametrize("name", BACKBONES)
def test_kl_loss_term_is_factor_over_dataset_size_times_the_sum(name: str, per: str) -> None:
    options = {"per": per, "kl_factor": 0.5, "prior_std": 10.0}
    net, plugin = setup(name, options, train_size=250)
    layers = [m for _, m in norm_positions(net) if isinstance(m, NormLayer)]
    assert layers and all(m.owners.get("affine") == "bayesian_scale" for m in layers)
    with torch.no_grad():
        for layer in layers:  # move s and u away from their inits
            layer.weight.uniform_(-1, 2)
            getattr(layer, SCALE_U).uniform_(-3, 1)
    expected = 0.0
    for layer in layers:
        u = getattr(layer, SCALE_U)
        assert u.shape == ((layer.num_features,) if per == "channel" else (1,))
        sigma = torch.where(u < 0, u.exp(), u + 1).expand(layer.num_features)
        kl = kl_divergence(Normal(layer.weight.detach(), sigma.detach()), Normal(1.0, 10.0))
        expected += float(kl.sum())
    out = StepOutputs(
        inputs=torch.zeros(1), targets=torch.zeros(1), embedding=torch.zeros(1),
        logits=torch.zeros(1), model=net,
    )  # fmt: skip
    term = plugin.loss_terms(out)["kl"]
    assert float(term.detach()) == pytest.approx(0.5 / 250 * expected, rel=1e-5)
    term.backward()  # gradients reach s and u
    assert all(layer.weight.grad is not None for layer in layers)
    assert all(getattr(layer, SCALE_U).grad is not None for layer in layers)


# --- sampling ------------------------------------------------------------------------------


@pytest.mark.parametrize("per", ["channel", "layer"])
def test_scale_is_sampled_per_sample_and_channel_and_shared_over_space(per: str) -> None:
    layer, _ = single_layer({"per": per}, 6)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 1.5, 6))
        layer.bias.copy_(torch.linspace(-1, 1, 6))
        u = torch.linspace(-3, 0.5, 6) if per == "channel" else torch.tensor([-1.0])
        getattr(layer, SCALE_U).copy_(u)
    torch.manual_seed(0)
    with torch.no_grad():
        scales = sampled_scales(layer, n=4000, h=3)
    assert torch.equal(scales, scales[..., :1].expand_as(scales))  # shared over positions
    s = scales[..., 0]  # (n, C): its own draw for every sample and channel
    assert len(set(s[:10].flatten().tolist())) == 60
    sigma = sigma_of(u).expand(6)
    for c in range(6):
        se_mean, se_var = float(sigma[c]) / math.sqrt(4000), float(sigma[c]) ** 2 * 0.0224
        assert abs(float(s[:, c].mean()) - float(layer.weight[c].detach())) < 5 * se_mean
        assert abs(float(s[:, c].var()) - float(sigma[c]) ** 2) < 5 * se_var  # √(2/n)


def test_reparametrized_gradient_reaches_s_and_u() -> None:
    layer, _ = single_layer({"sigma_init": 0.5}, 3)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    torch.manual_seed(1)
    layer(x).pow(2).sum().backward()
    u = getattr(layer, SCALE_U)
    assert u.grad is not None and (u.grad != 0).all() and (layer.weight.grad != 0).all()


@pytest.mark.parametrize("name", BACKBONES)
def test_eval_uses_the_mean_scale_and_is_deterministic(name: str) -> None:
    net, _ = setup(name, {"sigma_init": 0.5})
    reference = build_model(
        TrialConfig(model=ModelSpec(name=name, cifar_stem=True)), num_classes=10, in_chans=3
    )
    reference.load_state_dict(
        {k: v for k, v in net.state_dict().items() if not k.endswith(SCALE_U)}
    )
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        first, second = net.eval()(x), net.eval()(x)
        assert torch.equal(first, second)
        torch.testing.assert_close(first, reference.eval()(x))  # S = s: a plain BN's output
        assert not torch.allclose(net.train()(x), net.train()(x))  # sampled in training


def test_layer_without_affine_is_refused() -> None:
    config = TrialConfig(plugins={"bayesian_scale": {}})
    (plugin,) = instantiate(config.plugins, PluginContext(config, 10, 3, train_size=10))
    with pytest.raises(ValueError, match=r"plugins\.bayesian_scale: .* no affine"):
        plugin.patch_model(nn.Sequential(nn.BatchNorm2d(3, affine=False)))


# --- MC evaluation ---------------------------------------------------------------------------


def _mc_setup() -> tuple[nn.Module, Plugin, Split]:
    net, plugin = setup("test_resnet", {"sigma_init": 2.0, "mc_samples": 4})
    torch.manual_seed(3)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics of real-looking batches
            net(torch.randn(16, 3, 16, 16))
    split = Split(torch.randn(12, 3, 16, 16), torch.arange(12) % 10)
    return net.eval(), plugin, split


def test_mc_averages_probabilities_not_logits() -> None:
    net, _, split = _mc_setup()
    torch.manual_seed(7)
    probs, targets = mc_probabilities(
        net, [(split.x[:5], split.y[:5]), (split.x[5:], split.y[5:])], 4
    )
    # The same draws by hand: sample t, then batch; softmax first, then the mean.
    torch.manual_seed(7)
    logits = []
    with torch.no_grad():
        for stage in [m.affine_stage for _, m in norm_positions(net)]:
            stage.sample_in_eval = True  # type: ignore[attr-defined]
        for _ in range(4):
            logits.append(torch.cat([net(split.x[:5]), net(split.x[5:])]).double())
        for stage in [m.affine_stage for _, m in norm_positions(net)]:
            stage.sample_in_eval = False  # type: ignore[attr-defined]
    stacked = torch.stack(logits)
    assert not torch.allclose(stacked[0], stacked[1])  # the draws differ
    torch.testing.assert_close(probs, F.softmax(stacked, dim=2).mean(0))
    assert not torch.allclose(probs, F.softmax(stacked.mean(0), dim=1), atol=1e-3)
    assert torch.equal(targets, split.y)
    # Afterwards: eval mode with S = s again.
    x = split.x[:3]
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_mc_metrics_report_the_nll_of_the_averaged_probabilities() -> None:
    net, plugin, split = _mc_setup()
    plugin.ctx.splits = SimpleNamespace(val=split, test=split)
    plugin.ctx.device = torch.device("cpu")
    rng = torch.get_rng_state()
    metrics = plugin.epoch_metrics(net)
    assert torch.equal(torch.get_rng_state(), rng)  # the training RNG is untouched
    torch.manual_seed(0)  # MC_SEED
    probs, targets = mc_probabilities(net, [(split.x, split.y)], 4)
    nll = float(-probs[torch.arange(12), targets].log().mean())
    assert metrics["val/nll_mc"] == pytest.approx(nll, rel=1e-9)
    assert metrics["val/acc_mc"] == pytest.approx(
        float(probs.argmax(1).eq(targets).double().mean())
    )
    assert metrics["bayes/sigma_mean"] == pytest.approx(2.0)
    assert plugin.test_metrics(net) == {
        "test/nll_mc": metrics["val/nll_mc"], "test/acc_mc": metrics["val/acc_mc"]
    }  # fmt: skip
    assert net.training is False
