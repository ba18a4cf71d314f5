"""Plugins of 002 ("Deconstructing the Regularization of BatchNorm") against PLUGINS.md's math."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normstudy.models import NormLayer, RemovedNorm, build_model, norm_layers, param_groups
from normstudy.models._fixup import FixupBlock, fixup_blocks, to_fixup_blocks
from normstudy.models._head import DropoutLinear
from normstudy.models._standardize import kl_to_standard_normal
from normstudy.plugins import (
    ParamGroup,
    Plugin,
    PluginContext,
    StepOutputs,
    instantiate,
    validate_plugin_options,
)
from normstudy.plugins._deconstructing import is_timm_resnet
from normstudy.spec import SpecError, load_spec, validate_data
from normstudy.spec._model import ModelSpec, TrialConfig
from normstudy.spec._space import resolve_config

torch.set_num_threads(1)

FAST = ["test_resnet", "test_efficientnet"]
SLOW = ["resnet18", "resnet50", "efficientnet_b0"]
BACKBONES = FAST + [pytest.param(name, marks=pytest.mark.slow) for name in SLOW]
RESNETS = ["test_resnet"] + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW[:2]]
BN_FREE: dict[str, Any] = {"remove_norm": {}}
YAML = Path(__file__).resolve().parents[1] / "searchspaces" / "deconstructing_bn.yaml"


def setup(
    name: str, plugins: dict[str, Any], num_classes: int = 10
) -> tuple[Any, list[ParamGroup], list[Plugin]]:
    """What a trial does before its first step: build, patch, group (hooks in their order)."""
    config = TrialConfig(model=ModelSpec(name=name, cifar_stem=True), plugins=plugins)
    made = instantiate(config.plugins, PluginContext(config, num_classes, 3, train_size=100))
    torch.manual_seed(0)
    net = build_model(config, num_classes=num_classes, in_chans=3)
    for plugin in made:
        net = plugin.patch_model(net)
    groups = param_groups(net, 5e-4)
    for plugin in made:
        groups = plugin.param_groups(groups, net)
    return net, groups, made


def step_outputs(net: Any, x: torch.Tensor) -> StepOutputs:
    """The trial's training forward: embedding (pre-logits) and logits from one pass."""
    embedding = net.forward_head(net.forward_features(x), pre_logits=True)
    logits = net.get_classifier()(embedding)
    return StepOutputs(x, torch.zeros(len(x), dtype=torch.long), embedding, logits, net)


def loss_terms(made: list[Plugin], out: StepOutputs) -> dict[str, torch.Tensor]:
    return {k: v for p in made for k, v in p.loss_terms(out).items()}


def study(model: str, plugins: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "t", "model": {"name": model, **extra}, "plugins": plugins}


# --- embedding_l2 / functional_l2 -------------------------------------------------------


@pytest.mark.parametrize(("plugin", "field"), [("embedding_l2", 0), ("functional_l2", 1)])
@pytest.mark.parametrize("coefficient", [0.0, 0.3, 1.0])
def test_norm_penalties_on_known_tensors(plugin: str, field: int, coefficient: float) -> None:
    torch.manual_seed(1)
    embedding, logits = torch.randn(5, 12) * 3 + 1, torch.randn(5, 7) * 2
    out = StepOutputs(torch.zeros(5, 3, 4, 4), torch.zeros(5), embedding, logits, nn.Identity())
    (made,) = instantiate(
        {plugin: {"coefficient": coefficient}}, PluginContext(TrialConfig(), 7, 3, 5)
    )
    target = (embedding, logits)[field].double()
    dim = target.shape[1]  # H or K
    expected = coefficient * (1 / dim) * sum(float(row @ row) for row in target) / len(target)
    term = made.loss_terms(out)[plugin]
    assert float(term) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", BACKBONES)
