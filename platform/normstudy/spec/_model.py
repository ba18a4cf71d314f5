"""The typed study description. Pure pydantic: no torch, no ray (``validate`` must start fast)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from normstudy.spec._distributions import Distribution
from normstudy.spec._types import (
    NAME_RE,
    BatchSize,
    EpochCount,
    Epochs,
    JsonLike,
    PathText,
    SampleCount,
    Seed,
    StepCount,
    TrialCount,
    Workers,
    check_finite_tree,
)

Mode = Literal["max", "min"]
FIXED_PER_STUDY = "train.data_parallel is fixed per study: it sets the Ray resources of every trial"
ScaleValue = bool | int | float | str
"""A value of a scale axis: a batch size, a model name, a fraction."""


class Strict(BaseModel):
    """Base for every spec section: unknown keys are errors, assignments are validated, floats
    are finite (inf and nan are refused with the field named)."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        use_attribute_docstrings=True,
        allow_inf_nan=False,
    )


class AugmentSpec(Strict):
    """Training-time augmentation, applied on batches of tensors."""

    crop_padding: Annotated[int, Field(ge=0, le=512)] = 0
    """Pad-crop: pad each side by this many pixels (reflect), then crop back at random (0: off)."""
    flip: bool = False
    """Random horizontal flip with probability 1/2."""


DATASET_NAMES = (
    "digits",
    "cifar10",
    "cifar100",
    "svhn",
    "fashion_mnist",
    "imagefolder",
    "synthetic",
)
_NEEDS_ROOT = ("cifar10", "cifar100", "svhn", "fashion_mnist")


class DatasetSpec(Strict):
    name: Literal[
        "digits", "cifar10", "cifar100", "svhn", "fashion_mnist", "imagefolder", "synthetic"
    ] = "digits"
    root: PathText | None = None
    """Folder holding a torchvision dataset (cifar10, cifar100, svhn, fashion_mnist)."""
    download: bool = False
    """Download into ``root`` when missing (never done unless asked)."""
    path: PathText | None = None
    """imagefolder: a folder with one sub-folder per class (or train/ and test/ inside)."""
    image_size: Annotated[int, Field(ge=4, le=1024)] | None = None
    """Resize images to this side length (default: the dataset's own; digits: 16)."""
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    """Share of each class of the training set held out for validation (deterministic)."""
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    """For datasets without a test split (digits, imagefolder without test/, synthetic)."""
    split_seed: Seed = 0
    """Seed of the class-wise splits; fixed per study so every trial sees the same split."""
    normalize: bool = True
    """Standardize inputs with the training set's channel mean/std (off under input_norm)."""
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    num_samples: Annotated[int, Field(ge=10, le=1_000_000)] = 2000
    """synthetic: number of samples."""
    num_classes: Annotated[int, Field(ge=2, le=100_000)] = 10
    """synthetic: number of classes."""
    channels: Annotated[int, Field(ge=1, le=4)] = 3
    """synthetic: number of channels."""

    @model_validator(mode="after")
    def _needs_location(self) -> DatasetSpec:
        if self.name in _NEEDS_ROOT and not self.root:
            raise ValueError(
                f"dataset.root is required for {self.name!r}: the folder that holds (or, with "
                "dataset.download: true, will hold) the torchvision files"
            )
        if self.name == "imagefolder" and not self.path:
            raise ValueError(
                "dataset.path is required for 'imagefolder': a folder of class folders"
            )
        return self


class ModelSpec(Strict):
    name: str = "resnet18"
    """A timm model name (``timm.list_models()``)."""
    cifar_stem: bool = False
    """Replace the stem with a 3x3 stride-1 conv and no max-pool (small images)."""
    drop_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """timm's dropout before the classifier, applied inside it: Emb(x), what embedding
    penalties and diagnostics see, is taken before it."""
    kwargs: Annotated[dict[str, JsonLike], Field(max_length=100)] = Field(default_factory=dict)
    """Further keyword arguments for ``timm.create_model``."""

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from normstudy.spec._timm_names import check_model_name

        check_model_name(name)
        return name


class ScheduleSpec(Strict):
    name: Literal["cosine", "step", "exponential", "constant"] = "cosine"
    warmup_epochs: EpochCount = 0
    """Linear warmup from lr/100 over this many epochs, then the schedule."""
    step_size: Epochs = 30
    """step: epochs between decays."""
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    """step/exponential: the decay factor (exponential: per epoch)."""
    min_lr_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """cosine: final lr as a fraction of the initial lr."""


