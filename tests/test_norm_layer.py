"""NormLayer with default stages is exactly the BN it replaced (outputs, grads, running stats)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from normstudy.models import NormLayer, RemovedNorm, norm_layers, remove_norm_layers, to_norm_layers

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.BatchNorm2d(6),
        lambda: BatchNormAct2d(6, act_layer=nn.SiLU, drop_layer=None),
        lambda: nn.BatchNorm2d(6, momentum=None),
        lambda: nn.BatchNorm1d(6),
    ],
)
@pytest.mark.parametrize("explicit", [False, True])
def test_default_norm_layer_equals_batchnorm(make, explicit: bool) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    bn = make()
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    ref = copy.deepcopy(bn)
    holder = nn.Sequential(bn)
    ((_, layer),) = to_norm_layers(holder)
    assert isinstance(layer, NormLayer) and layer.weight is bn.weight
    if explicit:  # an identity stage forces the stage-by-stage path instead of BN's kernel
        layer.perturb.append(lambda _layer, xhat: xhat)
    shape = (8, 6, 5, 5) if isinstance(bn, nn.BatchNorm2d) else (8, 6)
    for _ in range(3):
        x = torch.randn(*shape, requires_grad=True)
        x2 = x.detach().clone().requires_grad_(True)
        out, expected = holder(x), ref(x2)
        torch.testing.assert_close(out, expected)
        out.pow(2).sum().backward()
        expected.pow(2).sum().backward()
        torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(layer.running_mean, ref.running_mean)
    torch.testing.assert_close(layer.running_var, ref.running_var)
    holder.eval()
    ref.eval()
    x = torch.randn(*shape)
    torch.testing.assert_close(holder(x), ref(x))


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_converted_timm_model_is_unchanged(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5)
    ref = copy.deepcopy(model)
    acts = [type(m.act) for m in model.modules() if isinstance(m, BatchNormAct2d)]
    layers = to_norm_layers(model)
    assert len(layers) == len(norm_layers(ref)) and all(isinstance(m, NormLayer) for _, m in layers)
    assert [type(m.act) for _, m in layers if m.source_type == "BatchNormAct2d"] == acts
    assert to_norm_layers(model) == layers  # idempotent
    assert set(model.state_dict()) == set(ref.state_dict())
    x = torch.randn(4, 3, 32, 32)
    # Same math, other kernels (BN's fused one vs. explicit ops): float32 rounding only.
    torch.testing.assert_close(model(x), ref(x), rtol=1e-3, atol=1e-4)
    model.eval()
    ref.eval()
    torch.testing.assert_close(model(x), ref(x), rtol=1e-3, atol=1e-4)


def test_two_plugins_cannot_own_one_stage() -> None:
    layer = NormLayer(nn.BatchNorm2d(3))
    layer.claim("statistics", "population_norm")
    layer.claim("statistics", "population_norm")
    with pytest.raises(ValueError, match=r"population_norm.*mean_only"):
        layer.claim("statistics", "mean_only")


def test_removed_norm_keeps_act_and_drop() -> None:
    model = timm.create_model("test_efficientnet", num_classes=5)
    acts = [type(m.act) for m in model.modules() if isinstance(m, BatchNormAct2d)]
    removed = remove_norm_layers(model)
    assert not norm_layers(model)
    assert [type(m.act) for _, m in removed if m.source_type == "BatchNormAct2d"] == acts
    assert all(isinstance(m, RemovedNorm) for _, m in removed)
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()