def test_penalty_gradients_flow_to_the_network(name: str) -> None:
    plugins = {"embedding_l2": {"coefficient": 0.5}, "functional_l2": {"coefficient": 0.5}}
    net, _, made = setup(name, plugins)
    out = step_outputs(net.train(), torch.randn(4, 3, 16, 16))
    terms = loss_terms(made, out)
    first = next(net.parameters())
    for key, source in (("embedding_l2", out.embedding), ("functional_l2", out.logits)):
        expected = 0.5 * source.pow(2).sum(1).mean() / source.shape[1]
        assert terms[key].item() == pytest.approx(expected.item(), rel=1e-5)
        (grad,) = torch.autograd.grad(terms[key], first, retain_graph=True)
        assert grad.abs().sum() > 0  # the stem conv learns from the penalty


# --- standardization ------------------------------------------------------------------


def test_standardization_kl_on_known_tensors() -> None:
    torch.manual_seed(2)
    means, stds = torch.tensor([0.5, -2.0, 0.0]), torch.tensor([0.3, 2.0, 1.0])
    x = torch.randn(6, 3, 5, 5) * stds.view(1, 3, 1, 1) + means.view(1, 3, 1, 1)
    eps = 1e-5
    expected = 0.0
    for i in range(3):
        values = x[:, i].double().flatten()
        mu, var = float(values.mean()), float(values.var(unbiased=False))
        expected += 0.5 * (mu**2 + var - math.log(var + eps) - 1)
    assert float(kl_to_standard_normal(x, eps)) == pytest.approx(expected, rel=1e-5)
    # the fused path (a NormLayer's input): the same value and gradient
    a, b = x.double().requires_grad_(), x.double().requires_grad_()
    slow, fast = kl_to_standard_normal(a, eps), kl_to_standard_normal(b, eps, may_save=True)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=0)
    slow.backward()
    fast.backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-14)
    standardized = (x - x.mean((0, 2, 3), keepdim=True)) / x.std(
        (0, 2, 3), unbiased=False, keepdim=True
    )
    assert float(kl_to_standard_normal(standardized, 0.0)) == pytest.approx(0.0, abs=1e-5)
    dead = torch.zeros(4, 2, 3, 3)  # zero variance: finite, ½·(−log ε − 1) per channel
    assert float(kl_to_standard_normal(dead, eps)) == pytest.approx(-math.log(eps) - 1, rel=1e-6)


def _clone_reference(net: nn.Module, coefficient: float, eps: float) -> list[torch.Tensor]:
    """Terms from clones of every position's input (pre-hooks run before the observers)."""
    captured: list[torch.Tensor] = []
    for module in net.modules():
        if isinstance(module, NormLayer | RemovedNorm):
            module.register_forward_pre_hook(
                lambda m, args: captured.append(
                    coefficient * kl_to_standard_normal(args[0].clone(), eps)
                )
            )
    return captured


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize(
    "extra",
    [
        {},
        BN_FREE,
        {**BN_FREE, "fixup": {"init": "inv_sqrt_depth"}},
        {**BN_FREE, "embedding_bn": {}},
    ],
    ids=["bn", "no_bn", "fixup", "embedding_bn"],
)
def test_standardization_matches_a_clone_based_reference(name: str, extra: dict[str, Any]) -> None:
    """Value and gradients equal the penalty computed on clones of each position's input, on
    nets with in-place ReLU and ``x += shortcut`` (BN-free ResNets return a position's input to
    them unchanged): no autograd error, no stale tensor, one forward pass."""
    if "fixup" in extra and "efficientnet" in name:
        pytest.skip("fixup applies to ResNets only")
    coefficient, eps = 1e-3, 1e-5
    plugins = {**extra, "standardization": {"coefficient": coefficient, "eps": eps}}
    net, _, made = setup(name, plugins)
    plain, _, _ = setup(name, {})
    positions = [m for m in net.modules() if isinstance(m, NormLayer | RemovedNorm)]
    expected_positions = len(norm_layers(plain)) + ("embedding_bn" in extra)
    assert len(positions) == expected_positions
    assert all(len(m.observers) == 1 for m in positions)
    reference = _clone_reference(net, coefficient, eps)
    net.double()  # float64: value and gradients agree to rounding, not to float32 noise
    out = step_outputs(net.train(), torch.randn(6, 3, 16, 16, dtype=torch.float64))
    term = loss_terms(made, out)["standardization"]
    expected = torch.stack(reference).sum()
    assert len(reference) == expected_positions
    torch.testing.assert_close(term, expected, rtol=1e-10, atol=0)
    params = [p for p in net.parameters() if p.requires_grad]
    got = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(expected, params, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-12)
    assert any(g is not None and g.abs().sum() > 0 for g in got)