class DataParallelSpec(Strict):
    """One trial trained data-parallel over ``workers`` processes of one node (torch
    DistributedDataParallel): one GPU each on CUDA, CPU processes on CPU."""

    workers: Annotated[int, Field(ge=1, le=1024)] = 1
    """Processes of the trial, all on one node. ``train.batch_size`` stays the global batch:
    each worker trains on batch_size / workers samples of it (workers must divide it)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend; auto: nccl on CUDA, gloo on CPU."""
    timeout_s: Annotated[float, Field(gt=0.0, le=86_400.0)] = 1800.0
    """Seconds a worker waits for the others at a collective (workers 1.. wait at the next
    epoch's first one while worker 0 evaluates)."""


class TrainSpec(Strict):
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: Annotated[float, Field(gt=0.0)] = 0.1
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    nesterov: bool = False
    weight_decay: Annotated[float, Field(ge=0.0)] = 5e-4
    """Applied to conv/linear weights only: norm parameters and biases get none."""
    batch_size: BatchSize = 128
    eval_batch_size: BatchSize = 512
    epochs: Epochs = 10
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    lr_scaling: Literal["none", "linear"] = "none"
    """linear: lr = lr · batch_size / lr_reference_batch, so batch-size scaling studies
    compare like with like (001)."""
    lr_reference_batch: BatchSize = 128
    max_steps_per_epoch: StepCount | None = None
    """Cap the optimizer steps per epoch (smoke tests, benchmarks); None: the whole split."""
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    """torch CPU threads per trial (default: the trial's CPU resources)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Arithmetic of the training and evaluation forward passes. bf16 / fp16: autocast (convs
    and matmuls in 16 bits) with every normalization statistic, γ/β, the loss and the plugins'
    penalties in fp32; fp16 adds dynamic loss scaling. auto: bf16 on a CUDA GPU that supports
    it (about 2× the fp32 speed on recent GPUs), fp32 on CPU (exact; CPU autocast is slower)."""
    channels_last: bool | None = None
    """NHWC memory layout for the model and its batches (faster convolutions on GPU tensor
    cores). None: on with CUDA, off on CPU."""
    compile: Literal["none", "default", "max-autotune"] = "none"
    """torch.compile the training forward (its backward with it) in this mode. It costs
    seconds to minutes of compilation per trial, so turn it on for long trials on a GPU (paper
    runs: tens of epochs), not for short searches. A plugin that cannot be compiled makes the
    trial train eagerly, with the reason logged."""
    data_parallel: DataParallelSpec | None = None
    """Train each trial data-parallel over several workers of one node (None: one process).
    Normalization statistics are per worker (B / workers samples) unless
    ``plugins.norm_batch.sync`` synchronizes them over the global batch."""

    @property
    def workers(self) -> int:
        """Processes one trial trains in (1 without ``data_parallel``)."""
        return self.data_parallel.workers if self.data_parallel is not None else 1

    @property
    def device_batch(self) -> int:
        """Training samples per worker and step: ``batch_size / workers``."""
        return self.batch_size // self.workers

    @model_validator(mode="after")
    def _divisible_batch(self) -> TrainSpec:
        if self.batch_size % self.workers:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be divisible by "
                f"train.data_parallel.workers ({self.workers}): batch_size is the global batch, "
                "split evenly over the workers"
            )
        return self


Strengths = Annotated[list[Annotated[float, Field(gt=0.0)]], Field(max_length=100)]
"""Noise σ or attack ε values of the robustness evaluations (input scale)."""


class EvaluationSpec(Strict):
    """Evaluations beyond loss/accuracy/ECE; test-time ones run on each new best model."""

    evalmode_train_samples: SampleCount = 512
    """train/loss_evalmode on this many fixed training samples (0: off)."""
    dropout50: bool = True
    """test/dropout50_drop: accuracy lost with 50% dropout on the embedding at test time."""
    coverage: bool = True
    """test/aurc and the error-coverage curve (reject by predictive entropy)."""
    noise_sigmas: Strengths = Field(default_factory=list)
    """test/acc_noise@σ: accuracy under Gaussian input noise of these σ (input scale)."""
    fgsm_eps: Strengths = Field(default_factory=list)
    """test/acc_fgsm@ε: accuracy under an FGSM attack of these strengths (input scale)."""


class SchedulerSpec(Strict):
    name: Literal["fifo", "asha"] = "fifo"
    grace_period: Epochs = 1
    """asha: epochs every trial gets before it can be stopped."""
    reduction_factor: Annotated[float, Field(gt=1.0)] = 3.0
    """asha: keep 1/reduction_factor of the trials at each rung."""


