"""Plugins of 001 (gamma_decay, population_norm, mean_only, variance_only, dropout_after_norm)
against their formulas, and the linear lr rule of batch-size studies."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from normstudy.models import NormLayer, norm_layers
from normstudy.models._norm import channel_view
from normstudy.plugins import Plugin, PluginContext, StepOutputs, instantiate
from normstudy.spec import SpecError, TrialConfig, validate_data
from normstudy.spec._metrics import TIMINGS
from normstudy.trial import LocalReporter, run_trial
from normstudy.trial._schedule import lr_factor
from normstudy.trial._train import _Trial

torch.set_num_threads(1)

IMAGE = 8
FAST = ["test_resnet", "test_efficientnet"]
SLOW = ["resnet18", "resnet50", "efficientnet_b0"]
BACKBONES = FAST + [pytest.param(name, marks=pytest.mark.slow) for name in SLOW]


def make(plugins: dict[str, Any], name: str = "test_resnet") -> tuple[nn.Module, list[Plugin]]:
    """A tiny timm model with the plugins applied (patch_model), in training mode."""
    config = TrialConfig.model_validate({"model": {"name": name}, "plugins": plugins})
    made = instantiate(config.plugins, PluginContext(config, 4, 3, train_size=100))
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4)
    for plugin in made:
        model = plugin.patch_model(model)
    return model.train(), made


def randomize_gammas(model: nn.Module) -> None:
    """γ away from 0 and 1, β away from 0 (timm zero-inits the last γ of each ResNet block)."""
    with torch.no_grad():
        for _, bn in norm_layers(model):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)


def step_outputs(model: nn.Module, batch: int) -> StepOutputs:
    dtype = next(model.parameters()).dtype
    x, y = torch.randn(batch, 3, IMAGE, IMAGE, dtype=dtype), torch.arange(batch) % 4
    logits = model(x)
    return StepOutputs(inputs=x, targets=y, embedding=logits, logits=logits, model=model)


def gammas(model: nn.Module) -> list[nn.Parameter]:
    return [bn.weight for _, bn in norm_layers(model, skip_input_norm=True)]


# --- gamma_decay ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [4, 10])
def test_gamma_decay_constant_and_batch_penalty_value(batch: int) -> None:
    for options, zeta in [
        ({"mode": "constant", "zeta": 3e-3}, 3e-3),
        ({"mode": "batch"}, 1.0 / (2 * batch)),
    ]:
        model, (plugin,) = make({"gamma_decay": options})
        randomize_gammas(model)
        term = plugin.loss_terms(step_outputs(model, batch))["gamma_decay"]
        expected = zeta * sum(float(g.detach().double().pow(2).sum()) for g in gammas(model))
        assert float(term.detach()) == pytest.approx(expected, rel=1e-5)
        assert plugin.epoch_metrics(model) == {"gamma_decay/zeta_mean": pytest.approx(zeta)}


@pytest.mark.parametrize("per", ["layer", "channel"])
@pytest.mark.parametrize("mode", ["constant", "batch", "adaptive"])
def test_gamma_decay_gradient_is_two_zeta_gamma(mode: str, per: str) -> None:
    options = {"mode": mode, "zeta": 0.02, "per": per}
    model, (plugin,) = make({"gamma_decay": options})
    randomize_gammas(model)
    if mode == "adaptive":
        plugin.set_factors(model, torch.randn(6, 3, IMAGE, IMAGE), torch.arange(6) % 4)
    term = plugin.loss_terms(step_outputs(model, 5))["gamma_decay"]
    grads = torch.autograd.grad(term, gammas(model))
    zetas = plugin.zetas(model, 5)
    assert len(zetas) == len(grads) == len(gammas(model))
    for (layer, zeta), grad in zip(zetas, grads, strict=True):
        expected = 2 * zeta * layer.weight.detach()
        if mode == "batch":
            assert zeta == 1.0 / (2 * 5)
        if mode == "adaptive":
            factor = layer.get_buffer("gamma_decay_factor").float() / 5
            assert torch.allclose(
                torch.as_tensor(zeta).float(), factor.mean() if per == "layer" else factor
            )
            expected = expected.float()
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)


def _direct_adaptive_factors(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """(ρ+2)/8·I(γ) + ½·mean sigmoid(h) per channel, computed plainly: h from forward hooks on
    the whole batch (PN form: batch statistics, detached), per-sample gradients by a loop."""
    model = copy.deepcopy(model).eval()
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, NormLayer)]

    def detached_batch_statistics(layer: NormLayer, x: torch.Tensor) -> Any:
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        return channel_view(mean.detach(), x), channel_view(var.detach(), x)

    h_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, inputs: Any) -> None:
            h = inputs[0].detach().double()  # the input of ``drop``: h = γ·x̂ + β
            d = h - h.mean(dim=(0, 2, 3), keepdim=True)
            kurtosis = d.pow(4).mean((0, 2, 3)) / d.pow(2).mean((0, 2, 3)).pow(2) - 3.0
            h_stats[name] = (kurtosis, torch.sigmoid(h).mean((0, 2, 3)))

        return record

    for name, layer in layers:
        layer.statistics = detached_batch_statistics
        layer.drop.register_forward_pre_hook(hook(name))
    logits = model(x)
    params = [layer.weight for _, layer in layers]
    per_sample = []
    for j in range(len(y)):
        loss_j = F.cross_entropy(logits[j : j + 1], y[j : j + 1])
        per_sample.append(torch.autograd.grad(loss_j, params, retain_graph=True))
    out = {}
    for i, (name, _) in enumerate(layers):
        fisher = torch.stack([g[i] for g in per_sample]).double().pow(2).mean(0)
        kurtosis, sigmoid_mean = h_stats[name]
        out[name] = (kurtosis + 2) / 8 * fisher + 0.5 * sigmoid_mean
    return out


@pytest.mark.parametrize("name", BACKBONES)
def test_gamma_decay_adaptive_zeta_matches_a_direct_computation(name: str) -> None:
    model, (plugin,) = make({"gamma_decay": {"mode": "adaptive", "per": "channel"}}, name)
    randomize_gammas(model)
    model.double()  # float64: deep random networks amplify rounding differences
    torch.manual_seed(1)
    x, y = torch.randn(6, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1])
    running = [bn.running_mean.clone() for _, bn in norm_layers(model)]
    plugin.set_factors(model, x, y)
    expected = _direct_adaptive_factors(model, x, y)
    assert model.training  # restored after the eval-mode measurement
    for (_, bn), before in zip(norm_layers(model), running, strict=True):
        assert torch.equal(bn.running_mean, before)  # BN's running averages untouched
    for name, factor in expected.items():
        stored = model.get_buffer(f"{name}.gamma_decay_factor")
        torch.testing.assert_close(stored.double(), factor)
    batch = 5
    for (_, zeta), factor in zip(plugin.zetas(model, batch), expected.values(), strict=True):
        torch.testing.assert_close(zeta.double(), factor / batch)
    # the penalty of a step: Σ_layers Σ_c ζ_c γ_c², ζ = factor / M with the step's batch M
    term = plugin.loss_terms(step_outputs(model, batch))["gamma_decay"]
    direct = sum(
        float((factor / batch * model.get_parameter(f"{n}.weight").detach().double() ** 2).sum())
        for n, factor in expected.items()
    )
    assert float(term.detach()) == pytest.approx(direct, rel=1e-6)


def test_gamma_decay_decays_the_weight_norm_scale() -> None:
    """001's "WN + gamma decay": weight_norm keeps NormLayers whose γ is its scale s."""
    plugins = {"weight_norm": {}, "gamma_decay": {"mode": "constant", "zeta": 0.01}}
    validate_data({"name": "s", "model": {"name": "test_resnet"}, "plugins": plugins})
    model, made = make(plugins)
    (plugin,) = [p for p in made if p.name == "gamma_decay"]
    layers = [m for m in model.modules() if isinstance(m, NormLayer)]
    assert layers and all(m.owners.get("statistics") == "weight_norm" for m in layers)
    randomize_gammas(model)
    term = plugin.loss_terms(step_outputs(model, 4))["gamma_decay"]
    scales = [float(m.weight.detach().double().pow(2).sum()) for m in layers]
    assert float(term.detach()) == pytest.approx(0.01 * sum(scales), rel=1e-5)


