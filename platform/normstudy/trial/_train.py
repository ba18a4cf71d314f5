"""One training run: a plain function of (config, reporter). Runs with or without Ray."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from normstudy.plugins import PluginContext, StepOutputs, instantiate
from normstudy.spec import TrialConfig
from normstudy.trial._metrics import evaluate
from normstudy.trial._schedule import lr_factor

if TYPE_CHECKING:
    from torch import nn

    from normstudy.plugins import Plugin
    from normstudy.trial._reporter import Reporter


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_optimizer(cfg: TrialConfig, model: nn.Module, plugins: list[Plugin]) -> Any:
    from normstudy.models import param_groups

    groups = param_groups(model, cfg.train.weight_decay)
    for plugin in plugins:
        groups = plugin.param_groups(groups, model)
    torch_groups = [
        {
            "params": g.params,
            "lr": cfg.train.lr * g.lr_scale,
            "weight_decay": g.weight_decay,
            "kind": g.kind,
        }
        for g in groups
        if g.params
    ]
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(torch_groups, lr=cfg.train.lr)
    return torch.optim.SGD(
        torch_groups, lr=cfg.train.lr, momentum=cfg.train.momentum, nesterov=cfg.train.nesterov
    )


def _forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Embedding (timm pre-logits, after timm's head dropout) and logits, in one pass."""
    timm_model: Any = model  # timm's forward_features/forward_head/get_classifier
    embedding = timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
    return embedding, timm_model.get_classifier()(embedding)


class _Trial:
    """State of one run; ``run`` drives it epoch by epoch."""

    def __init__(self, config: dict[str, Any], reporter: Reporter) -> None:
        from normstudy.data import load_splits
        from normstudy.models import build_model

        self.cfg = cfg = TrialConfig.model_validate(config)
        self.reporter = reporter
        threads = cfg.train.threads or max(1, int(cfg.resources.cpus))
        torch.set_num_threads(threads)
        use_cuda = cfg.resources.gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_cuda else "cpu")
        ctx = PluginContext(config=cfg, num_classes=0, in_chans=0, train_size=0)
        self.plugins = instantiate(cfg.plugins, ctx)
        for plugin in self.plugins:
            plugin.adjust_config(cfg)
        # airbench-style: the whole dataset sits on the training device once.
        self.splits = splits = load_splits(cfg.dataset).to(self.device)
        ctx.num_classes, ctx.in_chans = splits.num_classes, splits.in_chans
        ctx.train_size = len(splits.train.y)
        _seed_everything(cfg.seed)
        model = build_model(cfg, splits.num_classes, splits.in_chans)
        for plugin in self.plugins:
            model = plugin.patch_model(model)
        self.model = model.to(self.device)
        self.optimizer = _build_optimizer(cfg, self.model, self.plugins)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda epoch: lr_factor(cfg.train, epoch)
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        self.best: dict[str, float] = {}
        self.test: dict[str, float] = {}

    # -- checkpoint state -------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "best": dict(self.best),
            "test": dict(self.test),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.best, self.test = state["epoch"], state["best"], state["test"]

    # -- one epoch --------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        from normstudy.data import train_batches

        cfg, model = self.cfg, self.model
        model.train()
        sums: dict[str, float] = {"loss": 0.0, "correct": 0.0, "n": 0.0}
        batches = train_batches(
            self.splits.train,
            cfg.train.batch_size,
            self.generator,
            cfg.dataset.augment,
            device=self.device,
        )
        for step, (x, y) in enumerate(batches):
            if cfg.train.max_steps_per_epoch and step >= cfg.train.max_steps_per_epoch:
                break
            embedding, logits = _forward(model, x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.train.label_smoothing)
            out = StepOutputs(inputs=x, targets=y, embedding=embedding, logits=logits, model=model)
            total = loss
            for plugin in self.plugins:
                for name, term in plugin.loss_terms(out).items():
                    total = total + term
                    sums[f"loss/{name}"] = sums.get(f"loss/{name}", 0.0) + term.item() * len(y)
            if not torch.isfinite(total):
                raise FloatingPointError(
                    f"training loss is {total.item()} at epoch {self.epoch + 1}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            for plugin in self.plugins:
                plugin.after_step(model)
            sums["loss"] += loss.item() * len(y)
            sums["correct"] += float(logits.argmax(1).eq(y).sum())
            sums["n"] += len(y)
        n = max(sums.pop("n"), 1.0)
        out_metrics = {"train/loss": sums.pop("loss") / n, "train/acc": sums.pop("correct") / n}
        out_metrics.update({k: v / n for k, v in sums.items()})
        return out_metrics

    def evaluate(self, which: str) -> dict[str, float]:
        from normstudy.data import eval_batches

        split = getattr(self.splits, which)
        batches = eval_batches(split, self.cfg.train.eval_batch_size, device=self.device)
        return {f"{which}/{k}": v for k, v in evaluate(self.model, batches).items()}

    def _lr(self) -> float:
        for group in self.optimizer.param_groups:
            if group.get("kind") == "weight":
                return float(group["lr"])
        return float(self.optimizer.param_groups[0]["lr"])

    def run_epoch(self, objectives: list[tuple[str, str]]) -> dict[str, Any]:
        start = time.perf_counter()
        lr = self._lr()
        metrics: dict[str, Any] = self.train_epoch()
        self.scheduler.step()
        metrics.update(self.evaluate("val"))
        for plugin in self.plugins:
            metrics.update(plugin.epoch_metrics(self.model))
        self.epoch += 1
        improved = self._update_best(metrics, objectives)
        if improved or not self.test:
            # Test metrics are those of the best-validation epoch so far, so a trial stopped
            # early by the scheduler still has them.
            self.test = self.evaluate("test")
        metrics.update(self.test)
        metrics.update({"epoch": self.epoch, "lr": lr, "epoch_time_s": time.perf_counter() - start})
        return metrics

    def _update_best(self, metrics: dict[str, Any], objectives: list[tuple[str, str]]) -> bool:
        improved_first = False
        for i, (metric, mode) in enumerate(objectives):
            value = metrics.get(metric)
            if value is None or not np.isfinite(value):
                continue
            old = self.best.get(metric)
            better = old is None or (value > old if mode == "max" else value < old)
            if better:
                self.best[metric] = float(value)
                improved_first = improved_first or i == 0
        metrics.update({f"best/{m}": v for m, v in self.best.items()})
        return improved_first


def run_trial(
    config: dict[str, Any],
    reporter: Reporter,
    objectives: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Train ``config`` for its epochs, reporting metrics (and a checkpoint) after each epoch.

    Args:
        config: a ``TrialConfig`` as a plain dict.
        reporter: receives each epoch's metrics and checkpoint state; may hold a state to resume.
        objectives: (metric, mode) pairs tracked as ``best/<metric>``; the first selects the
            epoch whose test metrics are reported (default: best ``val/acc``).

    Returns:
        The last epoch's metrics.
    """
    objectives = objectives or [("val/acc", "max")]
    trial = _Trial(config, reporter)
    restored = reporter.restore()
    if restored is not None:
        trial.load_state(restored)
    metrics: dict[str, Any] = {}
    while trial.epoch < trial.cfg.train.epochs:
        metrics = trial.run_epoch(objectives)
        reporter.report(metrics, trial.state())
    return metrics
