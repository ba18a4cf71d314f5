"""The metrics a trial reports, known without torch, so that ``search.metric`` can be checked.

This mirrors ``normstudy.trial`` (``_Trial.run_epoch``): the training and evaluation summaries,
the diagnostics, the test-time evaluations that ``evaluation:`` switches on, and each plugin's
loss terms (``loss/<term>``), ``epoch_metrics`` and ``test_metrics``. Plugin modules stay as
they are (their hooks import torch); their metrics are declared in ``PLUGIN_METRICS`` below,
and ``tests/test_spec.py`` runs every registered plugin through a real short trial and compares
what it reports with this catalogue, so the two cannot drift apart.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from normstudy.spec._model import StudySpec

SUMMARY = ("loss", "acc", "ece", "emb_norm2", "out_norm2")
"""``trial._evaluations.summarize``: reported for val/ and test/ (train/ has loss and acc)."""
TIMINGS = ("epoch_time_s", "setup_s")
"""Wall-clock metrics: the only ones that differ between two runs of the same trial (a fresh or
reused worker, a resumed run). ``setup_s``: data, model, plugins and checkpoint before the
first epoch of this process's run of the trial."""
PLAIN = ("lr", *TIMINGS)
"""Metrics without a group (``search._callbacks.metrics_of`` keeps these and ``group/name``)."""


def _bayesian(options: Mapping[str, Any]) -> set[str]:
    mc = {f"{split}/{m}" for split in ("val", "test") for m in ("nll_mc", "acc_mc")}
    return {"loss/kl", "bayes/sigma_mean"} | (mc if options["mc_samples"] else set())


PLUGIN_METRICS: dict[str, Callable[[Mapping[str, Any]], set[str]]] = {
    "bayesian_scale": _bayesian,
    "embedding_l2": lambda o: {"loss/embedding_l2"},
    "functional_l2": lambda o: {"loss/functional_l2"},
    "standardization": lambda o: {"loss/standardization"},
    "gamma_decay": lambda o: {"loss/gamma_decay", "gamma_decay/zeta_mean"},
    "norm_batch": lambda o: {"norm_batch/effective"},
}
"""Plugin name -> its options -> the metrics it adds; a plugin not listed adds none."""


def metric_catalogue(config: Mapping[str, Any]) -> frozenset[str]:
    """The metrics a trial of ``config`` (a trial config as a plain dict, as the trial function
    receives it) reports every epoch; its ``best/<metric>`` is what a search optimizes."""
    evaluation, plugins = config["evaluation"], config["plugins"]
    names = {f"{split}/{m}" for split in ("val", "test") for m in SUMMARY}
    names |= {"train/loss", "train/acc", *PLAIN}
    if "remove_norm" not in plugins or "embedding_bn" in plugins:
        names.add("gamma/sq_mean")  # mean γ² over BN layers: none left after remove_norm
    if evaluation["evalmode_train_samples"]:
        names.add("train/loss_evalmode")
    if evaluation["dropout50"]:
        names.add("test/dropout50_drop")
    if evaluation["coverage"]:
        names.add("test/aurc")
    names |= {f"test/acc_noise@{sigma:g}" for sigma in evaluation["noise_sigmas"]}
    names |= {f"test/acc_fgsm@{eps:g}" for eps in evaluation["fgsm_eps"]}
    for name, options in plugins.items():
        names |= PLUGIN_METRICS.get(name, lambda o: set())(options)
    return frozenset(names)


def _trial_configs(spec: StudySpec) -> dict[str, dict[str, Any]]:
    """Trial configs that together show every metric set a trial of ``spec`` may have: each
    variant, and each candidate value of searched ``evaluation``/``plugins`` options."""
    from normstudy.spec._space import resolve_config

    base = spec.trial_base()
    variants: list[str | None] = list(spec.variants) or [None]
    configs = {}
    for variant in variants:
        params: dict[str, Any] = {} if variant is None else {"variant": variant}
        configs[variant or "the study"] = resolve_config(base, params, spec.variants)
        for key, dist in spec.search.space.items():
            if key.split(".")[0] in ("evaluation", "plugins"):
                for value in dist.candidates():
                    where = f"{key}={value!r}" + (f" in variant {variant}" if variant else "")
                    configs[where] = resolve_config(base, {**params, key: value}, spec.variants)
    return configs


def study_metrics(spec: StudySpec) -> frozenset[str]:
    """Every metric some trial of ``spec`` may report: each variant's and each searched
    option's catalogue, and ``best/<metric>`` of every search metric."""
    catalogues = [metric_catalogue(c) for c in _trial_configs(spec).values()]
    return frozenset().union(*catalogues, (f"best/{m}" for m in spec.search.metrics))


def check_search_metrics(spec: StudySpec) -> None:
    """Every ``search.metric`` is reported by every trial of the study, or a ValueError names
    it with the metrics that are (and the closest one)."""
    catalogues = {where: metric_catalogue(c) for where, c in _trial_configs(spec).items()}
    always = frozenset.intersection(*catalogues.values())
    for i, metric in enumerate(spec.search.metrics):
        if metric in always:
            continue
        where = "search.metric" if isinstance(spec.search.metric, str) else f"search.metric[{i}]"
        lacking = [w for w, names in catalogues.items() if metric not in names]
        if len(lacking) < len(catalogues):
            raise ValueError(
                f"{where}: {metric!r} is not reported by every trial of this study (not by "
                f"{', '.join(lacking[:4])}); optimize a metric every trial reports"
            )
        close = difflib.get_close_matches(metric, sorted(always), n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ValueError(
            f"{where}: {metric!r} is not a metric a trial of this study reports; {hint}"
            f"reported: {', '.join(sorted(always))}"
        )
