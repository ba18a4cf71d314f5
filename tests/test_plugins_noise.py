"""Noise after normalization (000 ``noise``, 003 ``noisy_bn``) and AGC for NF networks (003)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from normstudy.models import NormLayer, build_model, norm_positions
from normstudy.models._norm import channel_view
from normstudy.models._stochastic_layers import NOISY_BN_SCALE, NOISY_BN_SHIFT
from normstudy.plugins import Plugin, PluginContext, instantiate, validate_plugin_options
from normstudy.spec._model import ModelSpec, StudySpec, TrialConfig

torch.set_num_threads(1)

FAST = ["test_resnet", "test_efficientnet"]
SLOW = ["resnet18", "resnet50", "efficientnet_b0"]
BACKBONES = FAST + [pytest.param(name, marks=pytest.mark.slow) for name in SLOW]


def setup(name: str, plugins: dict[str, Any], **model: Any) -> tuple[nn.Module, list[Plugin]]:
    config = TrialConfig(model=ModelSpec(name=name, **model), plugins=plugins)
    made = instantiate(config.plugins, PluginContext(config, 10, 3, train_size=100))
    torch.manual_seed(0)
    net = build_model(config, num_classes=10, in_chans=3)
    for plugin in made:
        net = plugin.patch_model(net)
    return net, made


def single_layer(plugins: dict[str, Any], channels: int) -> tuple[NormLayer, list[Plugin]]:
    """A lone BN (γ=1, β=0) patched by ``plugins``, in training mode."""
    config = TrialConfig(plugins=plugins)
    made = instantiate(config.plugins, PluginContext(config, 10, 3, train_size=100))
    holder: nn.Module = nn.Sequential(nn.BatchNorm2d(channels))
    for plugin in made:
        holder = plugin.patch_model(holder)
    ((_, layer),) = norm_positions(holder)
    assert isinstance(layer, NormLayer)
    return layer.train(), made


def two_point(layer: NormLayer, n: int, h: int = 1, w: int = 2) -> tuple[torch.Tensor, ...]:
    """Run the layer's perturbations on x̂ = 0 at column 0 and x̂ = 1 at column 1 (every row):
    output (x̂ + V)·U gives U = out₁ − out₀ and V = out₀/U at every row, per sample and channel."""
    xhat = torch.zeros(n, layer.num_features, h, w)
    xhat[..., 1] = 1.0
    out = xhat
    for stage in layer.perturb:
        out = stage(layer, out)
    u = out[..., 1] - out[..., 0]  # (n, C, h) for columns 0 and 1
    v = out[..., 0] / u
    return u, v


def assert_mean(sample: torch.Tensor, expected: float) -> None:
    """The sample mean within 5 standard errors of ``expected``."""
    sample = sample.double().flatten()
    se = float(sample.std()) / math.sqrt(sample.numel())
    assert abs(float(sample.mean()) - expected) < 5 * se, (float(sample.mean()), expected, se)


# --- noise: absent in eval --------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize(
    "plugins",
    [
        {"noise": {"sigma_u": 0.3, "sigma_v": 0.3}},
        {"noise": {"mode": "bn_like", "batch": 2}},
        {"noisy_bn": {"shift_std": 1.0, "scale_std": 0.5}},
        {"noisy_bn": {"shift_std": 1.0, "scale_std": 0.5, "granularity": "channel"}},
    ],
)
def test_noise_is_absent_in_eval_and_present_in_training(name: str, plugins: dict) -> None:
    plain, _ = setup(name, {})
    net, _ = setup(name, plugins)
    assert all(m.perturb for _, m in norm_positions(net) if isinstance(m, NormLayer))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), plain.eval()(x))
        assert not torch.allclose(net.train()(x), plain.train()(x), atol=1e-3)


# --- noise: per sample and channel, shared over space; moments --------------------------


@pytest.mark.parametrize("options", [{"mode": "gaussian"}, {"mode": "bn_like", "batch": 4}])
def test_noise_is_per_sample_and_channel_and_shared_over_space(options: dict) -> None:
    layer, _ = single_layer({"noise": {"sigma_u": 0.2, "sigma_v": 0.3, **options}}, 3)
    torch.manual_seed(1)
    x = torch.randn(5, 3, 4, 6) * 2 + 1
    out = layer(x)
    xhat = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        x.var((0, 2, 3), unbiased=False, keepdim=True) + layer.eps
    )
    # out = U·x̂ + U·V: an exact line in x̂ over the 4x6 positions of each (sample, channel).
    xc = xhat - xhat.mean((2, 3), keepdim=True)
    u = (xc * out).sum((2, 3), keepdim=True) / xc.pow(2).sum((2, 3), keepdim=True)
    uv = out.mean((2, 3), keepdim=True) - u * xhat.mean((2, 3), keepdim=True)
    torch.testing.assert_close(out, u * xhat + uv, atol=1e-5, rtol=1e-5)
    # ...with its own U and V for every sample and every channel.
    u, v = u.flatten(), (uv / u).flatten()
    assert len(set(u.tolist())) == 15 and len(set(v.tolist())) == 15


def test_gaussian_noise_moments() -> None:
    layer, _ = single_layer({"noise": {"sigma_u": 0.2, "sigma_v": 0.3}}, 8)
    torch.manual_seed(2)
    u, v = two_point(layer, n=2500, h=2)
    assert torch.equal(u[..., 0], u[..., 1]) and torch.equal(v[..., 0], v[..., 1])  # shared
    u, v = u[..., 0], v[..., 0]
    assert_mean(u, 1.0)
    assert_mean(v, 0.0)
    assert_mean((u - 1) ** 2, 0.2**2)
    assert_mean(v**2, 0.3**2)


def _inverse_chi_moments(n: int) -> tuple[float, float]:
    """E[U], E[U²] of U = √n/χ_{n−1}: E[1/χ_d] = Γ((d−1)/2)/(√2·Γ(d/2)), E[1/χ²_d] = 1/(d−2)."""
    d = n - 1
    first = math.exp(math.lgamma((d - 1) / 2) - math.lgamma(d / 2)) / math.sqrt(2)
    return math.sqrt(n) * first, n / (d - 2)


@pytest.mark.parametrize(
    ("spatial", "h", "n"),
    [(None, 1, 4 * 2), (None, 2, 4 * 4), (3, 1, 4 * 3)],  # z: the input's H·W, or the option
)
def test_bn_like_noise_moments(spatial: int | None, h: int, n: int) -> None:
    layer, _ = single_layer({"noise": {"mode": "bn_like", "batch": 4, "spatial": spatial}}, 8)
    torch.manual_seed(3)
    u, v = two_point(layer, n=2500, h=h)
    u, v = u[..., 0], v[..., 0]
    mean_u, mean_u2 = _inverse_chi_moments(n)
    assert_mean(v, 0.0)
    assert_mean(v**2, 1.0 / n)
    assert_mean(u, mean_u)
    assert_mean(u**2, mean_u2)
    assert (u > 0).all()


def test_per_layer_sigmas_by_pattern() -> None:
    layers = {"layer1.*": {"sigma_u": 0.0, "sigma_v": 0.0}, "*": {"sigma_u": 0.5, "sigma_v": 0.0}}
    net, _ = setup("test_resnet", {"noise": {"layers": layers}})
    for name, layer in norm_positions(net):
        assert isinstance(layer, NormLayer)
        (stage,) = layer.perturb
        expected = 0.0 if name.startswith("layer1.") else 0.5
        assert (stage.sigma_u, stage.sigma_v) == (expected, 0.0), name  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"plugins\.noise\.layers: 'nowhere\.\*' matches no"):
        setup("test_resnet", {"noise": {"layers": {"nowhere.*": {"sigma_u": 0, "sigma_v": 0}}}})


@pytest.mark.parametrize(
    ("model", "plugins", "field"),
    [
        ("nf_resnet50", {"noise": {}}, r"plugins\.noise: model\.name 'nf_resnet50'"),
        ("test_nfnet", {"noisy_bn": {}}, r"plugins\.noisy_bn: model\.name 'test_nfnet'"),
        (
            "resnet18",
            {"noise": {"mode": "bn_like", "layers": {"*": {"sigma_u": 0.1, "sigma_v": 0.1}}}},
            r"plugins\.noise\.layers",
        ),
    ],
)
def test_impossible_noise_studies_are_rejected(model: str, plugins: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        StudySpec(name="x", model=ModelSpec(name=model), plugins=plugins)


# --- noisy_bn ----------------------------------------------------------------------------

CHANNEL = {"granularity": "channel"}


def activation_noise(layer: NormLayer, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """a and m of one per-activation draw: the stages run on x̂ = 0 and on x̂ = 1 with the
    same RNG state, so (x̂ + a)·m gives m = out₁ − out₀ and a = out₀/m at every activation."""
    state = torch.get_rng_state()
    outs = []
    for value in (0.0, 1.0):
        torch.set_rng_state(state)
        out = torch.full(shape, value)
        for stage in layer.perturb:
            out = stage(layer, out)
        outs.append(out)
    m = outs[1] - outs[0]
    return outs[0] / m, m


def test_noisy_bn_default_is_iid_per_activation_and_redrawn_each_step() -> None:
    options = {"shift_mean": 0.4, "shift_std": 0.6, "scale_std": 0.3}
    layer, (plugin,) = single_layer({"noisy_bn": options}, 6)
    assert plugin.options.granularity == "activation"  # type: ignore[attr-defined]
    assert not hasattr(layer, NOISY_BN_SHIFT)  # nothing held between steps
    torch.manual_seed(4)
    shape = (400, 6, 5, 5)
    a, m = activation_noise(layer, shape)
    assert len(set(a[:2].flatten().tolist())) == a[:2].numel()  # one draw per activation
    # Laws: a ~ N(0.4, 0.6²), log m ~ N(0, 0.3²).
    assert (m > 0).all()
    assert_mean(a, 0.4)
    assert_mean((a - 0.4) ** 2, 0.6**2)
    assert_mean(m.log(), 0.0)
    assert_mean(m.log() ** 2, 0.3**2)
    # Independent: neighbours in space, channels and samples are uncorrelated, and a of m.
    z = (a - 0.4) / 0.6
    for other in (z.roll(1, dims=3), z.roll(1, dims=1), z.roll(1, dims=0), m.log() / 0.3):
        assert_mean(z * other, 0.0)
    # Time-varying: the next forward draws anew.
    again, _ = activation_noise(layer, shape)
    assert not torch.equal(again, a)
    x = torch.randn(4, 6, 3, 3)
    layer.eval()
    assert torch.equal(layer(x), nn.BatchNorm2d(6).eval()(x))  # off in eval mode


def test_noisy_bn_activation_noise_enters_as_the_formula() -> None:
    """y = γ·((x̂ + a)·m) + β with x̂ BN's batch standardization, a, m of the same draw."""
    layer, _ = single_layer({"noisy_bn": {"shift_mean": 0.3, "scale": "normal"}}, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.randn(8, 3, 4, 4) * 3 - 1
    torch.manual_seed(6)
    a, m = activation_noise(layer, tuple(x.shape))
    torch.manual_seed(6)
    out = layer(x)
    xhat = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        x.var((0, 2, 3), unbiased=False, keepdim=True) + layer.eps
    )
    expected = channel_view(layer.weight, x) * ((xhat + a) * m) + channel_view(layer.bias, x)
    torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-5)


