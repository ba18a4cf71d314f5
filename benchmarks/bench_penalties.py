"""Step time of the penalty plugins, relative to the same step without them, side by side.

One training step is what a trial does: forward (embedding and logits in one pass), cross-entropy
plus the plugins' loss terms, backward, the plugins' gradient hooks, an SGD step. Every
configuration is built from the same seed; after a warm-up the configurations are timed in
turns (round-robin over repeats), so slow drifts of a shared machine hit all of them alike.

    python benchmarks/bench_penalties.py            # writes benchmarks/results/penalties.md
    python benchmarks/bench_penalties.py --repeats 30 --threads 2

Batch sizes per model are in ``MODELS``.
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

import timm
import torch
import torch.nn.functional as F

from normstudy.models import build_model, param_groups, to_norm_layers
from normstudy.plugins import PluginContext, StepOutputs, instantiate, plugin_registry
from normstudy.spec._model import ModelSpec, TrialConfig
from normstudy.trial._evaluations import forward_parts

PENALTIES = ["embedding_l2", "functional_l2", "standardization", "gamma_decay"]
MODELS = {"test_resnet": 32, "resnet18": 8}
"""Model -> batch size (small for resnet18 so the whole run stays within ~3 minutes on 1 thread)."""
NUM_CLASSES = 10
RESULTS = Path(__file__).parent / "results" / "penalties.md"


class Setup:
    """A patched model, its optimizer and plugins: one configuration to time."""

    def __init__(self, model: str, plugins: dict[str, Any], norm_layers: bool = False) -> None:
        config = TrialConfig(model=ModelSpec(name=model, cifar_stem=True), plugins=plugins)
        self.plugins = instantiate(config.plugins, PluginContext(config, NUM_CLASSES, 3, 50_000))
        torch.manual_seed(0)
        net = build_model(config, NUM_CLASSES, 3)
        for plugin in self.plugins:
            net = plugin.patch_model(net)
        if norm_layers:  # what standardization does to a BN net, without its observers
            to_norm_layers(net)
        groups = param_groups(net, 5e-4)
        for plugin in self.plugins:
            groups = plugin.param_groups(groups, net)
        self.model = net.train()
        self.optimizer = torch.optim.SGD(
            [{"params": g.params, "lr": 0.01 * g.lr_scale, "weight_decay": g.weight_decay}
             for g in groups],
            lr=0.01,
            momentum=0.9,
        )  # fmt: skip

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        embedding, logits = forward_parts(self.model, x)
        total = F.cross_entropy(logits, y)
        out = StepOutputs(inputs=x, targets=y, embedding=embedding, logits=logits, model=self.model)
        for plugin in self.plugins:
            for term in plugin.loss_terms(out).values():
                total = total + term
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        for plugin in self.plugins:
            plugin.before_step(self.model)
        self.optimizer.step()
        for plugin in self.plugins:
            plugin.after_step(self.model)


def time_side_by_side(
    setups: dict[str, Setup], x: torch.Tensor, y: torch.Tensor, warmup: int, repeats: int
) -> dict[str, list[float]]:
    for setup in setups.values():
        for _ in range(warmup):
            setup.step(x, y)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(repeats):
        for name, setup in setups.items():
            start = time.perf_counter()
            setup.step(x, y)
            times[name].append(time.perf_counter() - start)
    return times


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(model: str, times: dict[str, list[float]], batch: int) -> list[str]:
    """Markdown rows: median, mean ± std (ms) and the median relative to ``none``."""
    base = statistics.median(times["none"])
    lines = [
        f"### {model} (batch {batch}, 3x32x32)",
        "",
        "| penalty | median ms | mean ± std ms | median / none |",
        "|---|---:|---:|---:|",
    ]
    for name, values in times.items():
        ms = [v * 1e3 for v in values]
        lines.append(
            f"| {name} | {statistics.median(ms):.1f} | {statistics.mean(ms):.1f} ± "
            f"{statistics.stdev(ms):.1f} | {statistics.median(values) / base:.3f} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    registered = plugin_registry()
    penalties = [p for p in PENALTIES if p in registered]
    skipped = [p for p in PENALTIES if p not in registered]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    sections = []
    for model, batch in MODELS.items():
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, 32, 32, generator=generator)
        y = torch.randint(0, NUM_CLASSES, (batch,), generator=generator)
        setups = {"none": Setup(model, {}), "(BN as NormLayer)": Setup(model, {}, True)}
        setups.update({p: Setup(model, {p: {}}) for p in penalties})
        times = time_side_by_side(setups, x, y, args.warmup, args.repeats)
        sections += table(model, times, batch)
        print("\n".join(table(model, times, batch)))
    elapsed = time.perf_counter() - started

    header = [
        "# Step time with each penalty plugin, relative to the step without",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu_model()}; {os.cpu_count()} cores visible (shared with other jobs)",
        f"- torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}",
        f"- torch threads: {torch.get_num_threads()}; 1-min load average {load_before:.2f} "
        f"before, {os.getloadavg()[0]:.2f} after (other jobs share the cores: compare ratios, "
        "not absolute times)",
        f"- Step: forward (embedding + logits) + cross-entropy + loss terms + backward + SGD "
        f"step (momentum 0.9); {args.warmup} warm-up steps per configuration, then "
        f"{args.repeats} timed steps each, configurations in turns (round-robin)",
        "- Plugins with default options; models with the CIFAR stem, synthetic N(0, 1) input",
        "- `(BN as NormLayer)`: no plugin, every BN replaced by normstudy's NormLayer (what "
        "standardization does before attaching its observers), to separate the two costs",
        f"- Not registered, skipped: {', '.join(skipped) or 'none'}",
        f"- Total benchmark time: {elapsed:.0f} s",
        "",
        "Command: `python benchmarks/bench_penalties.py "
        f"--warmup {args.warmup} --repeats {args.repeats} "
        f"--threads {args.threads}`",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header + sections))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
