"""One training run: a plain function of (config, reporter). Runs with or without Ray."""

from __future__ import annotations

import random
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from normstudy.plugins import PluginContext, StepOutputs, instantiate
from normstudy.spec import TrialConfig
from normstudy.trial import _evaluations as ev
from normstudy.trial._schedule import lr_factor
from normstudy.trial._speed import cap_gpu_memory, resolve, training_forward
from normstudy.trial._world import SOLO, World

if TYPE_CHECKING:
    from torch import nn

    from normstudy.plugins import Plugin
    from normstudy.trial._reporter import Reporter

DATA_INIT_SAMPLES = 128


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def base_lr(cfg: TrialConfig) -> float:
    """The study's lr, linearly scaled with the batch size when ``train.lr_scaling`` says so."""
    if cfg.train.lr_scaling == "linear":
        return cfg.train.lr * cfg.train.batch_size / cfg.train.lr_reference_batch
    return cfg.train.lr


def _build_optimizer(cfg: TrialConfig, model: nn.Module, plugins: list[Plugin]) -> Any:
    from normstudy.models import param_groups

    groups = param_groups(model, cfg.train.weight_decay)
    for plugin in plugins:
        groups = plugin.param_groups(groups, model)
    lr = base_lr(cfg)
    torch_groups = [
        {"params": g.params, "lr": lr * g.lr_scale, "weight_decay": g.weight_decay, "kind": g.kind}
        for g in groups
        if g.params
    ]
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(torch_groups, lr=lr)
    return torch.optim.SGD(
        torch_groups, lr=lr, momentum=cfg.train.momentum, nesterov=cfg.train.nesterov
    )


def _device(cfg: TrialConfig, world: World) -> torch.device:
    if not (cfg.resources.gpus > 0 and torch.cuda.is_available()):
        return torch.device("cpu")
    if world.size == 1:
        return torch.device("cuda")
    torch.cuda.set_device(world.rank)  # one GPU per worker; the node's GPUs are the trial's
    return torch.device("cuda", world.rank)


