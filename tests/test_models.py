"""normstudy.models on real timm backbones: build, CIFAR stem, norm layers, groups, σ_act."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normstudy.models import (
    activation_std,
    build_model,
    first_conv,
    model_activation,
    norm_layers,
    param_groups,
    prepend_input_norm,
)
from normstudy.models._head import DropoutLinear
from normstudy.spec._model import ModelSpec, TrialConfig

torch.set_num_threads(1)

FAST = ["test_resnet", "test_efficientnet"]
SLOW = ["resnet18", "resnet50", "efficientnet_b0"]
BACKBONES = FAST + [pytest.param(name, marks=pytest.mark.slow) for name in SLOW]


def make_config(name: str, **model: Any) -> TrialConfig:
    return TrialConfig(model=ModelSpec(name=name, **model))


def build(name: str, *, num_classes: int = 10, in_chans: int = 3, **model: Any) -> nn.Module:
    torch.manual_seed(0)
    return build_model(make_config(name, **model), num_classes=num_classes, in_chans=in_chans)


def test_importing_models_and_plugins_does_not_import_torch() -> None:
    code = (
        "import sys, normstudy.models, normstudy.spec._model\n"
        "from normstudy.plugins import plugin_registry\n"
        "assert plugin_registry()\n"
        "heavy = sorted(m for m in ('torch', 'timm') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_build_model_passes_spec_options() -> None:
    model = build("test_resnet", num_classes=7, in_chans=1, drop_rate=0.25,
                  kwargs={"zero_init_last": False})  # fmt: skip
    classifier = model.get_classifier()
    assert isinstance(classifier, DropoutLinear) and classifier.p == 0.25  # timm's, moved
    assert model.drop_rate == 0.0  # forward_head no longer drops: Emb(x) comes before it
    assert model.get_classifier().out_features == 7
    assert first_conv(model)[1].in_channels == 1
    assert all(bn.weight.all() for _, bn in norm_layers(model))  # zero_init_last was off
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", BACKBONES)
def test_cifar_stem(name: str) -> None:
    plain, cifar = build(name), build(name, cifar_stem=True)
    _, conv = first_conv(cifar)
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in cifar.modules())
    # The stem's norm and activation are kept: same BN layers (minus a deep stem's inner ones).
    assert isinstance(cifar.bn1, _BatchNorm)
    assert type(model_activation(cifar)) is type(model_activation(plain))
    # Stride 2 (and ResNet's max-pool, another 2) gone: feature maps 2x / 4x larger per side.
    x = torch.randn(2, 3, 64, 64)
    side, cifar_side = plain.forward_features(x).shape[-1], cifar.forward_features(x).shape[-1]
    assert cifar_side == side * (4 if hasattr(plain, "maxpool") else 2)
    cifar.eval()
    for size in (8, 16):
        out = cifar(torch.randn(2, 3, size, size))
        assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_cifar_stem_one_channel_and_deep_stem_channels() -> None:
    model = build("test_resnet", in_chans=1, cifar_stem=True)  # test_resnet has a deep stem
    assert isinstance(model.conv1, nn.Conv2d)
    assert (model.conv1.in_channels, model.conv1.out_channels) == (1, model.bn1.num_features)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_cifar_stem_unknown_family_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"model\.cifar_stem: no CIFAR stem known for 'test_vit'"):
        build("test_vit", cifar_stem=True)


@pytest.mark.parametrize("name", BACKBONES)
def test_norm_layers_finds_every_batchnorm(name: str) -> None:
    model = build(name)
    found = norm_layers(model)
    assert [m for _, m in found] == [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert found and all(dict(model.named_modules())[n] is m for n, m in found)
    if "efficientnet" in name:
        assert any(isinstance(m, BatchNormAct2d) for _, m in found)
    norm = prepend_input_norm(model, 0.5)
    assert norm in [m for _, m in norm_layers(model)]
    assert norm not in [m for _, m in norm_layers(model, skip_input_norm=True)]
    assert len(norm_layers(model, skip_input_norm=True)) == len(found)


def _kind(model: nn.Module, param: nn.Parameter) -> str:
    for module in model.modules():
        if isinstance(module, _BatchNorm) and param is module.weight:
            return "norm_weight"
        if isinstance(module, _BatchNorm) and param is module.bias:
            return "norm_bias"
    return "bias" if param.ndim <= 1 else "weight"


@pytest.mark.parametrize("name", BACKBONES)
def test_param_groups_cover_every_trainable_parameter_once(name: str) -> None:
    model = build(name)
    prepend_input_norm(model, 0.5)  # its β is frozen: it must be in no group
    norm_layers(model)[-1][1].bias.requires_grad_(False)  # a frozen parameter: in no group
    groups = param_groups(model, weight_decay=1e-4)
    assert [g.kind for g in groups] == ["norm_weight", "norm_bias", "bias", "weight"]
    grouped = [id(p) for g in groups for p in g.params]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    params = dict(model.named_parameters())
    for group in groups:
        assert group.lr_scale == 1.0
        assert group.weight_decay == (1e-4 if group.kind == "weight" else 0.0)
        assert len(group.names) == len(group.params)
        for pname, param in zip(group.names, group.params, strict=True):
            assert params[pname] is param and _kind(model, param) == group.kind
    torch.optim.SGD([{"params": g.params} for g in groups], lr=0.1)  # accepted as is


def test_param_groups_shared_parameter_once() -> None:
    linear = nn.Linear(4, 4)
    groups = param_groups(nn.Sequential(linear, nn.BatchNorm1d(4), linear), weight_decay=0.1)
    assert {g.kind: g.names for g in groups} == {
        "norm_weight": ["1.weight"],
        "norm_bias": ["1.bias"],
        "bias": ["0.bias"],
        "weight": ["0.weight"],
    }


@pytest.mark.parametrize("name", BACKBONES)
def test_model_activation(name: str) -> None:
    model = build(name)
    act = model_activation(model)
    assert any(act is m for m in model.modules())
    assert type(act) is (nn.SiLU if "efficientnet" in name else nn.ReLU)


def _monte_carlo_std(act: nn.Module, n: int = 4_000_000) -> float:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(n, generator=gen, dtype=torch.float64)
    return float(act.double()(z).std())


@pytest.mark.parametrize(
    ("act", "expected"),
    [
        (nn.ReLU(inplace=True), 0.5838),
        (nn.SiLU(inplace=True), 0.5595),
        (nn.LeakyReLU(0.01), 0.5865),
    ],
)
def test_activation_std_matches_004_and_monte_carlo(act: nn.Module, expected: float) -> None:
    sigma = activation_std(act)
    assert sigma == pytest.approx(expected, abs=1e-4)  # 004's values are rounded to 4 digits
    assert sigma == pytest.approx(_monte_carlo_std(act), abs=1e-3)


def test_activation_std_of_timm_and_stateful_activations() -> None:
    from timm.layers import get_act_layer

    assert activation_std(get_act_layer("swish")()) == pytest.approx(0.5595, abs=1e-4)
    assert activation_std(nn.Identity()) == pytest.approx(1.0, abs=1e-6)
    prelu = nn.PReLU(init=0.01)  # float32 state: computed on a float64 copy
    assert activation_std(prelu) == pytest.approx(0.5865, abs=1e-4)
    assert prelu.weight.dtype == torch.float32
