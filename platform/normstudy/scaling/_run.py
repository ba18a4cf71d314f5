"""Running a scaling study: each scale point's search, then the transfer phase.

The parent folder ``HOME/<name>/`` holds the parent's ``study.yaml`` (so `best`, `report` and
`status` find the study) and a lease for the whole run; every part is an ordinary study run by
`run_study`, with its own folder, lease, Optuna storage and MLflow experiment.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import yaml

from normstudy.home import StudyPaths
from normstudy.scaling._specs import optimum, point_specs, transfer_spec
from normstudy.spec._scale import describe_point

if TYPE_CHECKING:
    from rich.console import Console

    from normstudy.search import StudyOutcome
    from normstudy.spec import StudySpec
    from normstudy.storage import Location


@dataclasses.dataclass
class ScalingOutcome:
    """What the parts of a scaling study did; ``parts`` in the order they ran."""

    paths: StudyPaths
    parts: list[StudyOutcome]
    interrupted: bool = False
    skipped_transfer: str | None = None
    """Why the transfer phase did not run (a point without any scored trial)."""

    @property
    def errored(self) -> list[str]:
        return [f"{o.paths.name}:{t}" for o in self.parts for t in o.errored]

    @property
    def tracking_failures(self) -> list[str]:
        return [line for o in self.parts for line in o.tracking_failures]


def run_scaling(
    spec: StudySpec,
    home: Location,
    console: Console,
    *,
    resume: bool = False,
    overwrite: bool = False,
    tracking: str | None = None,
) -> ScalingOutcome:
    """Run (or resume) scaling study ``spec``: each point's search, then its transfer phase.

    Raises:
        StudyStateError: The parent (or a part) exists without ``resume``, changed since it
            started, or another driver holds its lease.
    """
    from normstudy.search import StudyStateError
    from normstudy.storage import LeaseHeldError, StudyLease

    spec = spec.with_absolute_paths()  # as run_study stores each part
    paths = StudyPaths(home, spec.name)
    lease = StudyLease(paths.root)
    try:
        lease.acquire()
    except LeaseHeldError as e:
        raise StudyStateError(str(e)) from e
    with lease:
        _prepare_parent(spec, paths, resume, overwrite)
        outcome = ScalingOutcome(paths, [])
        points = point_specs(spec)
        for i, part in enumerate(points):
            console.print(
                f"scale point {i + 1}/{len(points)} ({describe_point(part.scale_point)}): "
                f"study {part.name}",
                highlight=False,
            )
            if _run_part(part, home, console, resume, overwrite, tracking, outcome):
                return outcome
        optima = [_optimum(part, home) for part in points]
        missing = [p.name for p, o in zip(points, optima, strict=True) if o is None]
        if missing:
            outcome.skipped_transfer = f"no scored trial in {', '.join(missing)}"
            return outcome
        transfer = transfer_spec(spec, [o for o in optima if o is not None])
        console.print(
            f"transfer phase: {len(transfer.configs)} configurations × "
            f"{len(transfer.seed_list())} seeds: study {transfer.name}",
            highlight=False,
        )
        _run_part(transfer, home, console, resume, overwrite, tracking, outcome)
        return outcome


def _run_part(
    part: StudySpec,
    home: Location,
    console: Console,
    resume: bool,
    overwrite: bool,
    tracking: str | None,
    outcome: ScalingOutcome,
) -> bool:
    """Runs one part; True when it was interrupted (the scaling study stops there)."""
    from normstudy.search import run_study

    started = StudyPaths(home, part.name).spec_file.exists()
    done = run_study(
        part,
        home,
        console,
        resume=resume and started,
        overwrite=overwrite and started,
        tracking=tracking,
    )
    outcome.parts.append(done)
    outcome.interrupted = done.interrupted
    return done.interrupted


def _optimum(part: StudySpec, home: Location) -> dict[str, Any] | None:
    from normstudy.results import read_results, trial_scores

    table = read_results(StudyPaths(home, part.name).results)
    return optimum(part, trial_scores(table, part.search.metrics[0], part.search.modes[0]))


def _prepare_parent(spec: StudySpec, paths: StudyPaths, resume: bool, overwrite: bool) -> None:
    from normstudy.search import StudyStateError

    resolved = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    exists = paths.spec_file.exists()
    if resume and not exists:
        raise StudyStateError(
            f"nothing to resume: no study {spec.name!r} in {paths.home} (run without --resume)"
        )
    if resume and paths.spec_file.read_text() != resolved:
        raise StudyStateError(
            f"the study description of {spec.name!r} changed since it started "
            f"({paths.spec_file}); resume with the same description and --set values, or "
            "start a new study (another name or --home)"
        )
    if exists and not (resume or overwrite):
        raise StudyStateError(
            f"study {spec.name!r} already exists in {paths.home}: pass --resume to continue it, "
            "--overwrite to start it again, or choose another --home"
        )
    paths.spec_file.write_text(resolved)