class _Parts(torch.nn.Module):
    """The training forward as a module's ``forward``, for DistributedDataParallel (which only
    synchronizes gradients of passes through its own ``forward``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ev.forward_parts(self.model, x)


class _Trial:
    """State of one run (or of one worker of a data-parallel run); ``run_epoch`` drives it."""

    def __init__(self, config: dict[str, Any], reporter: Reporter, world: World = SOLO) -> None:
        from normstudy.data import sample_batch
        from normstudy.models import build_model
        from normstudy.spec._model import AugmentSpec

        self.cfg = cfg = TrialConfig.model_validate(config)
        self.reporter, self.world = reporter, world
        torch.set_num_threads(cfg.train.threads or max(1, int(cfg.resources.cpus)))
        self.device = _device(cfg, world)
        cap_gpu_memory(cfg.resources, self.device)  # packed trials: no one starves the others
        self.fast = resolve(cfg.train, self.device)
        self.ctx = ctx = PluginContext(config=cfg, num_classes=0, in_chans=0, train_size=0)
        self.plugins = instantiate(cfg.plugins, ctx)
        for plugin in self.plugins:
            plugin.adjust_config(cfg)
        # airbench-style: the whole dataset sits on the training device once.
        self.splits = splits = cached_splits(cfg.dataset).to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        ctx.num_classes, ctx.in_chans = splits.num_classes, splits.in_chans
        ctx.train_size, ctx.splits, ctx.device = len(splits.train.y), splits, self.device
        ctx.generator = self.generator
        _seed_everything(cfg.seed)
        model = build_model(cfg, splits.num_classes, splits.in_chans)
        for plugin in self.plugins:
            model = plugin.patch_model(model)
        self.model = model.to(self.device)
        if self.fast.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        init_x, _ = sample_batch(splits.train, DATA_INIT_SAMPLES, self.generator, AugmentSpec())
        for plugin in self.plugins:
            plugin.data_init(self.model, self.fast.layout(init_x))
        self.optimizer = _build_optimizer(cfg, self.model, self.plugins)
        self.scaler = self.fast.grad_scaler()
        eager = (
            partial(ev.forward_parts, self.model)
            if world.size == 1
            else world.wrap(_Parts(self.model), self.device)
        )
        self.forward = training_forward(
            eager,
            self.fast,
            self.model,
            self.plugins,
            self.generator,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda epoch: lr_factor(cfg.train, epoch)
        )
        self.epoch = 0
        self.best: dict[str, float] = {}
        self.test: dict[str, float] = {}
        self.artifacts: dict[str, str] = {}
        # Every epoch's numeric metrics so far: a checkpoint then holds the trial's whole
        # record, from which `normstudy doctor --repair` rebuilds a lost result file.
        self.history: list[dict[str, float]] = []

    # -- checkpoint state -------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "step": self.ctx.step,
            "best": dict(self.best),
            "test": dict(self.test),
            "artifacts": dict(self.artifacts),
            "history": [dict(h) for h in self.history],
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.best, self.test = state["epoch"], state["best"], state["test"]
        self.ctx.step, self.artifacts = state["step"], state["artifacts"]
        self.history = list(state.get("history", []))  # absent from older checkpoints
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    # -- training ---------------------------------------------------------------------------
    def _extra(self, batch_size: int) -> torch.Tensor | None:
        from normstudy.data import sample_batch

        n = max((p.extra_samples(batch_size) for p in self.plugins), default=0)
        if n <= 0:
            return None
        # Every worker draws the extra samples of all and keeps its own: different samples per
        # device, and the shared generator stays the same on every worker.
        k = self.world.size
        x, _ = sample_batch(self.splits.train, n * k, self.generator, self.cfg.dataset.augment)
        return self.world.shard(x)

    def losses(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The step's forward: (task loss, logits of the B samples, plugins' loss terms), all
        fp32 whatever ``train.precision`` (the forward itself runs under its autocast)."""
        b = len(y)
        extra = self._extra(b)
        inputs = self.fast.layout(x if extra is None else torch.cat([x, extra]))
        with self.fast.autocast():
            embedding, logits = self.forward(inputs)
        # Extra samples only shape the normalization statistics: loss and accuracy use the B.
        embedding, logits = embedding[:b].float(), logits[:b].float()
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.train.label_smoothing)
        out = StepOutputs(inputs=x, targets=y, embedding=embedding, logits=logits, model=self.model)
        terms: dict[str, torch.Tensor] = {}
        for plugin in self.plugins:
            terms.update(plugin.loss_terms(out))
        return loss, logits, terms

    def _step(self, x: torch.Tensor, y: torch.Tensor, sums: dict[str, Any]) -> None:
        """One optimizer step. Metrics accumulate in ``sums`` as device tensors (float64 sums,
        as the host floats they replace; ``n`` an int): nothing here waits for the device,
        ``train_epoch`` reads them once."""
        b = len(y)
        loss, logits, terms = self.losses(x, y)
        total = loss
        for name, term in terms.items():
            total = total + term
            key = f"loss/{name}"
            sums[key] = sums.get(key, 0.0) + term.detach().double() * b
        self._watch_finite(total.detach(), sums)
        self.optimizer.zero_grad(set_to_none=True)
        self._backward_and_step(total)
        sums["loss"] = sums["loss"] + loss.detach().double() * b
        sums["correct"] = sums["correct"] + logits.detach().argmax(1).eq(y).sum()
        sums["n"] += b

    def _backward_and_step(self, total: torch.Tensor) -> None:
        model, scaler = self.model, self.scaler
        if scaler is None:
            total.backward()
        else:
            scaler.scale(total).backward()
            scaler.unscale_(self.optimizer)  # plugins' before_step sees the true gradients
        for plugin in self.plugins:
            plugin.before_step(model)
        if scaler is None:
            self.optimizer.step()
        else:
            scaler.step(self.optimizer)
            scaler.update()
        self.ctx.step += 1
        for plugin in self.plugins:
            plugin.after_step(model)

    def _watch_finite(self, total: torch.Tensor, sums: dict[str, Any]) -> None:
        """Remember, on the device, the first non-finite training loss of the epoch and its
        step (checked by ``train_epoch`` at its one sync)."""
        step = sums.get("steps", 0)
        bad = ~torch.isfinite(total)
        first = sums.get("bad_step")
        if first is None:
            sums["bad_step"] = torch.where(bad, step, -1)
            sums["bad_loss"] = total
            return
        take = bad & (first < 0)
        sums["bad_step"] = torch.where(take, step, first)
        sums["bad_loss"] = torch.where(take, total, sums["bad_loss"])

    def _on_device(self, value: Any) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float64).to(self.device)

    def train_epoch(self) -> dict[str, float]:
        from normstudy.data import train_batches

        cfg, world = self.cfg, self.world
        self.model.train()
        world.reseed(self.generator)
        sums: dict[str, Any] = {"loss": 0.0, "correct": 0, "n": 0, "steps": 0}
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
            # Every worker draws the same global batch (same generator) and trains on its slice.
            self._step(world.shard(x), world.shard(y), sums)
            sums["steps"] += 1
        return self._epoch_means(sums)

    def _epoch_means(self, sums: dict[str, Any]) -> dict[str, float]:
        """Per-sample means of the epoch's sums (over all workers): the epoch's one host-device
        sync (and, data-parallel, its one all-reduce of metrics)."""
        steps = sums.pop("steps")
        bad_step, bad_loss = sums.pop("bad_step", -1), sums.pop("bad_loss", 0.0)
        keys = list(sums)
        # Summed over the workers: the metric sums and how many workers met a bad loss.
        summed = [self._on_device(sums[k]) for k in keys] + [self._on_device(bad_step >= 0)]
        local = [self._on_device(bad_step), self._on_device(bad_loss)]
        values = torch.cat([self.world.sum(torch.stack(summed)), torch.stack(local)]).tolist()
        host = dict(zip([*keys, "bad_workers", "bad_step", "bad_loss"], values, strict=True))
        if host.pop("bad_workers") > 0:
            raise FloatingPointError(self._bad_loss_message(host, steps))
        n = max(host.pop("n"), 1)
        metrics = {"train/loss": host.pop("loss") / n, "train/acc": host.pop("correct") / n}
        metrics.update({k: v / n for k, v in host.items() if k not in ("bad_step", "bad_loss")})
        return metrics

    def _bad_loss_message(self, host: dict[str, float], steps: int) -> str:
        if host["bad_step"] < 0:  # another worker's loss (its own error says which)
            return f"training loss is not finite at epoch {self.epoch + 1} on another worker"
        return (
            f"training loss is {host['bad_loss']} at epoch {self.epoch + 1} "
            f"(step {int(host['bad_step']) + 1} of {steps})"
        )

    # -- evaluation -------------------------------------------------------------------------
    def _batches(self, which: str, limit: int | None = None) -> Any:
        from normstudy.data import Split, eval_batches

        split = getattr(self.splits, which)
        if limit is not None:
            split = Split(split.x[:limit], split.y[:limit])
        batches = eval_batches(split, self.cfg.train.eval_batch_size, device=self.device)
        return ((self.fast.layout(x), y) for x, y in batches)

    def evaluate(self, which: str) -> dict[str, float]:
        pred = ev.predict(self.model, self._batches(which))
        return {f"{which}/{k}": v for k, v in ev.summarize(pred).items()}

    def diagnostics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        gamma_sq, _ = ev.gamma_statistics(self.model)
        if gamma_sq is not None:
            out["gamma/sq_mean"] = gamma_sq
        k = self.cfg.evaluation.evalmode_train_samples
        if k:
            pred = ev.predict(self.model, self._batches("train", limit=k))
            out["train/loss_evalmode"] = ev.summarize(pred)["loss"]
        for plugin in self.plugins:
            out.update(plugin.epoch_metrics(self.model))
        return out

    def test_evaluations(self) -> dict[str, float]:
        """Everything measured on the test split, for a new best-validation model."""
        e, model = self.cfg.evaluation, self.model
        pred = ev.predict(model, self._batches("test"))
        out = {f"test/{k}": v for k, v in ev.summarize(pred).items()}
        with torch.random.fork_rng(devices=[]):  # reproducible, training RNG untouched
            torch.manual_seed(0)
            if e.dropout50:
                dropped = ev.predict(model, self._batches("test"), embedding_dropout=0.5)
                out["test/dropout50_drop"] = out["test/acc"] - ev.summarize(dropped)["acc"]
        if e.coverage:
            risk, out["test/aurc"] = ev.error_coverage(pred["probs"], pred["targets"])
            self.artifacts["error_coverage.csv"] = ev.coverage_curve_csv(risk)
        for sigma in e.noise_sigmas:
            out[f"test/acc_noise@{sigma:g}"] = ev.accuracy_under_noise(
                model, self._batches("test"), sigma
            )
        for eps in e.fgsm_eps:
            out[f"test/acc_fgsm@{eps:g}"] = ev.accuracy_under_fgsm(
                model, self._batches("test"), eps
            )
        for plugin in self.plugins:
            out.update(plugin.test_metrics(model))
        return out

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
        self.world.average_buffers(self.model)
        if not self.world.is_main:  # parameters are the same everywhere: worker 0 evaluates
            self.epoch += 1
            return metrics
        with self.fast.autocast():
            metrics.update(self.evaluate("val"))
            metrics.update(self.diagnostics())
        self.epoch += 1
        if self._update_best(metrics, objectives) or not self.test:
            # Test metrics are those of the best-validation epoch so far, so a trial stopped
            # early by the scheduler still has them.
            with self.fast.autocast():
                self.test = self.test_evaluations()
        metrics.update(self.test)
        metrics.update({"epoch": self.epoch, "lr": lr, "epoch_time_s": time.perf_counter() - start})
        if self.epoch == self.cfg.train.epochs:
            metrics["artifacts"] = self.final_artifacts()
        return metrics

    def final_artifacts(self) -> dict[str, str]:
        files = {**self.artifacts, "gamma_sq_per_layer.json": ev.gamma_artifact(self.model)}
        for plugin in self.plugins:
            files.update(plugin.artifacts(self.model))
        return files

    def _update_best(self, metrics: dict[str, Any], objectives: list[tuple[str, str]]) -> bool:
        improved_first = False
        for i, (metric, mode) in enumerate(objectives):
            value = metrics.get(metric)
            if value is None or not np.isfinite(value):
                continue
            old = self.best.get(metric)
            if old is None or (value > old if mode == "max" else value < old):
                self.best[metric] = float(value)
                improved_first = improved_first or i == 0
        metrics.update({f"best/{m}": v for m, v in self.best.items()})
        return improved_first


