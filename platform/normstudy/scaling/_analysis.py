"""What a scaling study found: each point's optimum with a bootstrap interval, power-law fits of
the optimum against each numeric scale axis, and the transferred optimum's score.

Imports no torch; numpy here, scipy only for the fit.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from normstudy.report import MeanStd
from normstudy.scaling._specs import OWN, TRANSFER, config_name, searched_keys
from normstudy.spec._scale import scale_points

if TYPE_CHECKING:
    from normstudy.results import TrialScore
    from normstudy.spec import StudySpec

Mode = Literal["max", "min"]
RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Configuration:
    """A point's configuration (its searched values) and its scores, one per seed."""

    values: dict[str, Any]
    scores: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)


def configurations(scores: Sequence[TrialScore], keys: Sequence[str]) -> list[Configuration]:
    """Trials grouped by their searched values (the seed left out), in order of first
    appearance; a seed run twice counts once with its mean; trials without a score left out."""
    by_values: dict[str, tuple[dict[str, Any], dict[Any, list[float]]]] = {}
    for s in scores:
        if s.score is None or not math.isfinite(s.score):
            continue
        values = {k: s.config.get(k) for k in keys}
        entry = by_values.setdefault(repr(sorted(values.items())), (values, {}))
        seed = s.seed if s.seed is not None else ("trial", s.trial_id)
        entry[1].setdefault(seed, []).append(s.score)
    return [
        Configuration(values, [statistics.fmean(v) for v in seeds.values()])
        for values, seeds in by_values.values()
    ]


def best_configuration(configs: Sequence[Configuration], mode: Mode) -> Configuration | None:
    """The best mean over seeds; the first listed wins a tie."""
    sign = -1.0 if mode == "max" else 1.0
    return min(configs, key=lambda c: sign * c.mean, default=None)


def bootstrap_optimum(
    configs: Sequence[Configuration],
    mode: Mode,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Interval]:
    """A percentile interval (2.5 %, 97.5 %) of each numeric searched value of the optimum,
    over the optima of `bootstrap_draws`.

    Example:
        >>> configs = [Configuration({"lr": 0.1}, [0.9]), Configuration({"lr": 0.2}, [0.5])]
        >>> bootstrap_optimum(configs, "max")["lr"]
        Interval(low=0.1, high=0.2)
    """
    import numpy as np

    keys = [k for k in (configs[0].values if configs else {}) if _numeric(configs, k)]
    if not keys:
        return {}
    best = bootstrap_draws(configs, mode, resamples=resamples, seed=seed)
    tail = 100 * (1 - LEVEL) / 2
    out = {}
    for key in keys:
        column = np.array([float(configs[i].values[key]) for i in best])
        low, high = np.percentile(column, [tail, 100 - tail])
        out[key] = Interval(float(low), float(high))
    return out


def bootstrap_draws(
    configs: Sequence[Configuration], mode: Mode, *, resamples: int = RESAMPLES, seed: int = 0
) -> Any:
    """The index of the optimum in each of ``resamples`` resamples (a numpy array): each draws
    the configurations with replacement and, within each drawn one, its seeds with replacement;
    the best mean names the optimum (the first drawn wins a tie)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n, width = len(configs), max(len(c.scores) for c in configs)
    table = np.full((n, width), np.nan)
    for i, c in enumerate(configs):
        table[i, : len(c.scores)] = c.scores
    counts = np.array([len(c.scores) for c in configs])
    drawn = rng.integers(0, n, size=(resamples, n))
    # Within each drawn configuration, its seeds with replacement (columns past its count unused).
    seeds = np.floor(rng.random((resamples, n, width)) * counts[drawn][..., None]).astype(int)
    values = table[drawn[..., None], seeds]
    used = np.arange(width)[None, None, :] < counts[drawn][..., None]
    means = np.where(used, values, 0.0).sum(axis=2) / counts[drawn]
    pick = means.argmax(axis=1) if mode == "max" else means.argmin(axis=1)
    return drawn[np.arange(resamples), pick]


def _numeric(configs: Sequence[Configuration], key: str) -> bool:
    return all(is_number(c.values.get(key)) for c in configs)


@dataclass(frozen=True)
class PowerLaw:
    """``h*(s) = a · s^b``, least squares on (log s, log h*); ``b_interval`` from the t
    distribution with n − 2 degrees of freedom (None with two points: no residual left)."""

    a: float
    b: float
    b_interval: Interval | None
    r2: float
    points: int

    def __call__(self, s: float) -> float:
        return self.a * s**self.b


def power_law_fit(scales: Sequence[float], optima: Sequence[float]) -> PowerLaw:
    """Fits ``optima = a · scales^b``; needs two or more distinct positive scales and positive
    optima.

    Example:
        >>> fit = power_law_fit([1, 2, 4], [3.0, 6.0, 12.0])
        >>> round(fit.a, 9), round(fit.b, 9)
        (3.0, 1.0)
    """
    from scipy import stats

    from normstudy.report import fit_power_law

    if len(scales) != len(optima) or len(set(scales)) < 2:
        raise ValueError("a power-law fit needs two or more distinct scales")
    if min(*scales, *optima) <= 0:
        raise ValueError("a power-law fit needs positive scales and optima")
    fit = fit_power_law(scales, optima)  # least squares in log-log: a, b, R²
    x, y = [math.log(v) for v in scales], [math.log(v) for v in optima]
    n, interval = len(x), None
    if n > 2:  # b's interval: its standard error and the t distribution with n - 2 dof
        residuals = [v - math.log(fit.a) - fit.b * u for u, v in zip(x, y, strict=True)]
        mean_x = statistics.fmean(x)
        sxx = sum((u - mean_x) ** 2 for u in x)
        stderr = math.sqrt(sum(r * r for r in residuals) / (n - 2) / sxx)
        half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 2)) * stderr
        interval = Interval(fit.b - half, fit.b + half)
    return PowerLaw(fit.a, fit.b, interval, fit.r2, n)


@dataclass(frozen=True)
class PointOptimum:
    """One scale point's search: its optimum, its score and the optimum's intervals."""

    index: int
    study: str
    point: dict[str, Any]
    configurations: int
    score: float | None
    optimum: dict[str, Any]
    intervals: dict[str, Interval]
    seeds: MeanStd | None = None
    """The optimum's score over its seeds (mean ± std)."""
    variants: dict[str, MeanStd] = field(default_factory=dict)
    """Searched variants: each one's best configuration's score over its seeds."""