def test_gamma_decay_constant_needs_zeta() -> None:
    with pytest.raises(SpecError, match=r"plugins\.gamma_decay.*zeta is required"):
        validate_data({"name": "s", "plugins": {"gamma_decay": {"mode": "constant"}}})


# --- population_norm -----------------------------------------------------------------------


def _direct_population_stats(
    model: nn.Module, x: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Layer by layer over the whole subset at once: layer l's input mean and biased variance,
    with the layers before it normalized by their (already computed) population statistics."""
    model = copy.deepcopy(model).eval()
    layers = [m for m in model.modules() if isinstance(m, NormLayer)]
    known: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def known_statistics(layer: NormLayer, x: torch.Tensor) -> Any:
        unknown = (x.new_zeros(x.shape[1]), x.new_ones(x.shape[1]))
        mean, var = known.get(id(layer), unknown)
        return channel_view(mean, x), channel_view(var, x)

    for layer in layers:
        layer.statistics = known_statistics
    for layer in layers:
        seen: list[torch.Tensor] = []
        handle = layer.register_forward_pre_hook(
            lambda m, inputs, seen=seen: seen.append(inputs[0].clone())
        )
        with torch.no_grad():
            model(x)
        handle.remove()
        var, mean = torch.var_mean(seen[0], dim=(0, 2, 3), unbiased=False)
        known[id(layer)] = (mean, var)
    return [known[id(layer)] for layer in layers]


def _population_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (m.get_buffer("population_mean"), m.get_buffer("population_var"))
        for m in model.modules()
        if isinstance(m, NormLayer)
    ]


@pytest.mark.parametrize("name", BACKBONES)
def test_population_norm_statistics_are_the_subsets(name: str) -> None:
    model, (plugin,) = make({"population_norm": {"estimate": "layerwise", "chunk_size": 5}}, name)
    randomize_gammas(model)
    model.double()  # float64: chunked and whole-batch convolutions round differently
    x = torch.randn(13, 3, IMAGE, IMAGE, dtype=torch.float64) * 2 + 0.5
    expected = _direct_population_stats(model, x)
    plugin.refresh(model, x)  # layerwise, in chunks of 5, 5, 3
    assert model.training
    got = _population_buffers(model)
    assert len(got) == len(expected) == len(norm_layers(model))
    for (mean, var), (mean_e, var_e) in zip(got, expected, strict=True):
        torch.testing.assert_close(mean, mean_e)
        torch.testing.assert_close(var, var_e)
    keys = model.state_dict().keys()
    assert sum(k.endswith("population_mean") for k in keys) == len(expected)

    # one_pass: exact with a single chunk; with several chunks only the first layer (whose input
    # does not depend on any normalization) is exact.
    one_pass, (plugin_1,) = make(
        {"population_norm": {"estimate": "one_pass", "chunk_size": 13}}, name
    )
    one_pass.double().load_state_dict(model.state_dict())
    plugin_1.refresh(one_pass, x)
    for (mean, var), (mean_e, var_e) in zip(_population_buffers(one_pass), expected, strict=True):
        torch.testing.assert_close(mean, mean_e)
        torch.testing.assert_close(var, var_e)
    chunked, (plugin_2,) = make(
        {"population_norm": {"estimate": "one_pass", "chunk_size": 4}}, name
    )
    chunked.double().load_state_dict(model.state_dict())
    plugin_2.refresh(chunked, x)
    (mean, var), (mean_e, var_e) = _population_buffers(chunked)[0], expected[0]
    torch.testing.assert_close(mean, mean_e)
    torch.testing.assert_close(var, var_e)


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_population_norm_output_does_not_depend_on_the_batch(name: str) -> None:
    model, (plugin,) = make({"population_norm": {}}, name)
    randomize_gammas(model)
    model.double()  # float64: what is left is the batch (in)dependence, not conv rounding
    plugin.refresh(model, torch.randn(16, 3, IMAGE, IMAGE, dtype=torch.float64))
    x = torch.randn(6, 3, IMAGE, IMAGE, dtype=torch.float64, requires_grad=True)
    model.train()
    alone = model(x[:1])
    in_batch = model(x)
    others = torch.randn(3, 3, IMAGE, IMAGE, dtype=torch.float64) * 5
    with_others = model(torch.cat([others, x[:1]]))
    torch.testing.assert_close(in_batch[:1], alone)
    torch.testing.assert_close(with_others[3:], alone)
    torch.testing.assert_close(model.eval()(x[:1]), alone)  # train = eval: no batch noise
    # statistics are constants: sample 0's output has no gradient path to the other samples
    (grad,) = torch.autograd.grad(in_batch[0].sum(), x)
    assert grad[0].abs().sum() > 0 and not grad[1:].any()


def test_population_norm_refreshes_on_its_schedule_in_a_trial() -> None:
    config = _trial_config(
        {"population_norm": {"samples": 40, "refresh_every": 2, "estimate": "one_pass"}}, epochs=1
    )
    trial = _Trial(config, LocalReporter())
    (plugin,) = trial.plugins
    first = plugin.subset()
    assert len(first) == 40 and torch.equal(first, plugin.subset())  # fixed subset
    expected = _direct_population_stats(trial.model, first)  # set by data_init at the start
    for (mean, var), (mean_e, var_e) in zip(
        _population_buffers(trial.model), expected, strict=True
    ):
        torch.testing.assert_close(mean, mean_e, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(var, var_e, rtol=1e-4, atol=1e-5)
    trial.run_epoch([("val/acc", "max")])  # 4 steps: refreshed after steps 2 and 4
    expected = _direct_population_stats(trial.model, first)
    for (mean, var), (mean_e, var_e) in zip(
        _population_buffers(trial.model), expected, strict=True
    ):
        torch.testing.assert_close(mean, mean_e, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(var, var_e, rtol=1e-4, atol=1e-5)


# --- mean_only / variance_only ------------------------------------------------------------


def _half_norm(plugin: str) -> tuple[nn.Module, torch.Tensor]:
    _, (made,) = make({plugin: {}})
    layer = nn.Sequential(nn.BatchNorm2d(3))  # γ = 1, β = 0
    made.patch_model(layer)
    torch.manual_seed(0)
    shift = torch.tensor([3.0, -2.0, 0.5]).view(1, 3, 1, 1)
    scale = torch.tensor([4.0, 0.5, 2.0]).view(1, 3, 1, 1)
    return layer.train(), torch.randn(16, 3, 5, 5) * scale + shift


def test_mean_only_subtracts_the_batch_mean_only() -> None:
    layer, x = _half_norm("mean_only")
    out = layer(x)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(out, x - channel_view(mean, x))
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var((0, 2, 3), unbiased=False), var)  # not rescaled


def test_variance_only_divides_by_the_batch_std_only() -> None:
    layer, x = _half_norm("variance_only")
    out = layer(x)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    eps = layer[0].eps
    torch.testing.assert_close(out, x / channel_view((var + eps).sqrt(), x))
    torch.testing.assert_close(out.var((0, 2, 3), unbiased=False), var / (var + eps))  # ≈ 1
    torch.testing.assert_close(out.mean((0, 2, 3)), mean / (var + eps).sqrt())  # mean kept


def test_half_norms_and_population_norm_claim_the_same_stage() -> None:
    for first, second in [("mean_only", "variance_only"), ("population_norm", "mean_only")]:
        model, (a,) = make({first: {}})
        (b,) = instantiate({second: {}}, a.ctx)
        with pytest.raises(ValueError, match="both change the normalize"):
            b.patch_model(model)


@pytest.mark.parametrize(
    ("plugins", "names"),
    [
        ({"mean_only": {}, "variance_only": {}}, ("mean_only", "variance_only")),
        ({"population_norm": {}, "mean_only": {}}, ("mean_only", "population_norm")),
        ({"population_norm": {}, "variance_only": {}}, ("population_norm", "variance_only")),
        ({"population_norm": {}, "remove_norm": {}}, ("population_norm", "remove_norm")),
        ({"gamma_decay": {}, "remove_norm": {}}, ("gamma_decay", "remove_norm")),
    ],
)
def test_conflicting_plugins_are_rejected_at_validation(
    plugins: dict[str, Any], names: tuple[str, str]
) -> None:
    with pytest.raises(SpecError, match=rf"plugins\.{names[0]} and plugins\.{names[1]}"):
        validate_data({"name": "s", "plugins": plugins})


# --- dropout_after_norm --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_dropout_after_norm_drops_each_norm_output(name: str) -> None:
    plain, _ = make({}, name)
    model, _ = make({"dropout_after_norm": {"p": 0.3}}, name)
    assert model.state_dict().keys() == plain.state_dict().keys()
    layers = [m for m in model.modules() if isinstance(m, NormLayer)]
    assert len(layers) == len(norm_layers(plain))
    x = torch.randn(4, 3, IMAGE, IMAGE)
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))  # off in eval mode
    model.train()
    layer = layers[1]
    ref = copy.deepcopy(layer)
    ref.drop = nn.Identity()
    ref.act = nn.Identity()
    h = torch.randn(8, layer.num_features, 4, 4)
    torch.manual_seed(3)
    out = layer(h)
    torch.manual_seed(3)
    # dropout right on the BN output, before the activation
    torch.testing.assert_close(out, layer.act(F.dropout(ref(h), 0.3, training=True)))


@pytest.mark.parametrize(("name", "count"), [("test_resnet", 4), ("test_efficientnet", 5)])
def test_dropout_after_block_drops_each_block_output(name: str, count: int) -> None:
    from normstudy.models._dropout import residual_blocks

    plain, _ = make({}, name)
    model, _ = make({"dropout_after_norm": {"p": 0.2, "where": "block"}}, name)
    assert model.state_dict().keys() == plain.state_dict().keys()
    blocks = residual_blocks(model)
    assert len(blocks) == count == len(residual_blocks(plain))
    x = torch.randn(2, 3, IMAGE, IMAGE)
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))
    (_, block), (_, ref) = blocks[-1], residual_blocks(plain)[-1]
    block.train(), ref.train()
    h = torch.randn(2, next(ref.parameters()).shape[1], 4, 4)
    torch.manual_seed(5)
    out = block(h)
    torch.manual_seed(5)
    torch.testing.assert_close(out, F.dropout(ref(h), 0.2, training=True))


def test_dropout_after_block_needs_a_block_backbone() -> None:
    with pytest.raises(SpecError, match=r"plugins\.dropout_after_norm\.where"):
        validate_data(
            {
                "name": "s",
                "model": {"name": "vit_tiny_patch16_224"},
                "plugins": {"dropout_after_norm": {"where": "block"}},
            }
        )


# --- in real trials ------------------------------------------------------------------------


def _trial_config(plugins: dict[str, Any], epochs: int = 2, **train: Any) -> dict[str, Any]:
    return TrialConfig.model_validate(
        {
            "dataset": {"name": "digits", "image_size": IMAGE},
            "model": {"name": "test_resnet", "cifar_stem": True},
            "train": {
                "epochs": epochs,
                "batch_size": 32,
                "lr": 0.05,
                "max_steps_per_epoch": 4,
                "threads": 1,
                **train,
            },
            "evaluation": {"evalmode_train_samples": 0, "dropout50": False, "coverage": False},
            "plugins": plugins,
            "seed": 3,
        }
    ).model_dump(mode="json")


PN_ADAPTIVE = {
    "population_norm": {"samples": 48, "refresh_every": 3, "estimate": "one_pass"},
    "gamma_decay": {"mode": "adaptive", "refresh_every": 3, "fisher_samples": 8},
}


def test_pn_with_adaptive_gamma_decay_resumes_exactly(tmp_path: Path) -> None:
    whole = LocalReporter()
    run_trial(_trial_config(PN_ADAPTIVE, epochs=3), whole)
    for h in whole.history:
        assert h["gamma_decay/zeta_mean"] > 0 and h["loss/gamma_decay"] > 0

    class Crash(RuntimeError):
        pass

    class CrashAfterTwo(LocalReporter):
        def report(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
            super().report(metrics, state)
            if len(self.history) == 2:
                raise Crash

    with pytest.raises(Crash):
        run_trial(_trial_config(PN_ADAPTIVE, epochs=3), CrashAfterTwo(tmp_path))
    resumed = LocalReporter(tmp_path)
    run_trial(_trial_config(PN_ADAPTIVE, epochs=3), resumed)
    drop = set(TIMINGS)
    assert [{k: v for k, v in h.items() if k not in drop} for h in resumed.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in whole.history[2:]
    ]


@pytest.mark.parametrize("batch", [16, 64])
def test_linear_lr_scaling_sets_every_group_lr(batch: int) -> None:
    config = _trial_config(
        {"lr_divisor": {"gamma": 10.0}},
        batch_size=batch,
        lr_scaling="linear",
        lr_reference_batch=32,
        schedule={"name": "cosine", "warmup_epochs": 0},
    )
    trial = _Trial(config, LocalReporter())
    scaled = 0.05 * batch / 32
    factor = lr_factor(trial.cfg.train, 0)
    groups = {g["kind"]: g for g in trial.optimizer.param_groups}
    assert groups["weight"]["initial_lr"] == pytest.approx(scaled)
    assert groups["norm_weight"]["initial_lr"] == pytest.approx(scaled / 10)
    for group in trial.optimizer.param_groups:
        assert group["lr"] == pytest.approx(group["initial_lr"] * factor)
    unscaled = _Trial(
        {**config, "train": {**config["train"], "lr_scaling": "none"}}, LocalReporter()
    )
    assert {g["kind"]: g["initial_lr"] for g in unscaled.optimizer.param_groups}["weight"] == 0.05


# --- weight norm + mean-only / variance-only BN (001, Sect. 5) -----------------------------


def _wn_half(plugin: str) -> tuple[nn.Sequential, list[Plugin]]:
    """conv (no bias) → BN with weight_norm and a half norm, γ and β random, training mode."""
    config = TrialConfig.model_validate({"plugins": {"weight_norm": {}, plugin: {}}})
    made = instantiate(config.plugins, PluginContext(config, 4, 3, train_size=100))
    assert [p.name for p in made] == [plugin, "weight_norm"]  # the half norm claims first
    torch.manual_seed(0)
    net: Any = nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5))
    for p in made:
        net = p.patch_model(net)
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    return net.train(), made


def _half_by_formula(plugin: str, h: torch.Tensor, mean: Any, var: Any) -> torch.Tensor:
    """001's half standardizations of the pre-activations h (per channel, mean/var given)."""
    if plugin == "mean_only":
        return h - channel_view(mean, h)
    return h / channel_view((var + 1e-5).sqrt(), h)


@pytest.mark.parametrize("plugin", ["mean_only", "variance_only"])
def test_weight_norm_with_half_norm_follows_the_formula(plugin: str) -> None:
    net, _ = _wn_half(plugin)
    conv, layer = net[0], net[1]
    assert isinstance(layer, NormLayer)
    assert layer.owners == {"normalize": plugin}  # batch statistics kept, not weight norm's
    assert (layer.center, layer.scale) == (plugin == "mean_only", plugin == "variance_only")
    v = conv.parametrizations.weight.original1.detach()
    w = v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # W = v/‖v‖ per output channel
    gamma, beta = layer.weight.detach(), layer.bias.detach()
    torch.manual_seed(1)
    x = torch.randn(16, 3, 7, 7) * 2 + 0.5
    h = F.conv2d(x, w)
    var, mean = torch.var_mean(h, dim=(0, 2, 3), unbiased=False)
    expected = channel_view(gamma, h) * _half_by_formula(plugin, h, mean, var)
    expected = expected + channel_view(beta, h)
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # WN: the scale of v does not matter
        conv.parametrizations.weight.original1.mul_(3.0)
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
    net.eval()  # running averages of the batch statistics (mean-only BN's test-time form)
    running = _half_by_formula(plugin, h, layer.running_mean, layer.running_var)
    expected = channel_view(gamma, h) * running + channel_view(beta, h)
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("plugin", ["mean_only", "variance_only"])
def test_weight_norm_with_half_norm_data_init(plugin: str) -> None:
    """000's init on the normalized input z of the affine: output = γ₀·(z − μ_z)/√(σ_z² + eps)
    + β₀ on the init batch; the running statistics are left as they were."""
    net, made = _wn_half(plugin)
    layer = net[1]
    gamma0, beta0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    running = (layer.running_mean.clone(), layer.running_var.clone())
    torch.manual_seed(2)
    x = torch.randn(64, 3, 7, 7) * 1.5 - 0.3
    for p in made:
        p.data_init(net, x)
    assert torch.equal(layer.running_mean, running[0])
    assert torch.equal(layer.running_var, running[1])
    with torch.no_grad():
        h = net[0](x)
        var, mean = torch.var_mean(h, dim=(0, 2, 3), unbiased=False)
        z = _half_by_formula(plugin, h, mean, var)
        var_z, mean_z = torch.var_mean(z, dim=(0, 2, 3), unbiased=False)
        expected = (z - channel_view(mean_z, z)) / channel_view((var_z + 1e-5).sqrt(), z)
        expected = channel_view(gamma0, z) * expected + channel_view(beta0, z)
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5)
    if plugin == "mean_only":  # centering does the shift: only the scale moved
        torch.testing.assert_close(layer.bias.detach(), beta0)


def test_weight_norm_composes_with_half_norms_but_not_analytic_norm() -> None:
    for half in ("mean_only", "variance_only"):
        validate_data({"name": "s", "plugins": {"weight_norm": {}, half: {}}})
        with pytest.raises(SpecError, match=rf"plugins\.analytic_norm and plugins\.{half}"):
            validate_data({"name": "s", "plugins": {"analytic_norm": {}, half: {}}})
