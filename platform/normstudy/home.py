"""Where studies live: one home (a local/NFS folder, s3:// or gs://) with a folder per study."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
from pathlib import Path

from normstudy.storage import Location, StorageError, as_location

DEFAULT_HOME = "studies"


def resolve_home(home: str | Path | None) -> Location:
    """``--home``, else ``$NORMSTUDY_HOME``, else ``./studies``. Local paths are made absolute
    (Ray runs each trial in its own working directory); s3:// and gs:// URIs are kept."""
    chosen = home or os.environ.get("NORMSTUDY_HOME") or DEFAULT_HOME
    return as_location(str(chosen))


def local_tracking_uri(home: Location) -> str:
    return f"sqlite:///{home.local_path / 'mlflow.db'}"


def tracking_uri(home: Location, explicit: str | None = None) -> str:
    """The MLflow tracking URI: explicit, else ``$MLFLOW_TRACKING_URI``, else the home's own
    sqlite store (local homes only: a bucket cannot hold a database)."""
    chosen = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if chosen:
        return chosen
    if not home.is_local:
        raise StorageError(
            f"a study home on {home.uri} needs an MLflow tracking server: pass --tracking-uri "
            "(e.g. http://127.0.0.1:5000, the head node's server) or set MLFLOW_TRACKING_URI"
        )
    return local_tracking_uri(home)


def cache_dir() -> Path:
    """This machine's scratch space for remote homes (``$NORMSTUDY_CACHE``, else
    ``~/.cache/normstudy``)."""
    return Path(os.environ.get("NORMSTUDY_CACHE", "~/.cache/normstudy")).expanduser().resolve()


@dataclasses.dataclass(frozen=True)
class StudyPaths:
    home: Location
    name: str

    @property
    def root(self) -> Location:
        return self.home / self.name

    @property
    def spec_file(self) -> Location:
        """The resolved study description the study was started with."""
        return self.root / "study.yaml"

    @property
    def results(self) -> Location:
        return self.root / "results"

    @property
    def tune(self) -> Location:
        return self.root / "tune"

    @property
    def optuna_db(self) -> Location:
        """The Optuna storage as kept in the home (a sqlite file)."""
        return self.root / "optuna.db"

    @property
    def optuna_local(self) -> Path:
        """Where the driver opens the Optuna sqlite file: in the home when it is local, else a
        working copy in this machine's cache, synced to `optuna_db` after each trial."""
        if self.home.is_local:
            return self.optuna_db.local_path
        key = hashlib.sha1(self.home.uri.encode()).hexdigest()[:12]
        return cache_dir() / key / self.name / "optuna.db"

    @property
    def tracking_state(self) -> Location:
        """MLflow run ids of this study (parent, and child per trial), for resumes."""
        return self.root / "mlflow_runs.json"

    @property
    def job_file(self) -> Location:
        """The Ray job a `normstudy submit` started for this study (id, address, time)."""
        return self.root / "job.json"

    @property
    def artifacts(self) -> Location:
        """MLflow's artifact store of a local home (all studies)."""
        return self.home / "mlartifacts"

    @property
    def reports(self) -> Location:
        """Tables and figures of the study (`run` draws its figures here)."""
        return self.root / "reports"

    @property
    def figures(self) -> Location:
        """PNG and PDF figures, beside the report tables."""
        return self.reports / "figures"

    @property
    def trial_artifacts(self) -> Location:
        """Per-trial files (γ² per layer, error-coverage curve), beside the Parquet results."""
        return self.root / "artifacts"


def list_studies(home: Location) -> list[str]:
    """Names of the studies in a home (folders holding a study.yaml)."""
    return [f.name for f in home.folders() if (f / "study.yaml").exists()]


def git_revision() -> str:
    """The git revision of the source tree normstudy runs from, or 'unknown'."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"
