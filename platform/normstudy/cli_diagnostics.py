"""Diagnostic commands on trained trials (``register(app)`` adds them to the ``normstudy`` CLI).

Torch is imported inside the commands, so ``normstudy --help`` stays fast.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd

from normstudy.cli_output import fail as _fail
from normstudy.cli_output import out

DEFAULT_SIZES = "8,16,32,64,128"


class TrialNotFoundError(LookupError):
    """A trial folder, its parameters or its checkpoint is missing."""


def find_trial_dir(tune_dir: Path, trial_id: str) -> Path:
    """The Tune trial folder whose name contains ``trial_id`` (exactly one)."""
    if not tune_dir.is_dir():
        raise TrialNotFoundError(f"no Tune folder {tune_dir} (has the study run?)")
    found = [d for d in sorted(tune_dir.iterdir()) if d.is_dir() and trial_id in d.name]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise TrialNotFoundError(f"{what} trial folders in {tune_dir} match {trial_id!r}")
    return found[0]


def latest_checkpoint(trial_dir: Path) -> Path:
    """The trial's checkpoint folder with the highest index that holds a ``state.pt``."""
    from normstudy.trial._reporter import CHECKPOINT_FILE

    def index(folder: Path) -> int:
        match = re.search(r"(\d+)$", folder.name)
        return int(match.group(1)) if match else -1

    folders = [d for d in trial_dir.glob("checkpoint_*") if (d / CHECKPOINT_FILE).exists()]
    if not folders:
        raise TrialNotFoundError(f"no checkpoint with {CHECKPOINT_FILE} in {trial_dir}")
    return max(folders, key=index)


def trial_config(spec: Any, trial_dir: Path) -> dict[str, Any]:
    """The trial's resolved config: the study's base config and the trial's sampled values
    (Tune's ``params.json`` in the trial folder)."""
    from normstudy.spec import resolve_config

    params_file = trial_dir / "params.json"
    if not params_file.exists():
        raise TrialNotFoundError(f"no params.json in {trial_dir}")
    params = json.loads(params_file.read_text())
    return resolve_config(spec.trial_base(), params, spec.variants)


def _parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        _fail(f"--sizes must be comma-separated integers, got {text!r}")
    if len(sizes) < 2 or sizes[0] < 2:
        _fail(f"--sizes needs at least two batch sizes of 2 or more, got {text!r}")
    return sizes


def _show(table: pd.DataFrame, slopes: dict[str, float], sizes: list[int]) -> None:
    view = Table(title="BN noise: Std(U) per batch size k, and the slope of log Var(out) vs log k")
    view.add_column("layer")
    view.add_column("z", justify="right")
    for k in sizes:
        view.add_column(f"σ_U k={k}", justify="right")
    view.add_column("slope", justify="right")
    for layer, rows in table.groupby("layer", sort=False):
        std_u = dict(zip(rows["k"], rows["std_u"], strict=True))
        slope = slopes.get(str(layer))
        view.add_row(
            str(layer),
            str(int(rows["z"].iloc[0])),
            *[f"{std_u[k]:.4f}" if k in std_u else "-" for k in sizes],
            "-" if slope is None else f"{slope:.2f}",
        )
    out.print(view)
    if slopes:
        median = sorted(slopes.values())[len(slopes) // 2]
        out.print(f"median slope over {len(slopes)} layers: {median:.2f} (000 predicts -1)")


HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Study home (default: $NORMSTUDY_HOME or ./studies)."),
]


def measure_bn_noise_command(
    study: Annotated[str, typer.Argument(help="The study's name.")],
    trial: Annotated[str, typer.Argument(help="A trial id (as in the results).")],
    home: HomeOpt = None,
    sizes: Annotated[str, typer.Option(help="Batch sizes k, comma-separated.")] = DEFAULT_SIZES,
    batches: Annotated[int, typer.Option(min=2, help="Random batches per size.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the batch draws.")] = 0,
    csv: Annotated[Path | None, typer.Option(help="Also write the full table here.")] = None,
) -> None:
    """Measure BN's batch noise in a trained trial (000): Std of U = σ/S and Var of
    V = (μ − M)/σ per BN layer and batch size, and the log-log slope of the output variance."""
    from normstudy.home import StudyPaths, resolve_home
    from normstudy.spec import SpecError, load_spec

    size_list = _parse_sizes(sizes)
    paths = StudyPaths(resolve_home(home), study)
    if not paths.spec_file.exists():
        _fail(f"no study {study!r} in {paths.home} (run it first, or pass --home)")
    try:
        spec = load_spec(paths.spec_file)
        trial_dir = find_trial_dir(paths.tune.local_path, trial)
        config, checkpoint = trial_config(spec, trial_dir), latest_checkpoint(trial_dir)
    except (SpecError, TrialNotFoundError) as e:
        _fail(str(e))
    table, slopes = _measure(config, checkpoint, size_list, batches, seed)
    _show(table, slopes, size_list)
    if csv is not None:
        table.to_csv(csv, index=False)
        out.print(f"table written to {csv}")


def _measure(
    config: dict[str, Any], checkpoint: Path, sizes: list[int], batches: int, seed: int
) -> tuple[pd.DataFrame, dict[str, float]]:
    import torch

    from normstudy.diagnostics.bn_noise import measure_bn_noise, noise_slopes, restore_trial

    run = restore_trial(config, checkpoint)
    if max(sizes) > len(run.splits.train):
        _fail(f"--sizes: {max(sizes)} exceeds the training split ({len(run.splits.train)})")
    generator = torch.Generator(device=run.splits.train.x.device).manual_seed(seed)
    table = measure_bn_noise(run.model, run.splits.train, sizes, batches, generator)
    if table.empty:
        _fail("the trial's model has no BN layer with running statistics to measure")
    return table, noise_slopes(table)


def register(app: typer.Typer) -> None:
    """Add the diagnostic commands to ``app`` (the ``normstudy`` CLI)."""
    app.command("measure-bn-noise")(measure_bn_noise_command)