class SearchSpec(Strict):
    sampler: Literal["tpe", "random", "grid", "cmaes", "nsga2"] = "tpe"
    num_samples: TrialCount = 8
    """Trials to run (grid: at most the grid's size; default for grid is the whole grid)."""
    metric: str | Annotated[list[str], Field(min_length=1, max_length=16)] = "val/acc"
    """Reported metric(s) to optimize; a trial's score is its best value over its epochs."""
    mode: Mode | Annotated[list[Mode], Field(max_length=16)] = "max"
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    max_concurrent: Workers = 2
    seed: Seed = 0
    """Seed of the sampler (the search is reproducible given the same results)."""
    n_startup_trials: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    """tpe/cmaes: random trials before the model kicks in (default: Optuna's)."""
    space: Annotated[dict[str, Distribution], Field(max_length=100)] = Field(default_factory=dict)
    """Dotted config keys (``train.lr``, ``plugins.gamma_init.value``) -> distributions."""
    storage: str | None = None
    """Optuna RDB URL (e.g. ``postgresql://optuna@head:5432/optuna``); default: sqlite in the
    study folder (for s3:// and gs:// homes, a working copy synced to it after each trial).
    Passwords never go in the URL: use PGPASSWORD or ~/.pgpass on the driver."""

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.split("+")[0] not in ("sqlite", "postgresql", "mysql"):
            raise ValueError(
                f"search.storage {value!r} is not an RDB URL: use sqlite:///PATH, "
                "postgresql://USER@HOST/DB or mysql://USER@HOST/DB"
            )
        if ":" in rest.split("@", 1)[0] and "@" in rest:
            raise ValueError(
                "search.storage holds a password: leave it out of the URL (it would be stored "
                "in study.yaml) and give it through PGPASSWORD / ~/.pgpass (or MySQL's option "
                "files) on the driver"
            )
        return value

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def modes(self) -> list[Mode]:
        if isinstance(self.mode, str):
            return [self.mode] * len(self.metrics)
        return list(self.mode)

    @model_validator(mode="after")
    def _objectives(self) -> SearchSpec:
        if len(self.modes) != len(self.metrics):
            raise ValueError(
                f"search.mode lists {len(self.modes)} modes for {len(self.metrics)} metrics: "
                "give one mode per metric (or a single mode for all)"
            )
        multi = len(self.metrics) > 1
        if multi and self.scheduler.name == "asha":
            raise ValueError(
                "search.scheduler 'asha' stops trials by one metric; with several search.metric "
                "use scheduler 'fifo'"
            )
        if multi and self.sampler in ("cmaes",):
            raise ValueError(
                "search.sampler 'cmaes' is single-objective; use 'nsga2', 'tpe' or 'random' for "
                "several metrics"
            )
        if self.sampler == "grid":
            bad = [k for k, d in self.space.items() if d.grid_values() is None]
            if bad:
                raise ValueError(
                    f"search.sampler 'grid' needs explicit values; search.space[{bad[0]!r}] is "
                    "continuous: give it type 'grid' (values: [...]) or 'categorical' (choices)"
                )
        return self


class ResourcesSpec(Strict):
    """What one trial, or one worker of a data-parallel trial, asks Ray for."""

    cpus: Annotated[float, Field(gt=0.0, le=4096.0)] = 1.0
    """Per worker under ``train.data_parallel`` (a trial asks for workers × cpus)."""
    gpus: Annotated[float, Field(ge=0.0, le=1024.0)] = 0.0
    """Fractions share a GPU between trials (e.g. 0.25: four trials per GPU). Per worker under
    ``train.data_parallel``, where it is 0 or 1 (one GPU per worker)."""
    gpu_memory_cap: bool = True
    """With a fraction of a GPU, cap the trial's CUDA allocator at that fraction of the GPU's
    memory (``torch.cuda.set_per_process_memory_fraction``), so one trial cannot starve the
    others on the GPU: a trial that needs more fails with an out-of-memory error instead."""


def check_data_parallel(train: TrainSpec, resources: ResourcesSpec) -> None:
    """Under ``train.data_parallel`` each worker has a whole GPU or none."""
    if train.workers > 1 and resources.gpus not in (0.0, 1.0):
        raise ValueError(
            f"resources.gpus ({resources.gpus:g}) must be 0 or 1 with train.data_parallel: it "
            f"is per worker, each of the {train.workers} workers drives one whole GPU"
        )


