"""`normstudy doctor`: check a study's four stores against each other, and repair what can be.

The Parquet results are the truth; Tune's experiment state and checkpoints are how trials
resume; the Optuna storage is what the searcher knows; MLflow is the window (DESIGN.md, "One
study, four stores, one truth"). A crash can leave them out of step; a disk or a copy can damage
a file. Each check yields findings; a problem may carry a repair, run with ``--repair`` (never
while a driver holds the study's lease: it writes these stores itself).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from normstudy.home import StudyPaths
    from normstudy.spec import StudySpec

Level = Literal["ok", "note", "problem"]


@dataclasses.dataclass
class Finding:
    """One thing the doctor found in one store.

    Attributes:
        store: lease, study, results, tune, optuna or mlflow.
        level: ok, note (worth knowing, nothing wrong) or problem.
        message: What was found, naming files, trials and runs.
        repair: For a problem that can be fixed: does it and says what it did.
        repaired: What the repair did, once it ran; or why it failed.
    """

    store: str
    level: Level
    message: str
    repair: Callable[[], str] | None = None
    repaired: str | None = None
    fixed: bool = False


@dataclasses.dataclass
class _Tune:
    trials: list[Any] | None  # None: no saved experiment state

    def by_id(self) -> dict[str, Any]:
        return {t.trial_id: t for t in self.trials or []}


def examine(spec: StudySpec, paths: StudyPaths, tracking_uri: str | None) -> list[Finding]:
    """Every check of the study, in the order of the stores."""
    from normstudy.search._reconcile import tune_trials

    tune = _Tune(tune_trials(paths))
    findings = [*_check_tune(paths, tune)]
    findings += _check_results(spec, paths, tune)
    findings += _check_optuna(spec, paths, tune)
    findings += _check_mlflow(spec, paths, tracking_uri)
    return findings


def repair(findings: list[Finding]) -> None:
    """Runs the repair of every problem that has one; a failed repair is said, not raised."""
    for finding in findings:
        if finding.level != "problem" or finding.repair is None:
            continue
        try:
            finding.repaired, finding.fixed = finding.repair(), True
        except Exception as e:
            finding.repaired = f"repair failed: {type(e).__name__}: {e}"


# -- Tune ------------------------------------------------------------------------------------
def _check_tune(paths: StudyPaths, tune: _Tune) -> Iterator[Finding]:
    if tune.trials is None:
        yield Finding(
            "tune",
            "problem",
            f"no readable Tune experiment state in {paths.tune}: the study cannot be resumed "
            "(its results, `best` and `report` are not affected)",
        )
        return
    counts: dict[str, int] = {}
    for trial in tune.trials:
        counts[trial.status] = counts.get(trial.status, 0) + 1
    shown = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    yield Finding("tune", "ok", f"{len(tune.trials)} trials in Tune's state ({shown or 'none'})")


# -- results ---------------------------------------------------------------------------------
def _check_results(spec: StudySpec, paths: StudyPaths, tune: _Tune) -> Iterator[Finding]:
    """Trial files and compacted parts: readable, one row per (trial, epoch); a trial's rows
    are its own file's, else the newest part's holding it (as every reader takes them)."""
    from normstudy.results._files import list_files
    from normstudy.search._reconcile import LOST_ERROR

    tune_ids = tune.by_id()
    listing = list_files(paths.results)
    seen: dict[str, list[dict[str, Any]]] = {}
    damaged: set[str] = set()
    damaged_part = False
    for part in listing.parts:  # oldest first: a newer part's rows of a trial win
        try:
            rows = _read_rows(part)
        except Exception as e:
            fix = _set_aside_and_rebuild(spec, paths, tune, part)
            damaged_part = True  # its trials are unknown: the repair rebuilds what is missing
            yield Finding(
                "results",
                "problem",
                f"{part}: not readable ({e}); --repair sets it aside and rebuilds the trials "
                "it held from their checkpoints",
                fix,
            )
            continue
        by_trial: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_trial.setdefault(row["trial_id"], []).append(row)
        seen.update(by_trial)
    for trial_id, file in sorted(listing.trials.items()):
        try:
            rows = _read_rows(file)
        except Exception as e:
            fix = _rebuild_or_set_aside(spec, paths, tune_ids.get(trial_id), file)
            damaged.add(trial_id)
            yield Finding("results", "problem", f"{file}: not readable ({e})", fix)
            continue
        if {r["trial_id"] for r in rows} - {trial_id}:
            yield Finding("results", "problem", f"{file}: holds rows of another trial")
        seen[trial_id] = rows
    doubled = sorted(t for t, rows in seen.items() if len({r["epoch"] for r in rows}) < len(rows))
    if doubled:
        yield Finding("results", "problem", f"trials {', '.join(doubled)} repeat an epoch")
    for trial_id, trial in sorted(tune_ids.items()):
        if damaged_part:
            break
        if trial_id not in seen and trial_id not in damaged and _has_checkpoint(trial):
            fix = _rebuild_or_set_aside(spec, paths, trial, paths.results / f"{trial_id}.parquet")
            yield Finding(
                "results", "problem", f"trial {trial_id} has checkpoints but no results", fix
            )
    if tune.trials is not None:
        lost = sorted(
            t
            for t, rows in seen.items()
            if t not in tune_ids and rows and rows[0]["status"] == "running"
        )
        if lost:
            yield Finding(
                "results",
                "problem",
                f"trials {', '.join(lost)} are 'running' but Tune never saved them (lost with a "
                "killed driver); --repair marks them error, as --resume does",
                _settle(paths, lost),
            )
    running = sorted(t for t, rows in seen.items() if rows and rows[0]["status"] == "running")
    running = [t for t in running if t in tune_ids]
    if running:
        yield Finding(
            "results",
            "note",
            f"trials {', '.join(running)} were interrupted: `normstudy run --resume` "
            "continues them",
        )
    errors = sum(1 for rows in seen.values() if rows and rows[0]["status"] == "error")
    lost_before = sum(1 for rows in seen.values() if rows and rows[0].get("error") == LOST_ERROR)
    yield Finding(
        "results",
        "ok",
        f"{len(seen)} trials with readable results in {len(listing.trials)} trial files and "
        f"{len(listing.parts)} compacted parts ({errors} with errors, {lost_before} of them lost "
        "with a driver)",
    )


def _read_rows(file: Any) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return list(pq.read_table(pa.BufferReader(file.read_bytes())).to_pylist())


def _set_aside_and_rebuild(
    spec: StudySpec, paths: StudyPaths, tune: _Tune, part: Any
) -> Callable[[], str]:
    """A damaged part: its bytes kept aside, then every trial of Tune's state that has no
    readable results left is rebuilt from its checkpoint."""

    def fix() -> str:
        from normstudy.results import read_results

        aside = _set_aside(part)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            have = set(read_results(paths.results, columns=["trial_id"])["trial_id"].to_pylist())
        done = [
            _rebuild_or_set_aside(spec, paths, t, paths.results / f"{t.trial_id}.parquet")()
            for t in tune.trials or []
            if t.trial_id not in have and _has_checkpoint(t)
        ]
        return f"moved aside to {aside}; " + ("; ".join(done) or "no trial to rebuild")

    return fix


def _has_checkpoint(trial: Any) -> bool:
    try:
        return trial.checkpoint is not None
    except Exception:
        return False


def _rebuild_or_set_aside(
    spec: StudySpec, paths: StudyPaths, trial: Any, file: Any
) -> Callable[[], str]:
    def fix() -> str:
        if trial is not None and _has_checkpoint(trial):
            rows, status = _rows_from_checkpoint(spec, paths, trial)
            if rows:
                from normstudy.results import ResultsSink

                if file.exists():
                    _set_aside(file)
                ResultsSink.for_study(paths.results, spec).update(
                    trial.trial_id,
                    rows,
                    status,
                    fields={"attempts": trial.num_failures + (0 if status == "error" else 1)},
                )
                return f"rebuilt {len(rows)} epochs of {trial.trial_id} from its checkpoint"
        if not file.exists():
            return "nothing to rebuild it from"
        return f"no checkpoint holds its epochs: moved aside to {_set_aside(file)}"

    return fix


def _set_aside(file: Any) -> Any:
    """Keeps a damaged file's bytes under ``<name>.damaged``, out of every reader's way."""
    aside = file.parent / f"{file.name}.damaged"
    aside.write_bytes(file.read_bytes())
    file.delete()
    return aside


def _rows_from_checkpoint(
    spec: StudySpec, paths: StudyPaths, trial: Any
) -> tuple[list[dict[str, Any]], str]:
    """The trial's rows as the driver wrote them, from the epoch record in its latest
    checkpoint, and its status as Tune has it."""
    from normstudy import __version__
    from normstudy.home import git_revision
    from normstudy.results import ResultsSink
    from normstudy.search._callbacks import StudyCallback, metrics_of
    from normstudy.trial._reporter import load_state

    with trial.checkpoint.as_directory() as folder:
        from pathlib import Path

        history = load_state(Path(folder)).get("history", [])
    builder = StudyCallback(
        study=spec.name,
        base=spec.trial_base(),
        epochs=spec.train.epochs,
        sink=ResultsSink(paths.results),
        tracker=None,
        meta={"version": __version__, "git_rev": git_revision()},
        score_keys=[f"best/{m}" for m in spec.search.metrics],
        artifacts_dir=paths.trial_artifacts,
        variants=spec.variants,
    )
    rows = [builder._row(trial, int(h["epoch"]), metrics_of(h), None) for h in history]
    last = max((int(h["epoch"]) for h in history), default=0)
    status = {"TERMINATED": "completed" if last >= spec.train.epochs else "stopped"}.get(
        trial.status, "error" if trial.status == "ERROR" else "running"
    )
    return rows, status


def _settle(paths: StudyPaths, lost: list[str]) -> Callable[[], str]:
    def fix() -> str:
        from normstudy.search._reconcile import settle_lost_results

        settle_lost_results(paths, lost)
        return f"marked {len(lost)} lost trials error"

    return fix


# -- Optuna ----------------------------------------------------------------------------------
def _check_optuna(spec: StudySpec, paths: StudyPaths, tune: _Tune) -> Iterator[Finding]:
    import optuna
    from optuna.trial import TrialState

    from normstudy.search._optuna_store import pull, storage_url
    from normstudy.search._reconcile import REQUEUED_FROM, requeue_orphans

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not paths.optuna_db.exists():
        yield Finding("optuna", "problem", f"no Optuna storage at {paths.optuna_db}")
        return
    try:
        pull(spec, paths)
        url = storage_url(spec, paths)
        trials = optuna.load_study(study_name=spec.name, storage=url).trials
    except Exception as e:
        yield Finding("optuna", "problem", f"{paths.optuna_db}: not readable ({e})")
        return
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running and tune.trials is not None:
        from normstudy.search._reconcile import _flat, _same

        known = [_flat(dict(t.config)) for t in tune.trials]
        orphans = [
            t.number
            for t in running
            if not any(all(k in c and _same(v, c[k]) for k, v in t.params.items()) for c in known)
        ]
        if orphans:

            def fix() -> str:
                done = requeue_orphans(spec, paths, url)
                from normstudy.search._optuna_store import push

                push(spec, paths)
                return f"told FAIL and requeued their configurations: {done}"

            yield Finding(
                "optuna",
                "problem",
                f"Optuna trials {orphans} are RUNNING but no Tune trial has their parameters "
                "(lost with a killed driver); --repair (or --resume) fails them and requeues "
                "their configurations",
                fix,
            )
    requeued = sum(1 for t in trials if REQUEUED_FROM in t.user_attrs)
    shown = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    yield Finding(
        "optuna", "ok", f"{len(trials)} Optuna trials ({shown or 'none'}; {requeued} requeued)"
    )


# -- MLflow ----------------------------------------------------------------------------------
def _check_mlflow(spec: StudySpec, paths: StudyPaths, uri: str | None) -> Iterator[Finding]:
    from normstudy.redact import redact
    from normstudy.results import read_results
    from normstudy.tracking import sync_outbox
    from normstudy.tracking._client import client, why
    from normstudy.tracking._outbox import Outbox, outbox_file

    if uri is None:
        yield Finding("mlflow", "note", "not checked: no tracking URI (pass --tracking-uri)")
        return
    box = Outbox.load(outbox_file(paths.tracking_state))
    if len(box):

        def send() -> str:
            result = sync_outbox(
                uri=uri,
                study=spec.name,
                artifact_root=paths.artifacts,
                state_file=paths.tracking_state,
                timeout_s=120.0,
            )
            if result.left:
                raise RuntimeError(f"{result.left} operations still wait ({result.unreachable})")
            return f"sent {result.sent} operations"

        yield Finding("mlflow", "problem", f"{len(box)} operations wait in the MLflow outbox", send)
    try:
        c = client(uri)
        exp = c.get_experiment_by_name(spec.name)
        runs = [] if exp is None else c.search_runs([exp.experiment_id], max_results=50000)
    except Exception as e:
        yield Finding("mlflow", "note", f"not checked: {redact(uri)} does not answer ({why(e)})")
        return
    children: dict[str, list[Any]] = {}
    for run in runs:
        trial_id = run.data.tags.get("normstudy.trial_id")
        if trial_id:
            children.setdefault(trial_id, []).append(run)
    with warnings.catch_warnings():  # damaged files are findings of their own
        warnings.simplefilter("ignore")
        table = read_results(paths.results).select(["trial_id", "status"]).to_pylist()
    status_of = {r["trial_id"]: r["status"] for r in table}
    missing = sorted(set(status_of) - set(children))
    if missing:
        yield Finding(
            "mlflow",
            "problem" if not len(box) else "note",
            f"trials {', '.join(missing)} have no MLflow run"
            + (" (the outbox may hold them)" if len(box) else ""),
        )
    twice = sorted(t for t, rs in children.items() if len(rs) > 1)
    if twice:
        yield Finding("mlflow", "problem", f"trials {', '.join(twice)} have several MLflow runs")
    wanted = {"completed": "FINISHED", "stopped": "FINISHED", "error": "FAILED"}
    stale = [
        (rs[0], wanted.get(status_of.get(t, ""), "KILLED"))
        for t, rs in children.items()
        if rs[0].info.status == "RUNNING" and len(rs) == 1
    ]
    parents = [r for r in runs if r.data.tags.get("normstudy.role") == "study"]
    stale += [(r, "KILLED") for r in parents if r.info.status == "RUNNING"]
    if stale:

        def end() -> str:
            for run, status in stale:
                c.set_terminated(run.info.run_id, status=status, end_time=int(time.time() * 1000))
            return f"ended {len(stale)} runs as their trials ended"

        names = ", ".join(r.info.run_name or r.info.run_id for r, _ in stale)
        yield Finding(
            "mlflow", "problem", f"runs {names} are RUNNING though no driver runs the study", end
        )
    yield Finding(
        "mlflow",
        "ok",
        f"{len(children)} trial runs and {len(parents)} study runs in experiment {spec.name!r}",
    )
