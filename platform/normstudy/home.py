"""Where studies live: one home folder with the MLflow store and a folder per study."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

DEFAULT_HOME = "studies"


def resolve_home(home: str | Path | None) -> Path:
    """``--home``, else ``$NORMSTUDY_HOME``, else ``./studies``; always absolute (Ray runs each
    trial in its own working directory)."""
    chosen = home or os.environ.get("NORMSTUDY_HOME") or DEFAULT_HOME
    return Path(chosen).expanduser().resolve()


def local_tracking_uri(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow.db'}"


def tracking_uri(home: Path, explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri(home)


@dataclasses.dataclass(frozen=True)
class StudyPaths:
    home: Path
    name: str

    @property
    def root(self) -> Path:
        return self.home / self.name

    @property
    def spec_file(self) -> Path:
        """The resolved study description the study was started with."""
        return self.root / "study.yaml"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    @property
    def optuna_url(self) -> str:
        return f"sqlite:///{self.optuna_db}"

    @property
    def tracking_state(self) -> Path:
        """MLflow run ids of this study (parent, and child per trial), for resumes."""
        return self.root / "mlflow_runs.json"

    @property
    def artifacts(self) -> Path:
        """MLflow's artifact store of the home (all studies)."""
        return self.home / "mlartifacts"

    @property
    def trial_artifacts(self) -> Path:
        """Per-trial files (γ² per layer, error-coverage curve), beside the Parquet results."""
        return self.root / "artifacts"


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
