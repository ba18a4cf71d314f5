"""The training fast path: precision, layout and compile options; bf16 against fp32 and
compiled against eager for every plugin set-up of the registry; one host sync per epoch.

Registry-driven like ``test_plugin_contract``: every plugin, with its partners and in each of
its variants, on ``test_resnet``. Never timed (speed lives in ``benchmarks/``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import torch

from normstudy.plugins import Plugin, _base, plugin_registry
from normstudy.spec import SpecError, validate_data
from normstudy.spec._model import ResourcesSpec, TrainSpec
from normstudy.trial import LocalReporter
from normstudy.trial._speed import (
    COMPILE_BACKEND_ENV,
    CompiledForward,
    cap_gpu_memory,
    memory_fraction,
    resolve,
)
from normstudy.trial._train import _Trial
from tests.test_plugin_contract import plugins_of, setups

SETUPS = setups()
IDS = [f"{p}-{s}" for p, s in SETUPS]

BF16_LOSS_RTOL = 0.03
"""bf16 (8-bit mantissa, ~0.4% per rounding) against fp32: loss and each penalty within 3%."""
BF16_GRAD_COSINE = 0.97
"""... and the gradient over all parameters points the same way (cosine ≥ 0.97: bf16
convolutions alone give 0.98-0.999 on these tiny networks, lowest with a small γ init) ..."""
BF16_GRAD_NORM_RTOL = 0.05
"""... with a norm within 5%."""


def _study(plugins: dict[str, Any], **train: Any) -> dict[str, Any]:
    return {
        "name": "fast",
        "dataset": {"name": "synthetic", "num_samples": 96, "image_size": 16, "num_classes": 4},
        "model": {"name": "test_resnet", "cifar_stem": True},
        "train": {
            "epochs": 2,
            "batch_size": 16,
            "eval_batch_size": 64,
            "lr": 0.01,
            "max_steps_per_epoch": 3,
            "threads": 1,
            **train,
        },
        "evaluation": {"evalmode_train_samples": 16},
        "plugins": plugins,
    }


def _trial(plugin: str, setup: str, **train: Any) -> _Trial:
    try:
        spec = validate_data(_study(plugins_of(plugin, setup), **train))
    except SpecError as err:
        pytest.skip(f"{plugin} does not apply to test_resnet: {err.problems[0]}")
    torch.manual_seed(0)
    return _Trial(spec.trial_base(), LocalReporter())


def _forward_backward(trial: _Trial) -> tuple[dict[str, float], torch.Tensor]:
    """One forward (with the trial's own code) and backward, no optimizer step: the loss, each
    penalty and the flattened gradient of every parameter."""
    torch.manual_seed(1)  # same noise draws in both trials
    x, y = trial.splits.train.x[:16], trial.splits.train.y[:16]
    trial.model.train()
    loss, _, terms = trial.losses(x, y)
    total = loss + sum(terms.values(), torch.zeros(()))
    trial.optimizer.zero_grad(set_to_none=True)
    total.backward()
    values = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
    grads = [
        p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
        for p in trial.model.parameters()
    ]
    return values, torch.cat(grads).double()


# -- packed trials: the memory cap -------------------------------------------------------


@pytest.mark.parametrize(
    ("gpus", "cap", "expected"),
    [(0.25, True, 0.25), (0.5, True, 0.5), (1.0, True, None), (2.0, True, None), (0.0, True, None),
     (0.25, False, None)],
)  # fmt: skip
def test_a_packed_trial_may_use_its_share_of_the_gpu_memory(
    gpus: float, cap: bool, expected: float | None
) -> None:
    assert memory_fraction(ResourcesSpec(gpus=gpus, gpu_memory_cap=cap)) == expected


def test_the_cap_is_set_per_trial_on_cuda_and_lifted_for_a_whole_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CUDA cannot run here: the allocator call is recorded (the real cap is checked by the
    CUDA-only test below)."""
    calls: list[tuple[float, torch.device]] = []
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, d))
    )
    cuda = torch.device("cuda")
    assert cap_gpu_memory(ResourcesSpec(gpus=0.25), cuda) == 0.25
    # a reused worker's next trial takes a whole GPU: the cap goes
    assert cap_gpu_memory(ResourcesSpec(gpus=1.0), cuda) is None
    assert cap_gpu_memory(ResourcesSpec(gpus=0.25), torch.device("cpu")) is None
    assert calls == [(0.25, cuda), (1.0, cuda)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_capped_trial_cannot_allocate_beyond_its_share() -> None:
    device = torch.device("cuda")
    total = torch.cuda.get_device_properties(device).total_memory
    try:
        cap_gpu_memory(ResourcesSpec(gpus=0.05), device)
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(total * 0.1), dtype=torch.uint8, device=device)
        cap_gpu_memory(ResourcesSpec(gpus=1.0), device)
        torch.empty(int(total * 0.1), dtype=torch.uint8, device=device)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()


