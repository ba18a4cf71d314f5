"""Step time of a larger normalization batch, and the overhead of projection, weight norm and
analytic norm, measured side by side in one run.

Each configuration is a real trial (``normstudy.trial._train._Trial``) on CIFAR-size synthetic
data (32x32, 3 channels, 10 classes, ResNet CIFAR stem); one timed unit is ``_Trial._step``:
drawing the extra samples, forward, loss, backward, SGD step and every plugin hook. The
configurations of a model are timed round-robin (one step each per round) so drifts of a shared
machine hit all of them alike; warm-up rounds first, then ``--repeats`` timed rounds.

    python benchmarks/bench_norm_batch.py            # writes benchmarks/results/norm_batch.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from normstudy.spec import validate_data
from normstudy.trial import LocalReporter
from normstudy.trial._train import _Trial

RESULTS = Path(__file__).resolve().parent / "results" / "norm_batch.md"
# (model, training batch B): B is kept small for resnet18 so the whole run fits in minutes.
MODELS = [("test_resnet", 16), ("resnet18", 8)]


def configs(batch: int) -> dict[str, dict[str, Any]]:
    """Label -> plugins. The baseline (plain BN, N = B) comes first."""
    return {
        "BN, N = B": {},
        "N = 4B (extra samples)": {"norm_batch": {"size": 4 * batch}},
        "projection": {"projection": {}},
        "weight_norm": {"weight_norm": {}},
        "analytic_norm": {"analytic_norm": {}},
    }


def make_trial(model: str, batch: int, plugins: dict[str, Any], threads: int) -> _Trial:
    spec = validate_data(
        {
            "name": "bench-norm-batch",
            "dataset": {"name": "synthetic", "num_samples": 512, "image_size": 32},
            "model": {"name": model, "cifar_stem": True},
            "train": {"batch_size": batch, "lr": 0.01, "threads": threads, "epochs": 1},
            "plugins": plugins,
        }
    )
    trial = _Trial(spec.trial_base(), LocalReporter())
    trial.model.train()
    return trial


def time_model(model: str, batch: int, warmup: int, repeats: int, threads: int) -> list[dict]:
    trials = {label: make_trial(model, batch, p, threads) for label, p in configs(batch).items()}
    times: dict[str, list[float]] = {label: [] for label in trials}
    for round_ in range(warmup + repeats):
        for label, trial in trials.items():
            x, y = trial.splits.train.x[:batch], trial.splits.train.y[:batch]
            sums = {"loss": 0.0, "correct": 0.0, "n": 0.0}
            start = time.perf_counter()
            trial._step(x, y, sums)
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[label].append(elapsed * 1e3)
    base = statistics.median(times["BN, N = B"])
    return [
        {
            "model": model,
            "batch": batch,
            "config": label,
            "median": statistics.median(t),
            "mean": statistics.fmean(t),
            "std": statistics.stdev(t),
            "ratio": statistics.median(t) / base,
        }
        for label, t in times.items()
    ]


def machine() -> list[str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import timm

    return [
        f"- CPU: {cpu}; {os.cpu_count()} logical cores visible, "
        f"{len(os.sched_getaffinity(0))} usable (shared with other jobs during the run)",
        f"- torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), "
        f"timm {timm.__version__}, Python {platform.python_version()}, no GPU used",
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
    ]


def render(rows: list[dict], header: list[str], args: argparse.Namespace, wall: float) -> str:
    lines = [
        "# Normalization batch and 000's normalizations: step time",
        "",
        "`python benchmarks/bench_norm_batch.py` (one run, "
        f"{wall:.0f} s in all). One step = `_Trial._step` (extra samples, forward, loss, "
        "backward, SGD step, plugin hooks) on 32x32 synthetic data, CIFAR stem; "
        f"{args.warmup} warm-up rounds, then {args.repeats} timed rounds, configurations of a "
        "model interleaved round-robin. Ratio: median step time / median of plain BN (N = B) "
        "of the same model, measured in the same rounds.",
        "",
        *header,
        "",
        "| model | B | configuration | median ms | mean ± std ms | ratio to BN |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['config']} | {r['median']:.1f} | "
            f"{r['mean']:.1f} ± {r['std']:.1f} | {r['ratio']:.2f} |"
        )
    lines += [
        "",
        "Reading it: N = 4B forwards and backwards 4B samples per step (the loss is on B), so its "
        "step costs roughly what a 4x larger training batch does. Projection adds a row-norm "
        "rescale of every conv feeding a BN after each step; weight_norm recomputes w = v/‖v‖ "
        "per forward and skips BN's statistics; analytic_norm propagates per-channel moments "
        "through the network once per forward (small matrix-vector products) instead of "
        "reducing over the batch.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    start = time.perf_counter()
    rows: list[dict] = []
    for model, batch in MODELS:
        rows += time_model(model, batch, args.warmup, args.repeats, args.threads)
    text = render(rows, machine(), args, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