def test_noisy_bn_channel_is_per_step_and_channel_shared_by_the_batch() -> None:
    layer, _ = single_layer({"noisy_bn": {"shift_mean": 0.5, **CHANNEL}}, 6)
    u, v = two_point(layer, n=4, h=3)
    shift, scale = getattr(layer, NOISY_BN_SHIFT), getattr(layer, NOISY_BN_SCALE)
    # y = (x̂ + a)·m: the same a, m for every sample and position, one per channel.
    torch.testing.assert_close(u, scale[None, :, None].expand_as(u))
    torch.testing.assert_close(v, shift[None, :, None].expand_as(v))
    assert len(set(shift.tolist())) == 6 and len(set(scale.tolist())) == 6
    x = torch.randn(4, 6, 3, 3)
    layer.eval()
    assert torch.equal(layer(x), nn.BatchNorm2d(6).eval()(x))  # off in eval mode


@pytest.mark.parametrize("every", [1, 3])
def test_noisy_bn_channel_redraws_every_n_steps(every: int) -> None:
    layer, (plugin,) = single_layer({"noisy_bn": {"every": every, **CHANNEL}}, 4)
    holder = nn.Sequential(layer)
    drawn = [getattr(layer, NOISY_BN_SHIFT).clone()]
    for step in range(1, 7):
        plugin.ctx.step = step  # the trial counts steps before after_step
        plugin.after_step(holder)
        drawn.append(getattr(layer, NOISY_BN_SHIFT).clone())
    changed = [not torch.equal(drawn[i], drawn[i - 1]) for i in range(1, 7)]
    assert changed == [step % every == 0 for step in range(1, 7)]


