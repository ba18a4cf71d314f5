"""Packed trials: aggregate training throughput of k trials sharing one GPU (k = 1, 2, 4).

A study with ``resources.gpus: 1/k`` lets Ray place k trials on each GPU; each trial caps its
CUDA allocator at its share (``resources.gpu_memory_cap``). This benchmark runs exactly what
those k trial processes run: k processes started together, each building a normstudy trial
(``_Trial``, the test-size ``test_resnet`` by default, with ``resources.gpus = 1/k``) and
timing ``--steps`` training steps after a warm-up, all released at once by a barrier.
Aggregate throughput = total images / wall time of the slowest process; the ratio is against
k = 1 in the same run.

With ``--mps`` the CUDA Multi-Process Service daemon (``nvidia-cuda-mps-control -d``) runs
during the packed rows: kernels of the k processes then share the GPU concurrently instead of
time-slicing. A node of a cluster enables it the same way, in its setup commands (see the
README's "Performance" section).

    python benchmarks/bench_packing.py --device cuda [--mps] [--model test_resnet]
    python benchmarks/bench_packing.py                 # CPU dry run (small; not the target)

Results go to ``benchmarks/results/packing_<cpu|cuda>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(Path(__file__).parent))


def _worker(rank: int, k: int, args: Any, barrier: Any, results: Any) -> None:
    import torch

    from bench_throughput import NUM_CLASSES, make_trial, sync, trial_step

    share = argparse.Namespace(**{**vars(args), "threads": max(1, args.threads // k)})
    trial = make_trial(args.model, args.cifar_stem, args.side, args.batch, {}, share)
    if args.device == "cuda":  # what a trial with resources.gpus = 1/k sets
        from normstudy.spec._model import ResourcesSpec
        from normstudy.trial._speed import cap_gpu_memory

        cap_gpu_memory(ResourcesSpec(gpus=1.0 / k if k > 1 else 1.0), trial.device)
    generator = torch.Generator(device=trial.device).manual_seed(rank)
    x = torch.randn(args.batch, 3, args.side, args.side, generator=generator, device=trial.device)
    y = torch.randint(0, NUM_CLASSES, (args.batch,), generator=generator, device=trial.device)
    step = trial_step(trial)
    for _ in range(args.warmup):
        step(x, y)
    sync(trial.device)
    barrier.wait()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(x, y)
    sync(trial.device)
    results.put((rank, time.perf_counter() - start, args.steps * args.batch))


def run_packed(k: int, args: Any) -> tuple[float, float]:
    """(aggregate images/s, wall seconds) of k processes training at once."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, k, args, barrier, results)) for r in range(k)]
    for p in procs:
        p.start()
    try:
        done = [results.get(timeout=args.timeout) for _ in range(k)]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    wall = max(seconds for _, seconds, _ in done)
    return sum(images for _, _, images in done) / wall, wall


class Mps:
    """The CUDA MPS control daemon for the benchmark's lifetime (when asked and installed)."""

    def __init__(self, wanted: bool) -> None:
        self.binary = shutil.which("nvidia-cuda-mps-control") if wanted else None
        self.note = "off" if not wanted else "asked, but nvidia-cuda-mps-control is not installed"

    def __enter__(self) -> Mps:
        if self.binary:
            started = subprocess.run([self.binary, "-d"], capture_output=True, text=True)
            self.note = "on" if started.returncode == 0 else f"failed: {started.stderr.strip()}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.binary and self.note == "on":
            subprocess.run([self.binary], input="quit\n", text=True, capture_output=True)


def machine(device: str) -> str:
    from bench_throughput import cpu_model

    if device == "cuda":
        import torch

        return f"GPU: {torch.cuda.get_device_name(0)}; CPU: {cpu_model()}"
    return f"CPU: {cpu_model()}; {os.cpu_count()} cores visible (shared with other jobs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default="test_resnet")
    parser.add_argument("--cifar-stem", action="store_true")
    parser.add_argument("--side", type=int, default=None, help="image side (32 GPU, 16 CPU)")
    parser.add_argument("--batch", type=int, default=None, help="per trial (256 GPU, 32 CPU)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (200 GPU, 20 CPU)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--compile", default="none", choices=["none", "default", "max-autotune"])
    parser.add_argument("--mps", action="store_true", help="run the CUDA MPS daemon meanwhile")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.side = args.side or (32 if gpu else 16)
    args.batch = args.batch or (256 if gpu else 32)
    args.steps = args.steps or (200 if gpu else 20)
    if gpu:
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device here")
    started = time.perf_counter()
    rows = []
    with Mps(args.mps) as mps:
        for k in args.ks:
            throughput, wall = run_packed(k, args)
            rows.append((k, throughput, wall))
            print(f"k={k}: {throughput:.0f} images/s aggregate ({wall:.1f} s)", flush=True)
    base = rows[0][1]
    command = " ".join(["python benchmarks/bench_packing.py", *sys.argv[1:]])
    lines = [
        f"# Packed trials on {args.device.upper()}: aggregate throughput of k trials per device",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- {machine(args.device)}; Python {platform.python_version()}",
        f"- Each trial: {args.model}, {args.side}x{args.side}, batch {args.batch}, "
        f"{args.steps} timed steps after {args.warmup} warm-up steps; precision {args.precision}, "
        f"compile {args.compile}; memory cap 1/k of the GPU (CUDA only); MPS {mps.note}",
        "- Target (issue 10, on a GPU): k = 4 test-size trials ≥ 1.5× the aggregate of k = 1",
        f"- Total benchmark time: {time.perf_counter() - started:.0f} s",
        "",
        f"Command: `{command}`",
        "",
        "| k trials | aggregate images/s | wall s (slowest) | ratio to k = 1 |",
        "|---:|---:|---:|---:|",
        *(f"| {k} | {t:.0f} | {w:.1f} | {t / base:.2f} |" for k, t, w in rows),
        "",
    ]
    if not gpu:
        lines += [
            "On a CPU the k processes split the same cores (each gets threads/k), so this row is "
            "a dry run of the script, not a measurement of GPU packing.",
            "",
        ]
    out = args.out or RESULTS / f"packing_{args.device}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