def test_standardization_counts_only_the_latest_training_forward() -> None:
    net, _, made = setup("test_resnet", {"standardization": {"coefficient": 1.0}})
    (plugin,) = made
    with torch.no_grad():
        net.train()(torch.randn(4, 3, 16, 16))  # no gradients: not a training step
    net.eval()(torch.randn(4, 3, 16, 16))  # eval mode (predict, FGSM): not a training step
    assert plugin.terms == {}  # type: ignore[attr-defined]
    net.train()
    step_outputs(net, torch.randn(4, 3, 16, 16) * 5)
    x = torch.randn(4, 3, 16, 16)
    out = step_outputs(net, x)
    first = plugin.loss_terms(out)["standardization"].item()
    assert plugin.terms == {}  # type: ignore[attr-defined]  # cleared for the next step
    step_outputs(net, x)
    assert plugin.loss_terms(out)["standardization"].item() == pytest.approx(first, rel=1e-6)


def test_standardization_keeps_bn_outputs() -> None:
    """On a BN net it only observes: outputs equal the unpatched network's."""
    plain, _, _ = setup("test_efficientnet", {})
    net, _, _ = setup("test_efficientnet", {"standardization": {}})
    x = torch.randn(4, 3, 16, 16)
    for train in (True, False):
        torch.testing.assert_close(net.train(train)(x), plain.train(train)(x))


# --- remove_norm ----------------------------------------------------------------------


def _bn_as_identity(net: nn.Module) -> nn.Module:
    """Every BN set to compute y = x in eval mode (γ 1, β 0, mean 0, var 1 − ε)."""
    with torch.no_grad():
        for _, layer in norm_layers(net):
            bn: Any = layer
            bn.weight.fill_(1.0)
            bn.bias.zero_()
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
    return net.eval()


@pytest.mark.parametrize("name", BACKBONES)
def test_remove_norm_replaces_bn_by_identity_keeping_act_and_drop(name: str) -> None:
    plain, _, _ = setup(name, {})
    net, groups, _ = setup(name, BN_FREE)
    assert not [m for m in net.modules() if isinstance(m, _BatchNorm)]
    removed = dict((n, m) for n, m in net.named_modules() if isinstance(m, RemovedNorm))
    original = dict(norm_layers(plain))
    assert removed.keys() == original.keys()
    for n, bn in original.items():
        act, drop = getattr(bn, "act", nn.Identity()), getattr(bn, "drop", nn.Identity())
        assert (type(removed[n].act), type(removed[n].drop)) == (type(act), type(drop))
    assert {g.kind for g in groups} <= {"bias", "weight"}
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(net.eval()(x), _bn_as_identity(plain)(x))


# --- fixup -----------------------------------------------------------------------------


def _branch_m(block: nn.Module) -> int:
    return 2 if isinstance(block, BasicBlock) else 3


@pytest.mark.parametrize("name", RESNETS)
def test_fixup_blocks_reuse_the_timm_blocks(name: str) -> None:
    plain, _, _ = setup(name, BN_FREE)
    blocks = [
        (n, _branch_m(m))
        for n, m in plain.named_modules()
        if isinstance(m, BasicBlock | Bottleneck)
    ]
    net, _, _ = setup(name, {**BN_FREE, "fixup": {}})
    fixed = {n: m for n, m in net.named_modules() if isinstance(m, FixupBlock)}
    assert [(n, m.layers) for n, m in fixed.items()] == blocks
    scalars = [f"bias{i}{s}" for i in range(1, 4) for s in "ab"] + ["scale"]
    for _, block in fixed.items():
        assert [a for a, _ in block.scalars()] == [*scalars[: 2 * block.layers], "scale"]
    # Same state-dict keys as the BN-free timm network, plus the scalars (shape [1]).
    keys, plain_keys = set(net.state_dict()), set(plain.state_dict())
    assert plain_keys <= keys
    added = keys - plain_keys
    assert added == {f"{n}.{a}" for n, b in fixed.items() for a, _ in b.scalars()}
    assert all(net.state_dict()[k].shape == (1,) for k in added)