@pytest.mark.parametrize("law", ["lognormal", "normal"])
def test_noisy_bn_channel_laws(law: str) -> None:
    options = {"shift_mean": 0.3, "shift_std": 0.7, "scale": law, "scale_std": 0.2, **CHANNEL}
    layer, _ = single_layer({"noisy_bn": options}, 40000)
    shift, scale = getattr(layer, NOISY_BN_SHIFT), getattr(layer, NOISY_BN_SCALE)
    assert_mean(shift, 0.3)
    assert_mean((shift - 0.3) ** 2, 0.7**2)
    if law == "lognormal":
        assert (scale > 0).all()
        scale = scale.log()
    center = 0.0 if law == "lognormal" else 1.0
    assert_mean(scale, center)
    assert_mean((scale - center) ** 2, 0.2**2)


def test_noisy_bn_activation_normal_law() -> None:
    layer, _ = single_layer({"noisy_bn": {"scale": "normal", "scale_std": 0.2}}, 8)
    torch.manual_seed(7)
    _, m = activation_noise(layer, (500, 8, 4, 4))
    assert_mean(m, 1.0)
    assert_mean((m - 1) ** 2, 0.2**2)


def test_noisy_bn_every_is_for_the_channel_granularity() -> None:
    with pytest.raises(ValueError, match=r"plugins\.noisy_bn\.every: .*granularity 'channel'"):
        validate_plugin_options({"noisy_bn": {"every": 3}})
    assert validate_plugin_options({"noisy_bn": {"every": 3, **CHANNEL}})["noisy_bn"]["every"] == 3


