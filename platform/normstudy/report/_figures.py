"""Figure kinds, registered by name, and writing them as PNG and PDF through the storage layer.

A kind is a function of a `FigureInput` that yields (stem, title, figure or the reason it was
skipped). ``cheap`` kinds take well under a second on a study of hundreds of trials: `run`
draws those at its end; `report --figures` and `plot` draw every kind.

Example:
    >>> @register_figure("my-kind")  # doctest: +SKIP
    ... def my_kind(data: FigureInput) -> Iterator[tuple[str, str, Figure | str]]:
    ...     yield "my-kind", "what it shows", learning_curves(data.table, ["val/acc"], ...)
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from normstudy.report._page import FigureFile
from normstudy.report._plots import Axis, epoch_metrics, learning_curves, score_vs_params
from normstudy.report._stats import Mode

if TYPE_CHECKING:
    import optuna
    import pyarrow as pa
    from matplotlib.figure import Figure

    from normstudy.home import StudyPaths
    from normstudy.spec import StudySpec
    from normstudy.storage import Location

FIGURE_FORMATS = ("png", "pdf")
DPI = 150
BRIEF_CURVES = ("train/loss", "val/loss", "val/acc")
"""Learning curves of a brief set (besides the objectives): text rendering is most of the cost
of a figure, so `run` draws a few panels, not one per diagnostic."""

Drawn = tuple[str, str, "Figure | str"]
FigureKind = Callable[["FigureInput"], Iterator[Drawn]]


@dataclass(frozen=True)
class FigureInput:
    """What study figures draw from: the results and how the study searched.

    Attributes:
        study: The study's name.
        table: Its results (`normstudy.results.read_results`).
        objectives: (metric, mode) of each search objective, the first ranks trials.
        space: Searched keys and how each is drawn (log axis, categories).
        statuses: Trial statuses that count (others are drawn apart).
        optuna: Opens the study's Optuna storage (None: no Optuna plots).
        brief: Draw the quick version (learning curves of the objectives and the losses only):
            what `run` shows at its end.
    """

    study: str
    table: pa.Table
    objectives: list[tuple[str, Mode]]
    space: dict[str, Axis] = field(default_factory=dict)
    statuses: tuple[str, ...] = ("completed",)
    optuna: Callable[[], optuna.Study] | None = None
    brief: bool = False

    @classmethod
    def of(
        cls, spec: StudySpec, paths: StudyPaths, table: pa.Table, *, brief: bool = False
    ) -> FigureInput:
        """From a study's description and folder (the Optuna storage opened on demand)."""
        # A seed axis (a confirm study's grid) is replication, not a knob to plot against.
        space = {k: axis_of(d) for k, d in spec.search.space.items() if k != "seed"}

        def load() -> optuna.Study:
            import optuna

            from normstudy.search._optuna_store import pull, storage_url

            pull(spec, paths)
            if not spec.search.storage and not paths.optuna_local.exists():
                # Opening a missing sqlite file would create an empty one in the study folder.
                raise FileNotFoundError(f"no Optuna storage at {paths.optuna_db}")
            return optuna.load_study(study_name=spec.name, storage=storage_url(spec, paths))

        objectives = list(zip(spec.search.metrics, spec.search.modes, strict=True))
        return cls(spec.name, table, objectives, space, optuna=load, brief=brief)


def axis_of(dist: Any) -> Axis:
    """A log axis for log distributions, and for numeric grids spanning two decades or more
    (a batch-size or norm-batch sweep); names and booleans as categories."""
    if getattr(dist, "type", None) in ("loguniform",) or getattr(dist, "log", False):
        return Axis(log=True)
    values = dist.grid_values() if hasattr(dist, "grid_values") else None
    if values is None:
        return Axis()
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) != len(values):
        return Axis(categorical=True)
    return Axis(log=min(numbers) > 0 and max(numbers) >= 100 * min(numbers))


_KINDS: dict[str, tuple[FigureKind, bool]] = {}


def register_figure(name: str, *, cheap: bool = True) -> Callable[[FigureKind], FigureKind]:
    """Registers a figure kind under ``name`` (``cheap``: drawn at the end of every run)."""

    def add(kind: FigureKind) -> FigureKind:
        _KINDS[name] = (kind, cheap)
        return kind

    return add