@dataclass(frozen=True)
class Fit:
    """The fit of one searched key's optimum against one scale axis (``law`` None: why not)."""

    key: str
    axis: str
    indices: list[int]
    """The scale points on this axis' line (the other axes at the smallest point's values)."""
    scales: list[float]
    optima: list[float]
    law: PowerLaw | None
    note: str = ""


@dataclass(frozen=True)
class TransferPoint:
    """At one scale point: its own optimum's and the smallest point's optimum's scores over
    seeds (at the smallest point the two are the same runs)."""

    index: int
    point: dict[str, Any]
    own: MeanStd | None
    transferred: MeanStd | None


@dataclass
class ScalingAnalysis:
    study: str
    metric: str
    mode: Mode
    axes: dict[str, list[Any]]
    keys: list[str]
    points: list[PointOptimum]
    fits: list[Fit] = field(default_factory=list)
    transfer: list[TransferPoint] = field(default_factory=list)


def analyze(
    spec: StudySpec,
    point_scores: Sequence[Sequence[TrialScore]],
    transfer_scores: Sequence[TrialScore] = (),
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> ScalingAnalysis:
    """The analysis of scaling study ``spec`` from each point's trial scores (smallest point
    first) and the transfer phase's (empty while it has not run)."""
    from normstudy.spec._scale import point_name

    metric, mode = spec.search.metrics[0], spec.search.modes[0]
    keys = searched_keys(spec)
    points = []
    for i, (point, scores) in enumerate(zip(scale_points(spec), point_scores, strict=True)):
        configs = configurations(scores, keys)
        best = best_configuration(configs, mode)
        points.append(
            PointOptimum(
                index=i,
                study=point_name(spec.name, i),
                point=point,
                configurations=len(configs),
                score=best.mean if best else None,
                optimum=best.values if best else {},
                intervals=bootstrap_optimum(configs, mode, resamples=resamples, seed=seed),
                seeds=MeanStd.of(best.scores) if best else None,
                variants=_variant_optima(configs, mode) if "variant" in keys else {},
            )
        )
    result = ScalingAnalysis(spec.name, metric, mode, dict(spec.scale), keys, points)
    result.fits = [fit for key in keys for fit in _fits(spec, points, key)]
    result.transfer = _transfer(spec, transfer_scores) if transfer_scores else []
    return result


def _fits(spec: StudySpec, points: list[PointOptimum], key: str) -> list[Fit]:
    """Per numeric axis: the points where the other axes keep the smallest point's values."""
    fits = []
    for axis, values in spec.scale.items():
        if not all(is_number(v) for v in values):
            continue
        line = [points[i] for i in line_of(spec.scale, points, axis) if points[i].optimum]
        scales = [float(p.point[axis]) for p in line]
        optima = [p.optimum.get(key) for p in line]
        if not all(is_number(h) for h in optima):
            continue  # a categorical key (a variant, a model name) has no power law
        numbers = [float(h) for h in optima]  # type: ignore[arg-type]
        note = ""
        if len(line) < 2:
            note = "fewer than two points with an optimum"
        elif min(*scales, *numbers) <= 0:
            note = "needs positive scales and optima"
        law = None if note else power_law_fit(scales, numbers)
        if law is not None and law.b_interval is None:
            note = "two points: no interval for b"
        fits.append(Fit(key, axis, [p.index for p in line], scales, numbers, law, note))
    return fits


def line_of(spec_axes: dict[str, list[Any]], points: list[PointOptimum], axis: str) -> list[int]:
    """The points along ``axis`` with the other axes at the smallest point's values."""
    reference = points[0].point if points else {}
    return [
        p.index for p in points if all(p.point[a] == reference[a] for a in spec_axes if a != axis)
    ]


def _variant_optima(configs: Sequence[Configuration], mode: Mode) -> dict[str, MeanStd]:
    out = {}
    for variant in dict.fromkeys(str(c.values.get("variant")) for c in configs):
        best = best_configuration(
            [c for c in configs if str(c.values.get("variant")) == variant], mode
        )
        if best is not None and (cell := MeanStd.of(best.scores)) is not None:
            out[variant] = cell
    return out


def _transfer(spec: StudySpec, scores: Sequence[TrialScore]) -> list[TransferPoint]:
    by_config: dict[str, dict[Any, list[float]]] = {}
    for s in scores:
        name = s.config.get("configuration")
        if s.score is None or not math.isfinite(s.score) or not isinstance(name, str):
            continue
        seed = s.seed if s.seed is not None else ("trial", s.trial_id)
        by_config.setdefault(name, {}).setdefault(seed, []).append(s.score)

    def cell(name: str) -> MeanStd | None:
        seeds = by_config.get(name, {})
        return MeanStd.of(statistics.fmean(v) for v in seeds.values())

    rows = []
    for i, point in enumerate(scale_points(spec)):
        own = cell(config_name(OWN, i))
        transferred = own if i == 0 else cell(config_name(TRANSFER, i))
        rows.append(TransferPoint(i, point, own, transferred))
    return rows
