"""Training throughput (images/s) and model FLOP utilization of normstudy's trial step against
a plain timm training loop, side by side in one run.

Rows per model, every one a full training step (forward, cross-entropy, backward, SGD with
momentum) on the same synthetic batch already on the device:

- ``timm, hand loop``: the reference; ``timm.create_model`` and a five-line loop, with the
  same precision (autocast), memory layout and compile mode as the trial rows;
- ``trial, no plugins``: ``_Trial._step`` (metrics kept on the device, no host sync);
- ``trial, BN as NormLayer``: every BN replaced by a default ``NormLayer`` (what any stage
  plugin does first): target ≤ 1.02× the reference;
- ``trial, 004 plugins``: input_norm, gamma_init, lr_divisor, affine_form (A1);
- ``trial, + <penalty>``: one penalty plugin each: target ≤ 1.10×.

FLOPs per step are counted once per model with ``torch.utils.flop_counter.FlopCounterMode``
on the reference step; utilization divides the achieved FLOP/s by the datasheet peak of the
GPU (``PEAK_TFLOPS``) for the step's precision. CPUs have no such table: no utilization there.
Configurations are timed in turns (round-robin) after a warm-up; medians over the repeats.

    python benchmarks/bench_throughput.py                 # CPU, small sizes
    python benchmarks/bench_throughput.py --device cuda   # ResNet-18/CIFAR b512, ResNet-50 b256
    python benchmarks/bench_throughput.py --device cuda --precision fp32 --compile default

Results go to ``benchmarks/results/throughput_<cpu|cuda>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from normstudy.models import to_norm_layers
from normstudy.spec import validate_data
from normstudy.trial import LocalReporter
from normstudy.trial._train import _Trial

NUM_CLASSES = 10
SIZES: dict[str, list[tuple[str, bool, int, int]]] = {
    # (model, CIFAR stem, image side, batch)
    "cuda": [("resnet18", True, 32, 512), ("resnet50", False, 224, 256)],
    "cpu": [("resnet18", True, 32, 32), ("resnet50", False, 64, 8)],
}
PLUGINS_004 = {
    "input_norm": {},
    "gamma_init": {"value": 0.5},
    "lr_divisor": {"gamma": 100.0},
    "affine_form": {"affine": "A1"},
}
PENALTIES = ["standardization", "embedding_l2", "gamma_decay"]
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    # Dense tensor-core peaks from NVIDIA's datasheets (fp32: TF32 off, CUDA cores).
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100 80GB HBM3": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2},
}
RESULTS = Path(__file__).parent / "results"

Step = Callable[[torch.Tensor, torch.Tensor], None]


def make_trial(
    model: str, stem: bool, side: int, batch: int, plugins: dict[str, Any], args: Any
) -> _Trial:
    spec = validate_data(
        {
            "name": "bench",
            "dataset": {"name": "synthetic", "num_samples": 64, "image_size": side},
            "model": {"name": model, "cifar_stem": stem},
            "train": {
                "batch_size": batch,
                "lr": 0.01,
                "threads": args.threads,
                "precision": args.precision,
                "compile": args.compile,
            },
            "resources": {"cpus": args.threads, "gpus": 1 if args.device == "cuda" else 0},
            "plugins": plugins,
        }
    )
    torch.manual_seed(0)
    trial = _Trial(spec.trial_base(), LocalReporter())
    trial.model.train()
    return trial


def trial_step(trial: _Trial) -> Step:
    sums: dict[str, Any] = {"loss": 0.0, "correct": 0.0, "n": 0}

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        trial._step(x, y, sums)

    return step


def reference_step(
    model: str, stem: bool, trial: _Trial
) -> tuple[Step, torch.nn.Module, torch.optim.Optimizer]:
    """timm's model in a plain loop, with the trial's precision, layout and compile mode."""
    fast = trial.fast
    kwargs: dict[str, Any] = {}
    net = timm.create_model(model, num_classes=NUM_CLASSES, **kwargs).to(fast.device)
    if stem:  # the same CIFAR stem as the trial's model (3x3 conv, no max-pool)
        net.conv1 = torch.nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)
        net.maxpool = torch.nn.Identity()
        net = net.to(fast.device)
    if fast.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    forward: Any = net
    if fast.compile != "none":
        forward = torch.compile(net, mode=fast.compile)
    total = torch.zeros((), device=fast.device)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        nonlocal total
        with fast.autocast():
            logits = forward(fast.layout(x))
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total = total + loss.detach()

    return step, net, opt


def flops_per_step(step: Step, x: torch.Tensor, y: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step(x, y)
    return int(counter.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_round_robin(
    steps: dict[str, Step], x: torch.Tensor, y: torch.Tensor, args: Any
) -> dict[str, list[float]]:
    """Seconds per step: ``args.block`` steps timed together (device synced at both ends),
    configurations in turns."""
    for step in steps.values():
        for _ in range(args.warmup):
            step(x, y)
    sync(x.device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            sync(x.device)
            start = time.perf_counter()
            for _ in range(args.block):
                step(x, y)
            sync(x.device)
            times[name].append((time.perf_counter() - start) / args.block)
    return times


def peak_tflops(device: torch.device, precision: str) -> tuple[str, float | None]:
    if device.type != "cuda":
        return cpu_model(), None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return name, peaks[precision]
    return name, None


def bench_model(model: str, stem: bool, side: int, batch: int, args: Any) -> tuple[list[str], str]:
    trials = {"trial, no plugins": make_trial(model, stem, side, batch, {}, args)}
    as_norm = make_trial(model, stem, side, batch, {}, args)
    to_norm_layers(as_norm.model)
    trials["trial, BN as NormLayer"] = as_norm
    trials["trial, 004 plugins"] = make_trial(model, stem, side, batch, PLUGINS_004, args)
    for penalty in args.penalties:
        trials[f"trial, + {penalty}"] = make_trial(model, stem, side, batch, {penalty: {}}, args)
    first = trials["trial, no plugins"]
    device, precision = first.device, first.fast.precision
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, side, side, generator=generator, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=generator, device=device)
    reference, _, _ = reference_step(model, stem, first)
    flops = flops_per_step(reference, x, y)
    steps = {"timm, hand loop (reference)": reference}
    steps.update({name: trial_step(t) for name, t in trials.items()})
    times = time_round_robin(steps, x, y, args)
    _, peak = peak_tflops(device, precision)
    base = statistics.median(times["timm, hand loop (reference)"])
    stem_text = ", CIFAR stem" if stem else ""
    lines = [
        f"### {model}{stem_text}, {side}x{side}, batch {batch}, {precision}, "
        f"channels_last {first.fast.channels_last}, compile {first.fast.compile}",
        "",
        f"{flops / 1e9:.2f} GFLOP per step (forward + backward, FlopCounterMode).",
        "",
        "| step | images/s | median ms | mean ± std ms | MFU | ratio to reference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        mfu = f"{flops / median / (peak * 1e12):.1%}" if peak else "n/a"
        ms = [v * 1e3 for v in values]
        lines.append(
            f"| {name} | {batch / median:.1f} | {median * 1e3:.1f} | "
            f"{statistics.mean(ms):.1f} ± {statistics.stdev(ms):.1f} | {mfu} | "
            f"{median / base:.3f} |"
        )
    return [*lines, ""], precision


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def header(args: Any, elapsed: float, load_before: float) -> list[str]:
    device = torch.device(args.device)
    machine, _ = peak_tflops(device, "fp32")
    where = (
        f"- GPU: {machine}; CPU: {cpu_model()}"
        if device.type == "cuda"
        else f"- CPU: {machine}; {os.cpu_count()} cores visible (shared with other jobs); "
        f"torch threads {args.threads}; 1-min load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after (compare ratios, not absolute times)"
    )
    command = (
        f"python benchmarks/bench_throughput.py --device {args.device} --precision "
        f"{args.precision} --compile {args.compile} --warmup {args.warmup} --repeats "
        f"{args.repeats} --block {args.block} --threads {args.threads}"
    )
    return [
        f"# Training throughput on {device.type.upper()}: normstudy's trial step vs a plain "
        "timm loop",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        where,
        f"- torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}",
        f"- {args.warmup} warm-up steps per row, then {args.repeats} rounds of {args.block} "
        "steps per row, rows in turns; synthetic N(0, 1) batch on the device; SGD momentum 0.9",
        "- MFU: FLOPs per step / median step time / datasheet peak of the GPU for the step's "
        "precision (none for CPUs)",
        "- Targets (reported, not asserted): BN as NormLayer ≤ 1.02×, penalties ≤ 1.10× the "
        "reference",
        f"- Total benchmark time: {elapsed:.0f} s",
        "",
        f"Command: `{command}`",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--compile", default="none", choices=["none", "default", "max-autotune"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--block", type=int, default=1, help="steps timed together")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--penalties", nargs="*", default=PENALTIES)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    sections: list[str] = []
    for model, stem, side, batch in SIZES[args.device]:
        lines, _ = bench_model(model, stem, side, batch, args)
        print("\n".join(lines), flush=True)
        sections += lines
    text = header(args, time.perf_counter() - started, load_before) + sections
    out = args.out or RESULTS / f"throughput_{args.device}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
