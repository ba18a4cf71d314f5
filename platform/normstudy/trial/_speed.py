"""The training fast path's switches: precision (autocast, loss scaling), memory layout and
``torch.compile`` of the training forward, resolved once per trial for its device.

Numerics under bf16 / fp16: autocast runs convolutions and matmuls in 16 bits; ``NormLayer``
computes its statistics, normalization, perturbations and affine in fp32 (BN's fused kernel
accumulates in fp32 with fp32 γ/β and running statistics), and the trial hands loss terms fp32
embeddings and logits, so every statistic and penalty is an fp32 quantity.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn

    from normstudy.plugins import Plugin
    from normstudy.spec._model import ResourcesSpec, TrainSpec

log = logging.getLogger(__name__)

COMPILE_BACKEND_ENV = "NORMSTUDY_COMPILE_BACKEND"
"""Overrides torch.compile's backend (default inductor); tests use ``aot_eager``."""

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class FastPath:
    """What a trial's ``train.precision`` / ``channels_last`` / ``compile`` mean on its device."""

    device: torch.device
    precision: str
    channels_last: bool
    compile: str

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to ``dtype`` (a no-op context in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """Dynamic loss scaling, for fp16 only (bf16 has fp32's exponent range)."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def resolve(train: TrainSpec, device: torch.device) -> FastPath:
    """The fast path of ``train`` on ``device`` (``auto`` and ``None`` resolved)."""
    precision = train.precision
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if cuda_bf16 else "fp32"
    channels_last = device.type == "cuda" if train.channels_last is None else train.channels_last
    return FastPath(device, precision, channels_last, train.compile)


def memory_fraction(resources: ResourcesSpec) -> float | None:
    """The share of its GPU's memory a trial may allocate: ``resources.gpus`` when it is a
    fraction of one GPU (k trials packed on a GPU), else None (no cap)."""
    if resources.gpu_memory_cap and 0.0 < resources.gpus < 1.0:
        return resources.gpus
    return None


def cap_gpu_memory(resources: ResourcesSpec, device: torch.device) -> float | None:
    """Caps this process's CUDA caching allocator on ``device`` at `memory_fraction` of the
    GPU (an allocation beyond it raises out-of-memory in this trial, not in its neighbours).
    Set again for every trial a reused worker runs, so the cap always follows the trial's
    own fraction; a trial without a fraction lifts it. Returns the fraction set."""
    if device.type != "cuda":
        return None
    fraction = memory_fraction(resources)
    torch.cuda.set_per_process_memory_fraction(1.0 if fraction is None else fraction, device)
    return fraction


def compile_blockers(plugins: list[Plugin]) -> list[str]:
    """'plugin: reason' for every enabled plugin that declares it cannot be compiled."""
    return [f"{p.name}: {p.compile_blocker}" for p in plugins if p.compile_blocker]


Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class CompiledForward:
    """A compiled training forward that falls back to the eager one if compilation fails.

    Compilation happens at the first call; if it raises, the model's state, the global RNG
    and ``generator`` are restored to what they were before that call, the reason is logged,
    and this and every later call run ``eager``: a failed compile costs time, never a
    different result.
    """

    def __init__(
        self, eager: Forward, model: nn.Module, mode: str, generator: torch.Generator
    ) -> None:
        backend = os.environ.get(COMPILE_BACKEND_ENV) or "inductor"
        options: dict[str, Any] = {"backend": backend}
        if backend == "inductor":
            options["mode"] = mode
        self.eager, self.model, self.generator = eager, model, generator
        self.compiled: Forward | None = torch.compile(eager, **options)
        self.first = True
        self.fallback_reason: str | None = None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.compiled is None:
            return self.eager(x)
        if not self.first:
            return self.compiled(x)
        with _restorable(self.model, self.generator) as restore:
            try:
                out = self.compiled(x)
            except Exception as err:  # any failure inside dynamo/aot/inductor
                restore()
                self.compiled = None
                self.fallback_reason = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                log.warning("train.compile: falling back to eager: %s", self.fallback_reason)
                return self.eager(x)
        self.first = False
        return out


@contextlib.contextmanager
def _restorable(model: nn.Module, generator: torch.Generator) -> Iterator[Callable[[], None]]:
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    gen = generator.get_state()

    def restore() -> None:
        model.load_state_dict(state)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        generator.set_state(gen)

    yield restore


def training_forward(
    eager: Forward, fast: FastPath, model: nn.Module, plugins: list[Plugin], generator: Any
) -> Forward:
    """``eager``, compiled when ``fast.compile`` says so and no plugin forbids it."""
    if fast.compile == "none":
        return eager
    blockers = compile_blockers(plugins)
    if blockers:
        log.warning("train.compile ignored, training eagerly: %s", "; ".join(blockers))
        return eager
    return CompiledForward(eager, model, fast.compile, generator)