def trial_resources(train: TrainSpec, resources: ResourcesSpec) -> dict[str, float]:
    """One trial's Ray request, ``{"cpus": ..., "gpus": ...}``: ``resources`` per worker."""
    return {"cpus": resources.cpus * train.workers, "gpus": resources.gpus * train.workers}


class FailureSpec(Strict):
    max_retries: Annotated[int, Field(ge=-1, le=1000)] = 1
    """Retries of a failed trial, from its last checkpoint (-1: forever)."""


class SeedsSpec(Strict):
    """Seeds derived from the MD5 digest of k = 1..count (the reporting protocol of 004)."""

    scheme: Literal["md5"] = "md5"
    count: Annotated[int, Field(ge=1, le=1000)] = 15


class StudySpec(Strict):
    name: str
    """Names the study's folder and MLflow experiment: lower-case letters, digits, '-', '_'."""
    description: str = ""
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Plugin name -> options; validated against each plugin's typed options."""
    variants: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    """Named plugin sets added on top of ``plugins`` (a variant's options win), compared by
    searching ``search.space.variant`` (e.g. BN vs. PN + γ decay vs. BN + dropout)."""
    configs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Named configurations (dotted key -> value, e.g. ``train.lr: 0.05``), run by searching
    ``search.space.configuration``: how `normstudy confirm` runs a search's best
    configurations and a baseline over many seeds."""
    confirms: str | None = None
    """The search study whose best configurations this study re-runs (set by `confirm`)."""
    scale: Annotated[
        dict[str, Annotated[list[ScaleValue], Field(min_length=2, max_length=64)]],
        Field(max_length=8),
    ] = Field(default_factory=dict)
    """Scale axes: dotted config keys (``train.batch_size``, ``model.name``) -> their values,
    smallest first. Each point of their cartesian product runs its own search (same space and
    budget, study ``<name>-s<i>``); then ``<name>-transfer`` runs the smallest point's optimum
    and each point's own optimum at every point over the seeds."""
    scale_of: str | None = None
    """The scaling study this study is a part of (a scale point or its transfer phase)."""
    scale_point: dict[str, ScaleValue] = Field(default_factory=dict)
    """The scale values this study runs at (a scale point of ``scale_of``)."""
    search: SearchSpec = Field(default_factory=SearchSpec)
    seeds: Annotated[list[Seed], Field(max_length=1000)] | SeedsSpec = Field(
        default_factory=lambda: [0]
    )
    """Training seeds of each configuration in this phase."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)

    @field_validator("name")
    @classmethod
    def _slug(cls, name: str) -> str:
        if not NAME_RE.fullmatch(name):
            raise ValueError(
                "name must be 1 to 100 lower-case letters, digits, '-' or '_', starting with a "
                f"letter or digit (it names folders and the MLflow experiment); got {name!r}"
            )
        return name

    @field_validator("plugins", mode="before")
    @classmethod
    def _plugins(cls, value: Any) -> Any:
        from normstudy.plugins import validate_plugin_options

        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("plugins must be a mapping of plugin name -> options")
        check_finite_tree(value, "plugins")
        return validate_plugin_options(value)

    @field_validator("variants", mode="before")
    @classmethod
    def _variants(cls, value: Any) -> Any:
        from normstudy.plugins import validate_plugin_options

        if not value:
            return {}
        if not isinstance(value, dict):
            raise ValueError("variants must map a variant name to a set of plugins")
        check_finite_tree(value, "variants")
        out = {}
        for name, plugins in value.items():
            if not NAME_RE.fullmatch(str(name)):
                raise ValueError(
                    f"variants.{name}: use 1 to 100 lower-case letters, digits, '-' or '_'"
                )
            try:
                out[str(name)] = validate_plugin_options(plugins or {})
            except ValueError as err:
                raise ValueError(f"variants.{name}: {err}") from None
        return out

    @field_validator("configs", mode="before")
    @classmethod
    def _configs(cls, value: Any) -> Any:
        if not value:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise ValueError("configs must map a name to a set of 'dotted.key: value' pairs")
        check_finite_tree(value, "configs")
        for name, values in value.items():
            if not NAME_RE.fullmatch(str(name)):
                raise ValueError(
                    f"configs.{name}: use 1 to 100 lower-case letters, digits, '-' or '_'"
                )
            for key in values:
                if not isinstance(key, str) or key in ("configuration", "seed"):
                    raise ValueError(f"configs.{name}: {key!r} cannot be set by a configuration")
                if key.startswith("train.data_parallel"):
                    raise ValueError(f"configs.{name}: {key!r}: {FIXED_PER_STUDY}")
        return value

    def variant_plugins(self, variant: str | None) -> dict[str, dict[str, Any]]:
        """The plugins a trial of ``variant`` runs with (``plugins`` + the variant's)."""
        return merge_plugins(self.plugins, self.variants.get(variant or "", {}))

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int] | SeedsSpec) -> list[int] | SeedsSpec:
        if isinstance(value, list):
            if not value:
                raise ValueError("seeds must list at least one seed")
            if len(set(value)) != len(value):
                raise ValueError("seeds must not repeat a seed")
        return value

    def seed_list(self) -> list[int]:
        from normstudy.seeds import md5_seeds

        return md5_seeds(self.seeds.count) if isinstance(self.seeds, SeedsSpec) else self.seeds

    @model_validator(mode="after")
    def _cross_checks(self) -> StudySpec:
        from normstudy.plugins import check_combination
        from normstudy.spec._metrics import check_search_metrics
        from normstudy.spec._space import check_space

        for variant in self.variants or {"": {}}:
            try:
                check_combination(
                    self.model_copy(update={"plugins": self.variant_plugins(variant)})
                )
            except ValueError as err:
                raise ValueError(f"variants.{variant}: {err}" if variant else str(err)) from None
        check_space(self)
        sched = self.search.scheduler
        if sched.name == "asha" and sched.grace_period > self.train.epochs:
            raise ValueError(
                f"search.scheduler.grace_period ({sched.grace_period}) exceeds train.epochs "
                f"({self.train.epochs}): ASHA cannot stop a trial before its grace period"
            )
        if len(self.seed_list()) > 1 and self.search.sampler != "grid":
            if len(self.search.metrics) > 1:
                raise ValueError(
                    f"seeds lists {len(self.seed_list())} seeds with several objectives: seed "
                    "replication tells the searcher one mean per configuration for one metric; "
                    "list one seed, or use search.sampler 'grid' (the seeds become an axis)"
                )
            if "seed" in self.search.space:
                raise ValueError(
                    "search.space.seed: with several seeds every configuration runs once per "
                    "seed; the seed is not a hyperparameter to sample"
                )
        check_search_metrics(self)
        check_data_parallel(self.train, self.resources)
        if self.scale or self.scale_of:
            from normstudy.spec._scale import check_scale

            check_scale(self)
        return self

    def trial_resources(self) -> dict[str, float]:
        """What one trial asks Ray for: ``resources`` times ``train.data_parallel.workers``."""
        return trial_resources(self.train, self.resources)

    def with_absolute_paths(self) -> StudySpec:
        """A copy whose data paths are absolute: Tune runs each trial in its own directory."""
        from pathlib import Path

        updates = {
            key: str(Path(value).expanduser().resolve())
            for key in ("root", "path")
            if (value := getattr(self.dataset, key))
        }
        return self.model_copy(update={"dataset": self.dataset.model_copy(update=updates)})

    def trial_base(self) -> dict[str, Any]:
        """The plain-dict config every trial starts from (before the sampled values)."""
        return {
            "study": self.name,
            "dataset": self.dataset.model_dump(mode="json"),
            "model": self.model.model_dump(mode="json"),
            "train": self.train.model_dump(mode="json"),
            "evaluation": self.evaluation.model_dump(mode="json"),
            "plugins": self.plugins,
            "variant": None,
            "configuration": None,
            "seed": self.seed_list()[0],
            "resources": self.resources.model_dump(mode="json"),
            # resolve_config takes them out and applies the trial's `configuration`
            **({"configurations": self.configs} if self.configs else {}),
        }


def merge_plugins(
    base: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """``base`` plugins plus ``extra`` ones; options of a plugin in both are merged (extra wins)."""
    merged = {name: dict(options) for name, options in base.items()}
    for name, options in extra.items():
        merged[name] = {**merged.get(name, {}), **options}
    return merged


class TrialConfig(Strict):
    """One trial's resolved configuration: what the trial function receives (as a dict)."""

    study: str = "adhoc"
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)
    variant: str | None = None
    """The study variant (named plugin set) this trial runs, if the study has variants."""
    configuration: str | None = None
    """The named configuration (``configs``) this trial runs, if the study names any."""
    seed: Seed = 0
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @field_validator("plugins", mode="before")
    @classmethod
    def _plugins(cls, value: Any) -> Any:
        from normstudy.plugins import validate_plugin_options

        check_finite_tree(value or {}, "plugins")
        return validate_plugin_options(value or {})

    @model_validator(mode="after")
    def _data_parallel(self) -> TrialConfig:
        check_data_parallel(self.train, self.resources)
        return self