def _manual_block(block: FixupBlock, x: torch.Tensor) -> torch.Tensor:
    """Fixup's reference formula (ReLU activations, BN removed, no SE/aa/drop)."""
    s = {a: p for a, p in block.scalars()}
    m, convs = block.layers, block.branch_convs()
    out = x
    for i, conv in enumerate(convs, start=1):
        out = conv(out + s[f"bias{i}a"])
        out = F.relu(out + s[f"bias{i}b"]) if i < m else out * s["scale"] + s[f"bias{i}b"]
    shortcut = x if block.downsample is None else block.downsample(x + s["bias1a"])
    return F.relu(out + shortcut)


def test_fixup_block_formula_with_downsample() -> None:
    plain, _, _ = setup("test_resnet", BN_FREE)
    reference = copy.deepcopy(plain).eval()
    to_fixup_blocks(plain)
    x = torch.rand(2, 3, 16, 16)
    # Biases 0, scale 1: exactly what timm's blocks compute.
    torch.testing.assert_close(plain.eval()(x), reference(x), rtol=0, atol=0)
    torch.manual_seed(3)
    with torch.no_grad():
        for _, p in [s for b in fixup_blocks(plain) for s in b.scalars()]:
            p.copy_(torch.randn(1) * 0.5)
    blocks = fixup_blocks(plain)
    assert {b.layers for b in blocks} == {2, 3} and any(b.downsample is not None for b in blocks)
    feature = plain.act1(plain.bn1(plain.conv1(x)))
    for block in blocks:
        torch.testing.assert_close(block(feature), _manual_block(block, feature))
        feature = block(feature)


@pytest.mark.parametrize("name", RESNETS)
@pytest.mark.parametrize("init", ["zero", "inv_sqrt_depth"])
def test_fixup_init(name: str, init: str) -> None:
    net, _, _ = setup(name, {**BN_FREE, "fixup": {"init": init}})
    blocks = fixup_blocks(net)
    depth = len(blocks)

    def assert_he(weight: torch.Tensor, factor: float) -> None:
        n, fan_out = weight.numel(), weight.shape[0] * weight[0, 0].numel()
        std = math.sqrt(2 / fan_out) * factor
        assert float(weight.std()) == pytest.approx(std, rel=5 / math.sqrt(2 * n))  # 5 SEs
        assert abs(float(weight.mean())) < 5 * std / math.sqrt(n)

    for block in blocks:
        *inner, last = [c.weight.detach() for c in block.branch_convs()]
        for weight in inner:
            assert_he(weight, depth ** (-1 / (2 * block.layers - 2)))
        if init == "zero":
            assert not last.any()
        else:
            assert_he(last, depth**-0.5)
        if block.downsample is not None:
            (conv,) = [m for m in block.downsample.modules() if isinstance(m, nn.Conv2d)]
            assert_he(conv.weight.detach(), 1.0)
        assert all(p.item() == (1.0 if a == "scale" else 0.0) for a, p in block.scalars())
    classifier = net.get_classifier()
    assert not classifier.weight.any() and not classifier.bias.any()
    x = torch.randn(2, 3, 16, 16)
    assert not net(x).any()  # zero classifier: zero logits at init
    if init == "zero":  # every branch is zero: a block without downsample passes ReLU(x) on
        block = next(b for b in blocks if b.downsample is None)
        h = torch.randn(2, block.conv1.in_channels, 8, 8)
        torch.testing.assert_close(block(h), F.relu(h))


