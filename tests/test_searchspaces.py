"""The shipped study descriptions, as users run them on a laptop with `--set` overrides: every
variant / grid point trains for real (digits, a tiny model, one short epoch), and one study goes
through `normstudy run` end to end."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from normstudy.scaling import point_specs
from normstudy.spec import load_spec, resolve_config
from normstudy.trial import LocalReporter, run_trial

SEARCHSPACES = Path(__file__).resolve().parents[1] / "searchspaces"
PAPER_STUDIES = sorted(p for p in SEARCHSPACES.glob("*.yaml") if p.stem != "quickstart")
SMALL = [
    "dataset.name=digits",
    "dataset.image_size=8",
    "model.name=test_resnet",
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
    "train.eval_batch_size=256",
    "train.threads=1",
    "resources.gpus=0",
    "resources.cpus=1",
    "search.scheduler.name=fifo",
    "evaluation.evalmode_train_samples=64",
]


def _points(spec: Any) -> list[dict[str, Any]]:
    """Every grid point; for continuous spaces every variant at the ends of each range."""
    space = spec.search.space
    if spec.search.sampler == "grid":
        axes = {k: d.grid_values() for k, d in space.items()}
        return [dict(zip(axes, p, strict=True)) for p in itertools.product(*axes.values())]
    variants = space["variant"].grid_values() if "variant" in space else [None]
    ranges = {k: d.candidates() for k, d in space.items() if k != "variant"}
    points = []
    for variant in variants:
        for end in (0, -1):
            point = {k: values[end] for k, values in ranges.items()}
            points.append(point if variant is None else {"variant": variant, **point})
    return points


def test_every_paper_study_is_shipped() -> None:
    names = {p.stem for p in PAPER_STUDIES}
    assert {"deconstructing_bn", "gamma_decay", "bayesian_norm", "norm_batch_scaling"} <= names
    assert "scaling_gamma_lr" in names


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_STUDIES, ids=lambda p: p.stem)
def test_every_configuration_of_a_study_trains(path: Path) -> None:
    spec = load_spec(path, [f"{item}" for item in SMALL])
    for study in point_specs(spec) if spec.scale else [spec]:  # a scaling study: every point
        base = study.trial_base()
        points = _points(study)
        assert points
        for params in points:
            metrics = run_trial(resolve_config(base, params, study.variants), LocalReporter())
            numbers = {k: v for k, v in metrics.items() if isinstance(v, float)}
            bad = {k: v for k, v in numbers.items() if not math.isfinite(v)}
            assert not bad, f"{study.name} {params}: non-finite {bad}"


@pytest.mark.slow
@pytest.mark.integration
def test_a_paper_study_runs_through_the_cli(tmp_path: Path) -> None:
    args = [a for item in SMALL for a in ("--set", item)]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "normstudy",
            "run",
            str(SEARCHSPACES / "gamma_decay.yaml"),
            "--home",
            str(tmp_path),
            *args,
            "--set",
            "search.num_samples=3",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from normstudy.results import read_results

    rows = read_results(tmp_path / "gamma_decay" / "results").to_pylist()
    assert len({r["trial_id"] for r in rows}) == 3
    assert {r["config.variant"] for r in rows} <= {"bn", "pn_gamma_decay", "bn_dropout"}