def figure_kinds(cheap_only: bool = False) -> list[str]:
    """Registered kinds, in registration order."""
    return [name for name, (_, cheap) in _KINDS.items() if cheap or not cheap_only]


@dataclass
class WrittenFigures:
    """What `write_figures` wrote, and what it skipped and why."""

    files: list[FigureFile] = field(default_factory=list)
    paths: list[Location] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def write_figures(
    data: FigureInput,
    out: Location,
    kinds: Iterable[str] | None = None,
    formats: Sequence[str] = FIGURE_FORMATS,
    dpi: int = DPI,
) -> WrittenFigures:
    """Draws the kinds (default: all) and writes each figure as ``<out>/<stem>.<format>``.

    Raises:
        ValueError: An unknown kind or format.
    """
    kinds = list(kinds) if kinds is not None else figure_kinds()
    unknown = [k for k in kinds if k not in _KINDS] + [
        f for f in formats if f not in ("png", "pdf", "svg")
    ]
    if unknown:
        raise ValueError(f"unknown figure kind or format {unknown}; kinds: {figure_kinds()}")
    written = WrittenFigures()
    for kind in kinds:
        for stem, title, figure in _KINDS[kind][0](data):
            if isinstance(figure, str):
                written.skipped.append(f"{stem}: {figure}")
                continue
            blobs = {fmt: _save(figure, fmt, dpi) for fmt in formats}
            for fmt, blob in blobs.items():
                (out / f"{stem}.{fmt}").write_bytes(blob)
                written.paths.append(out / f"{stem}.{fmt}")
            png = blobs.get("png") or _save(figure, "png", dpi)
            files = tuple(f"{out.name}/{stem}.{fmt}" for fmt in formats)
            written.files.append(FigureFile(stem, title, png, files))
    return written


def _save(figure: Figure, fmt: str, dpi: int = DPI) -> bytes:
    buffer = io.BytesIO()
    # A fixed date keeps PDFs byte-identical across runs of the same data.
    metadata = {"CreationDate": None} if fmt == "pdf" else None
    figure.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
    return buffer.getvalue()


@register_figure("curves")
def _curves(data: FigureInput) -> Iterator[Drawn]:
    metric, mode = data.objectives[0]
    metrics = epoch_metrics(data.table, [m for m, _ in data.objectives])
    if data.brief:
        wanted = {m for m, _ in data.objectives} | set(BRIEF_CURVES)
        metrics = [m for m in metrics if m in wanted]
    if not metrics or data.table.num_rows == 0:
        yield "curves", "learning curves", "no per-epoch metrics in the results yet"
        return
    title = "learning curves: each metric vs epoch, mean ± std over seeds"
    yield "curves", title, learning_curves(data.table, metrics, metric=metric, mode=mode)


@register_figure("params")
def _params(data: FigureInput) -> Iterator[Drawn]:
    metric, mode = data.objectives[0]
    if not data.space:
        yield "params", "score vs searched keys", "the study searches no key"
        return
    if metric not in data.table.column_names or data.table[metric].null_count == len(data.table):
        yield "params", "score vs searched keys", f"no trial has a {metric} yet"
        return
    title = f"best {metric} per trial vs each searched key"
    yield (
        "params",
        title,
        score_vs_params(data.table, metric, mode, data.space, statuses=data.statuses),
    )


@register_figure("optuna", cheap=False)
def _optuna(data: FigureInput) -> Iterator[Drawn]:
    from normstudy.report._optuna_plots import optuna_figures

    if data.optuna is None:
        yield "optuna", "Optuna plots", "no Optuna storage given"
        return
    try:
        study = data.optuna()
    except FileNotFoundError as e:
        yield "optuna", "Optuna plots", str(e.args[0] if e.args else e)
        return
    except Exception as e:  # no such study, an unreachable or damaged storage: the report goes on
        yield "optuna", "Optuna plots", f"cannot open the Optuna storage: {type(e).__name__}: {e}"
        return
    yield from optuna_figures(study, [m for m, _ in data.objectives])