@pytest.mark.parametrize("name", RESNETS)
def test_fixup_scalars_learn_at_a_tenth_of_the_lr(name: str) -> None:
    net, groups, _ = setup(name, {**BN_FREE, "fixup": {}})
    grouped = [id(p) for g in groups for p in g.params]
    trainable = [id(p) for p in net.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    (fixup,) = [g for g in groups if g.kind == "fixup_scalar"]
    scalars = {
        f"{n}.{a}"
        for n, b in net.named_modules()
        if isinstance(b, FixupBlock)
        for a, _ in b.scalars()
    }
    assert set(fixup.names) == scalars
    assert (fixup.lr_scale, fixup.weight_decay) == (0.1, 0.0)
    lr = 0.2
    opt = torch.optim.SGD(
        [
            {"params": g.params, "lr": lr * g.lr_scale, "weight_decay": g.weight_decay}
            for g in groups
        ]
    )
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    for step in range(2):  # the zero classifier blocks every other gradient at the first step
        opt.zero_grad()
        before = [p.detach().clone() for p in fixup.params]
        F.cross_entropy(net.train()(x), y).backward()
        grads = [p.grad.clone() for p in fixup.params]  # type: ignore[union-attr]
        opt.step()
        for p, p0, g in zip(fixup.params, before, grads, strict=True):
            torch.testing.assert_close(p.detach(), p0 - lr * 0.1 * g)
        assert any(g.abs().sum() > 0 for g in grads) == (step == 1)


def test_fixup_option_scales_the_scalar_lr() -> None:
    _, groups, _ = setup("test_resnet", {**BN_FREE, "fixup": {"scalar_lr_scale": 0.5}})
    assert [g.lr_scale for g in groups if g.kind == "fixup_scalar"] == [0.5]


def test_timm_resnet_names_match_timm() -> None:
    names = set(timm.list_models())
    assert {n for n in names if is_timm_resnet(n)} == set(timm.list_models(module="resnet"))


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        (study("test_efficientnet", {**BN_FREE, "fixup": {}}), ["plugins.fixup", "model.name"]),
        (study("resnet32ts", {**BN_FREE, "fixup": {}}), ["plugins.fixup", "model.name"]),
        (study("resnet18", {"fixup": {}}), ["plugins.fixup", "plugins.remove_norm"]),
        (study("resnet18", {"embedding_bn": {}}), ["plugins.embedding_bn", "plugins.remove_norm"]),
        (
            study("resnet18", {**BN_FREE, "gamma_init": {}}),
            ["plugins.gamma_init", "plugins.remove_norm"],
        ),
        (
            study("resnet18", {**BN_FREE, "fixup": {}, "fan_in_init": {}}),
            ["plugins.fan_in_init", "plugins.fixup"],
        ),
        (
            study("resnet18", {"final_dropout": {}}, drop_rate=0.2),
            ["plugins.final_dropout", "model.drop_rate"],
        ),
    ],
)
def test_impossible_studies_are_rejected_at_validation(
    data: dict[str, Any], fields: list[str]
) -> None:
    with pytest.raises(SpecError) as err:
        validate_data(data)
    for field in fields:
        assert field in str(err.value)


def test_fixup_refuses_a_network_with_bn_at_patch_time() -> None:
    with pytest.raises(ValueError, match=r"plugins\.fixup.*remove_norm"):
        setup("test_resnet", {"fixup": {}})