_SPLITS: dict[str, Any] = {}


def cached_splits(spec: Any) -> Any:
    """`load_splits` once per dataset description in this process: a worker that Tune reuses
    for the next trial (``reuse_actors``) keeps the dataset in memory. Trials only read it."""
    from normstudy.data import load_splits

    key = spec.model_dump_json()
    if key not in _SPLITS:
        _SPLITS.clear()  # one dataset at a time: a study has one, and they can be large
        _SPLITS[key] = load_splits(spec)
    return _SPLITS[key]


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of an epoch's metrics (not its artifact texts)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


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
        The last epoch's metrics (with ``artifacts``: file name -> text, on the last epoch).
    """
    objectives = objectives or [("val/acc", "max")]
    if TrialConfig.model_validate(config).train.workers > 1:
        from normstudy.trial._parallel import run_data_parallel

        return run_data_parallel(config, reporter, objectives)
    start = time.perf_counter()
    return run_worker(config, reporter, objectives, SOLO, reporter.restore(), start)


def run_worker(
    config: dict[str, Any],
    reporter: Reporter,
    objectives: list[tuple[str, str]],
    world: World,
    restored: dict[str, Any] | None,
    start: float,
) -> dict[str, Any]:
    """The epochs of one process of the trial; worker 0 (or the only one) reports them."""
    trial = _Trial(config, reporter, world)
    if restored is not None:
        trial.load_state(restored)
    # Data, model, plugins and checkpoint before the first epoch: what a study pays per trial
    # beyond training (a reused worker keeps imports and the dataset: see `cached_splits`).
    setup_s = time.perf_counter() - start
    metrics: dict[str, Any] = {}
    while trial.epoch < trial.cfg.train.epochs:
        metrics = trial.run_epoch(objectives)
        if world.is_main:
            metrics["setup_s"] = setup_s
            trial.history.append(numeric_metrics(metrics))
            reporter.report(metrics, trial.state())
    return metrics
