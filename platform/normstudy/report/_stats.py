"""Aggregation over seeds and paired significance tests.

scipy is imported only when a test runs: `best` never needs it and it costs ~1 s at start.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from normstudy.results import TrialScore

Mode = Literal["max", "min"]
K = TypeVar("K", bound=Hashable)


def is_seed_key(key: str) -> bool:
    """Config keys that only carry the seed: they never tell configurations apart."""
    return key == "seed" or key.endswith(".seed")


def varying_keys(configs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Config keys (seed keys excluded) whose value differs between configs; absent = None."""
    configs = list(configs)
    keys = sorted({k for c in configs for k in c if not is_seed_key(k)})
    return [k for k in keys if len({_hashable(c.get(k)) for c in configs}) > 1]


def _hashable(value: Any) -> Hashable:
    # Keeps 1 and True (equal in Python) apart, and NaN equal to itself.
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    return (type(value) is bool, value)


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (ddof=1; None for a single value) of n values."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> MeanStd | None:
        """None when there are no values."""
        values = list(values)
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values))


@dataclass(frozen=True)
class ConfigGroup:
    """Trials sharing one configuration apart from the seed."""

    config: dict[str, Any]
    trials: tuple[TrialScore, ...]

    def samples(self, value: Callable[[TrialScore], float | None]) -> dict[Hashable, float]:
        """One value per seed, keyed by seed.

        A seed run twice (e.g. in the search and again in the confirm phase) counts once, with
        the mean of its runs; a trial without a seed is its own sample and is never paired.
        Missing and NaN values are left out.
        """
        by_seed: dict[Hashable, list[float]] = {}
        for trial in self.trials:
            v = value(trial)
            if v is None or math.isnan(v):
                continue
            key = trial.seed if trial.seed is not None else ("trial", trial.trial_id)
            by_seed.setdefault(key, []).append(v)
        return {k: statistics.fmean(vs) for k, vs in by_seed.items()}


def group_by_config(scores: Iterable[TrialScore]) -> list[ConfigGroup]:
    """Groups trials by config without seed keys, in order of first appearance."""
    groups: dict[tuple[Any, ...], list[TrialScore]] = {}
    configs: dict[tuple[Any, ...], dict[str, Any]] = {}
    for score in scores:
        config = {k: v for k, v in score.config.items() if not is_seed_key(k)}
        key = tuple(sorted((k, _hashable(v)) for k, v in config.items()))
        groups.setdefault(key, []).append(score)
        configs.setdefault(key, config)
    return [ConfigGroup(configs[key], tuple(trials)) for key, trials in groups.items()]


def find_baseline(groups: Sequence[ConfigGroup], baseline: Mapping[str, Any]) -> ConfigGroup:
    """The one group whose config has every baseline value (keys with or without ``config.``).

    A float matches exactly or as the tables show it (3 significant digits), so a value copied
    from a table (``0.805`` for 0.80455…) singles its configuration out.

    Raises:
        ValueError: No group, or more than one, matches (naming the configurations by the keys
            that tell them apart).
    """
    wanted = {k.removeprefix("config."): v for k, v in baseline.items()}
    for same in (_equal, _shown_equal):
        matches = [g for g in groups if all(same(g.config.get(k), v) for k, v in wanted.items())]
        if matches:
            break
    if len(matches) != 1:
        found = "no configuration" if not matches else f"{len(matches)} configurations"
        keys = varying_keys(g.config for g in groups) or sorted(wanted)
        from normstudy.report._format import config_value

        listed = (matches or groups)[:10]
        shown = "; ".join(
            ", ".join(f"{k}={config_value(g.config.get(k))}" for k in keys) for g in listed
        )
        more = "; …" if len(matches or groups) > 10 else ""
        raise ValueError(
            f"baseline {wanted} matches {found}; give the keys that single one out "
            f"(configurations: {shown}{more})"
        )
    return matches[0]


def _equal(a: Any, b: Any) -> bool:
    return _hashable(a) == _hashable(b)


def _shown_equal(a: Any, b: Any) -> bool:
    from normstudy.report._format import config_value

    if isinstance(a, float) and isinstance(b, int | float) and not isinstance(b, bool):
        return config_value(a) == config_value(float(b))
    return _equal(a, b)


MIN_PAIRS = 3
"""Fewest shared seeds a paired t-test is run on: with 2 pairs its one degree of freedom makes
any p meaningless (a single lucky seed decides it)."""


@dataclass(frozen=True)
class PairedTest:
    """A one-sided paired t-test over shared seeds, or why none was run.

    Attributes:
        p: The p-value; None when not tested (then ``reason`` says why).
        n: Shared seeds (pairs).
        reason: Why no test was run (``n=2 < 3``), else None.
    """

    p: float | None
    n: int
    reason: str | None = None


def paired_test(a: Mapping[Hashable, float], b: Mapping[Hashable, float], mode: Mode) -> PairedTest:
    """One-sided paired t-test that ``a`` beats ``b`` (greater for max, less for min).

    Args:
        a: Values keyed by seed (see `ConfigGroup.samples`).
        b: The reference's values keyed by seed.
        mode: Whether larger ("max") or smaller ("min") values are better.

    Returns:
        The test over the seeds both have; refused (p None, with the reason) below `MIN_PAIRS`.

    Example:
        >>> paired_test({1: 0.9, 2: 0.8}, {1: 0.7, 2: 0.6}, "max").reason
        'n=2 < 3'
    """
    seeds = sorted(k for k in a.keys() & b.keys() if isinstance(k, int))
    if len(seeds) < MIN_PAIRS:
        return PairedTest(None, len(seeds), f"n={len(seeds)} < {MIN_PAIRS}")
    from scipy import stats

    with warnings.catch_warnings():
        # Identical pairs (zero variance of the differences) give NaN: not significant.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(
            [a[s] for s in seeds],
            [b[s] for s in seeds],
            alternative="greater" if mode == "max" else "less",
        )
    return PairedTest(float(result.pvalue), len(seeds))


def paired_pvalue(
    a: Mapping[Hashable, float], b: Mapping[Hashable, float], mode: Mode
) -> float | None:
    """The p-value of `paired_test`, or None when it was refused (fewer than 3 pairs)."""
    return paired_test(a, b, mode).p


def holm(pvalues: Mapping[K, float]) -> dict[K, float]:
    """Holm's step-down adjusted p-values of one family of tests.

    The i-th smallest of m p-values is multiplied by (m − i + 1), then made monotone (never
    below the adjusted value before it) and capped at 1; rejecting where the adjusted p < α
    controls the family-wise error rate at α. NaN p-values (undefined tests) stay NaN and do
    not count in m.

    Example:
        >>> holm({"a": 0.01, "b": 0.04, "c": 0.03})
        {'a': 0.03, 'b': 0.06, 'c': 0.06}
    """
    ranked = sorted(((p, k) for k, p in pvalues.items() if not math.isnan(p)), key=lambda t: t[0])
    m, running = len(ranked), 0.0
    adjusted: dict[K, float] = {k: math.nan for k, p in pvalues.items() if math.isnan(p)}
    for i, (p, k) in enumerate(ranked):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[k] = running
    return {k: adjusted[k] for k in pvalues}