# --- embedding_bn ----------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES)
def test_embedding_bn_normalizes_the_final_feature_map(name: str) -> None:
    plain, _, _ = setup(name, BN_FREE)
    net, groups, _ = setup(name, {**BN_FREE, "embedding_bn": {}})
    (bn,) = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    assert bn.num_features == net.num_features
    assert {g.kind for g in groups if g.params} >= {"norm_weight", "norm_bias"}
    x = torch.randn(8, 3, 16, 16)
    features = net.train().forward_features(x)
    # forward_features returns BN(the BN-free network's final map): batch statistics per channel.
    raw = plain.train().forward_features(x)
    mean, var = raw.mean((0, 2, 3), keepdim=True), raw.var((0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(
        features, (raw - mean) / torch.sqrt(var + bn.eps), rtol=1e-4, atol=1e-4
    )
    assert net.forward_head(features).shape == (8, 10)
    # Every other state-dict key is the BN-free network's.
    assert set(plain.state_dict()) <= set(net.state_dict())


# --- final_dropout ---------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES)
def test_final_dropout_drops_the_embedding_inside_the_classifier(name: str) -> None:
    plain, _, _ = setup(name, {})
    rng_after_plain = torch.get_rng_state()
    net, _, _ = setup(name, {"final_dropout": {"rate": 0.3}})
    assert torch.equal(torch.get_rng_state(), rng_after_plain)  # patching drew no random numbers
    clf = net.get_classifier()
    assert isinstance(clf, DropoutLinear) and clf.p == 0.3
    assert clf.out_features == 10 and set(net.state_dict()) == set(plain.state_dict())
    for (n, p), (n0, p0) in zip(net.named_parameters(), plain.named_parameters(), strict=True):
        assert n == n0 and torch.equal(p, p0)
    emb = torch.randn(64, clf.in_features)
    torch.manual_seed(5)
    dropped = clf.train()(emb)
    torch.manual_seed(5)
    mask_applied = F.dropout(emb, 0.3, training=True)
    torch.testing.assert_close(dropped, F.linear(mask_applied, clf.weight, clf.bias))
    zeros = float((mask_applied == 0).double().mean())
    assert zeros == pytest.approx(0.3, abs=5 * math.sqrt(0.3 * 0.7 / emb.numel()))
    torch.testing.assert_close(clf.eval()(emb), F.linear(emb, clf.weight, clf.bias))
    # Emb(x) (what loss terms see) is before the dropout: deterministic in train mode.
    x = torch.randn(4, 3, 16, 16)
    net.train()
    torch.manual_seed(6)
    first = step_outputs(net, x)
    torch.manual_seed(7)
    second = step_outputs(net, x)
    torch.testing.assert_close(first.embedding, second.embedding)
    assert not torch.equal(first.logits, second.logits)


# --- options and the study file -----------------------------------------------------


@pytest.mark.parametrize(
    ("plugins", "field"),
    [
        ({"embedding_l2": {"coefficient": -0.1}}, "plugins.embedding_l2.coefficient"),
        ({"functional_l2": {"coefficient": -1}}, "plugins.functional_l2.coefficient"),
        ({"standardization": {"coefficient": -1e-6}}, "plugins.standardization.coefficient"),
        ({"standardization": {"eps": 0.0}}, "plugins.standardization.eps"),
        ({"final_dropout": {"rate": 1.0}}, "plugins.final_dropout.rate"),
        ({"fixup": {"init": "ones"}}, "plugins.fixup.init"),
        ({"fixup": {"scalar_lr_scale": 0.0}}, "plugins.fixup.scalar_lr_scale"),
    ],
)
def test_options_are_checked(plugins: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        validate_plugin_options(plugins)


def test_study_file_variants_resolve_to_their_plugin_sets() -> None:
    spec = load_spec(YAML)
    base = spec.trial_base()
    shared = {"embedding_l2", "functional_l2", "standardization"}
    params = {"plugins.embedding_l2.coefficient": 0.4, "plugins.standardization.coefficient": 3e-6}
    no_bn = resolve_config(base, {"variant": "fixup_no_bn", **params}, spec.variants)
    bn = resolve_config(base, {"variant": "bn_reference", **params}, spec.variants)
    assert set(no_bn["plugins"]) == shared | {"remove_norm", "fixup"}
    assert no_bn["plugins"]["fixup"]["init"] == "inv_sqrt_depth"
    assert set(bn["plugins"]) == shared
    for config in (no_bn, bn):
        assert config["plugins"]["embedding_l2"]["coefficient"] == 0.4
        assert config["plugins"]["standardization"]["coefficient"] == 3e-6
        TrialConfig.model_validate(config)
    assert spec.model.name == "resnet50" and spec.model.cifar_stem
    assert spec.dataset.name == "cifar10"


# --- model.drop_rate: penalties see Emb(x) before any dropout ----------------------------


@pytest.mark.parametrize(
    "name",
    [
        *BACKBONES,
        "test_nfnet",  # ClassifierHead
        "test_convnext",  # NormMlpClassifierHead
        pytest.param("mobilenetv3_small_050", marks=pytest.mark.slow),  # drops after pre_logits
    ],
)
def test_embedding_penalties_take_the_embedding_before_timms_dropout(name: str) -> None:
    """With model.drop_rate = p, Emb(x) is the pooled features themselves (not zeroed, not
    scaled by 1/(1−p)); the dropout acts once, inside the classifier, in the trial's step
    and in model(x) alike."""
    from normstudy.trial._evaluations import forward_parts

    p, coefficient = 0.5, 0.3

    def build(drop_rate: float) -> Any:
        config = TrialConfig(
            model=ModelSpec(name=name, drop_rate=drop_rate),
            plugins={"embedding_l2": {"coefficient": coefficient}},
        )
        torch.manual_seed(0)
        return build_model(config, num_classes=10, in_chans=3).train(), config

    ref, _ = build(0.0)
    net, config = build(p)
    clf = net.get_classifier()
    assert isinstance(clf, DropoutLinear) and clf.p == p
    (plugin,) = instantiate(config.plugins, PluginContext(config, 10, 3, train_size=100))
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        pooled = ref.forward_head(ref.forward_features(x), pre_logits=True)  # no dropout at all
    torch.manual_seed(3)
    embedding, logits = forward_parts(net, x)
    torch.testing.assert_close(embedding, pooled)
    torch.manual_seed(3)
    expected = F.linear(F.dropout(pooled, p, training=True), clf.weight, clf.bias)
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, F.linear(pooled, clf.weight, clf.bias))  # it does drop
    torch.manual_seed(3)
    torch.testing.assert_close(net(x), expected)  # the plain forward drops once, the same way
    out = StepOutputs(x, torch.zeros(6, dtype=torch.long), embedding, logits, net)
    term = plugin.loss_terms(out)["embedding_l2"]
    by_formula = coefficient * (pooled.double() ** 2).sum(1).mean() / pooled.shape[1]
    assert float(term.detach()) == pytest.approx(float(by_formula), rel=1e-5)
    ref.load_state_dict(net.state_dict())  # same keys; the running statistics of net's passes
    with torch.no_grad():  # eval mode: no dropout anywhere
        torch.testing.assert_close(net.eval()(x), ref.eval()(x))


def test_drop_rate_of_an_unknown_head_is_refused() -> None:
    config = TrialConfig(model=ModelSpec(name="test_vit", drop_rate=0.1))
    with pytest.raises(ValueError, match=r"model\.drop_rate: .*VisionTransformer"):
        build_model(config, num_classes=10, in_chans=3)


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_standardization_at_zero_variance_is_finite_constant_and_flat(eps: float) -> None:
    """Behind Fixup's zero-initialized last convs every channel is 0 (σ² = 0, μ = 0): the
    position's term is ½·C·(−log ε − 1) for the configured ε, and it sends no gradient
    anywhere; the other positions follow the formula with the same ε."""
    plugins = {**BN_FREE, "fixup": {}, "standardization": {"coefficient": 1.0, "eps": eps}}
    net, _, made = setup("test_resnet", plugins)
    (plugin,) = [p for p in made if p.name == "standardization"]
    inputs: dict[int, torch.Tensor] = {}
    positions = [m for m in net.modules() if isinstance(m, NormLayer | RemovedNorm)]
    for index, module in enumerate(positions):
        module.register_forward_pre_hook(
            lambda _, args, i=index: inputs.__setitem__(i, args[0].detach().double().clone())
        )
    step_outputs(net.train(), torch.randn(6, 3, 16, 16))
    terms: dict[int, torch.Tensor] = dict(plugin.terms)  # type: ignore[attr-defined]
    dead = [i for i, x in inputs.items() if not x.any()]
    assert dead and len(dead) < len(positions)  # one per residual block
    for i, x in inputs.items():
        channels = x.shape[1]
        values = x.transpose(0, 1).flatten(1)  # (C, N·H·W)
        mu, var = values.mean(1), values.var(1, unbiased=False)
        expected = 0.5 * float((mu**2 + var - torch.log(var + eps) - 1).sum())
        if i in dead:
            assert expected == pytest.approx(0.5 * channels * (-math.log(eps) - 1), rel=1e-12)
        assert float(terms[i].detach()) == pytest.approx(expected, rel=1e-4), i
    dead_sum = torch.stack([terms[i] for i in dead]).sum()
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(dead_sum, params, allow_unused=True)
    assert all(g is None or not g.any() for g in grads)