def test_noisy_bn_channel_noise_is_in_the_state_dict() -> None:
    net, _ = setup("test_resnet", {"noisy_bn": CHANNEL})
    state = net.state_dict()
    keys = [k for k in state if k.endswith(NOISY_BN_SHIFT) or k.endswith(NOISY_BN_SCALE)]
    assert len(keys) == 2 * len(norm_positions(net))
    torch.manual_seed(5)
    other, _ = setup("test_resnet", {"noisy_bn": CHANNEL})  # setup reseeds: draw anew first
    for _, layer in norm_positions(other):
        getattr(layer, NOISY_BN_SHIFT).normal_()
    other.load_state_dict(state)
    for (_, a), (_, b) in zip(norm_positions(net), norm_positions(other), strict=True):
        assert torch.equal(getattr(a, NOISY_BN_SHIFT), getattr(b, NOISY_BN_SHIFT))
    default, _ = setup("test_resnet", {"noisy_bn": {}})
    assert set(default.state_dict()) == set(setup("test_resnet", {})[0].state_dict())


# --- agc -----------------------------------------------------------------------------------


def _unitwise(t: torch.Tensor) -> torch.Tensor:
    return t.norm() if t.ndim <= 1 else t.flatten(1).norm(dim=1)


@pytest.mark.parametrize(
    "name", ["test_nfnet", "test_resnet", pytest.param("nf_resnet50", marks=pytest.mark.slow)]
)
def test_agc_clips_unitwise_gradients_but_not_the_classifier(name: str) -> None:
    clip, eps = 0.02, 1e-3
    net, (plugin,) = setup(name, {"agc": {"clip": clip, "eps": eps}})
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    (nn.functional.cross_entropy(net(x), y) * 1e3).backward()  # big enough to clip many units
    classifier = {id(p) for p in net.get_classifier().parameters()}  # type: ignore[operator]
    before = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    plugin.before_step(net)
    clipped = 0
    for n, p in net.named_parameters():
        if p.grad is None:
            continue
        limit = clip * _unitwise(p.detach()).clamp_min(eps)
        old, new = _unitwise(before[n]), _unitwise(p.grad)
        if id(p) in classifier:
            assert torch.equal(p.grad, before[n])
            assert (old > limit).any()  # it would have been clipped
            continue
        assert (new <= limit + 1e-6).all(), n
        under = (old < limit).reshape(-1, *([1] * (p.grad.ndim - 1))) if p.ndim > 1 else old < limit
        torch.testing.assert_close(torch.where(under, p.grad, before[n]), before[n])
        clipped += int((old >= limit).sum())
    assert clipped > 0