# -- options ------------------------------------------------------------------------------


def test_defaults_are_exact_on_cpu_and_fast_on_a_bf16_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    train = TrainSpec()
    assert (train.precision, train.channels_last, train.compile) == ("auto", None, "none")
    cpu = resolve(train, torch.device("cpu"))
    assert (cpu.precision, cpu.channels_last, cpu.dtype) == ("fp32", False, torch.float32)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu = resolve(train, torch.device("cuda"))
    assert (gpu.precision, gpu.channels_last) == ("bf16", True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve(train, torch.device("cuda")).precision == "fp32"
    explicit = TrainSpec(precision="fp16", channels_last=False, compile="max-autotune")
    assert resolve(explicit, torch.device("cuda")).channels_last is False
    assert resolve(explicit, torch.device("cpu")).grad_scaler() is not None


@pytest.mark.parametrize(
    ("key", "value"),
    [("precision", "fp8"), ("compile", "fast"), ("channels_last", "sometimes")],
)
def test_bad_values_name_the_field(key: str, value: str) -> None:
    with pytest.raises(SpecError, match=f"train.{key}"):
        validate_data(_study({}, **{key: value}))


# -- one host-device sync per epoch ---------------------------------------------------------

SYNCS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")
"""Tensor methods that make the host wait for the device (copies of a value to Python)."""


def _count_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def counting(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return method(self, *args, **kwargs)

        return wrapper

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    return calls


@pytest.mark.parametrize(("plugin", "setup"), SETUPS, ids=IDS)
def test_one_host_sync_per_epoch(plugin: str, setup: str, monkeypatch: pytest.MonkeyPatch) -> None:
    trial = _trial(plugin, setup)
    with monkeypatch.context() as patch:
        calls = _count_syncs(patch)
        metrics = trial.train_epoch()
    assert calls == ["tolist"], f"host syncs in one epoch of 3 steps: {calls}"
    assert metrics["train/loss"] > 0 and 0.0 <= metrics["train/acc"] <= 1.0


def test_a_diverged_epoch_still_raises_with_its_first_bad_step() -> None:
    trial = _trial("gamma_init", "default", lr=1e12, momentum=0.0)
    with pytest.raises(FloatingPointError, match=r"training loss is .* at epoch 1 \(step \d"):
        trial.train_epoch()


# -- bf16 against fp32 --------------------------------------------------------------------


@pytest.mark.parametrize(("plugin", "setup"), SETUPS, ids=IDS)
def test_bf16_matches_fp32(plugin: str, setup: str) -> None:
    fp32 = _trial(plugin, setup, precision="fp32")
    bf16 = _trial(plugin, setup, precision="bf16")
    assert bf16.fast.dtype == torch.bfloat16
    v32, g32 = _forward_backward(fp32)
    v16, g16 = _forward_backward(bf16)
    assert v16.keys() == v32.keys()
    for key, value in v32.items():
        assert v16[key] == pytest.approx(value, rel=BF16_LOSS_RTOL, abs=1e-6), key
    cosine = torch.nn.functional.cosine_similarity(g16, g32, dim=0)
    assert cosine >= BF16_GRAD_COSINE
    assert float(g16.norm()) == pytest.approx(float(g32.norm()), rel=BF16_GRAD_NORM_RTOL)


def test_norm_layer_stages_run_in_fp32_under_autocast() -> None:
    trial = _trial("variance_only", "default", precision="bf16")
    from normstudy.models._norm import NormLayer

    seen: list[torch.dtype] = []
    layer = next(m for m in trial.model.modules() if isinstance(m, NormLayer))
    layer.perturb.append(lambda _, xhat: seen.append(xhat.dtype) or xhat)
    with trial.fast.autocast():
        out = trial.model(trial.splits.train.x[:4])
    assert seen == [torch.float32]
    assert out.dtype == torch.bfloat16  # the classifier itself runs in bf16
    assert layer.running_var is not None and layer.running_var.dtype == torch.float32


# -- compiled against eager ---------------------------------------------------------------


@pytest.mark.parametrize(("plugin", "setup"), SETUPS, ids=IDS)
def test_every_plugin_trains_compiled(
    plugin: str, setup: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(COMPILE_BACKEND_ENV, "aot_eager")
    torch._dynamo.reset()
    eager = _trial(plugin, setup)
    compiled = _trial(plugin, setup, compile="default")
    blocked = [p for p in compiled.plugins if p.compile_blocker]
    if blocked:  # declared: eager training, with the reason logged
        assert compiled.forward is not None and not isinstance(compiled.forward, CompiledForward)
        assert blocked[0].compile_blocker in caplog.text
        return
    assert isinstance(compiled.forward, CompiledForward)
    v_eager, g_eager = _forward_backward(eager)
    v_compiled, g_compiled = _forward_backward(compiled)
    assert compiled.forward.fallback_reason is None, compiled.forward.fallback_reason
    assert v_compiled == pytest.approx(v_eager, rel=1e-4, abs=1e-6)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-3, atol=1e-5)
    metrics = compiled.train_epoch()  # optimizer steps and plugins' hooks around it
    assert metrics["train/loss"] > 0


class _Uncompilable(Plugin):
    """A test plugin that declares it cannot be compiled."""

    name = "_uncompilable_for_tests"
    compile_blocker: ClassVar[str | None] = "it keeps Python state per forward (test)"


def test_a_declared_blocker_trains_eagerly_and_says_why(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin_registry()  # the built-in plugins first, then this one, for this test only
    monkeypatch.setitem(_base._REGISTRY, _Uncompilable.name, _Uncompilable)
    spec = validate_data(_study({"_uncompilable_for_tests": {}}, compile="default"))
    with caplog.at_level(logging.WARNING):
        trial = _Trial(spec.trial_base(), LocalReporter())
    assert not isinstance(trial.forward, CompiledForward)
    assert "_uncompilable_for_tests: it keeps Python state per forward" in caplog.text


def test_a_failed_compile_restores_the_state_and_falls_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trial = _trial("gamma_init", "default")
    before = {k: v.clone() for k, v in trial.model.state_dict().items()}
    rng = torch.get_rng_state()
    forward = CompiledForward(trial.forward, trial.model, "default", trial.generator)

    def broken(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trial.forward(x)  # mutates running statistics and draws, then fails
        torch.rand(3)
        raise RuntimeError("backend exploded\nstack ...")

    forward.compiled = broken
    x = trial.splits.train.x[:8]
    with caplog.at_level(logging.WARNING):
        eager_again = _expected_after_restore(trial, before, rng, x)
        out = forward(x)
    assert forward.fallback_reason == "RuntimeError: backend exploded"
    assert "falling back to eager: RuntimeError: backend exploded" in caplog.text
    torch.testing.assert_close(out[1], eager_again)
    assert forward(x)[1].shape == eager_again.shape  # later calls: eager, no retry


def _expected_after_restore(
    trial: _Trial, state: dict[str, torch.Tensor], rng: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """What the eager forward gives from the saved state (then put that state back)."""
    trial.model.load_state_dict(state)
    torch.set_rng_state(rng)
    _, logits = trial.forward(x)
    trial.model.load_state_dict(state)
    torch.set_rng_state(rng)
    return logits.detach()


def test_adaptive_gamma_decay_reads_its_refresh_step_when_a_checkpoint_loads() -> None:
    trial = _trial("gamma_decay", "adaptive")
    (plugin,) = [p for p in trial.plugins if p.name == "gamma_decay"]
    state = trial.model.state_dict()
    state["gamma_decay_refreshed_at"] = torch.tensor(5)
    trial.model.load_state_dict(state)
    assert plugin._refreshed_at == 5  # type: ignore[attr-defined]
