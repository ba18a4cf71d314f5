"""One training run as a plain function of (config, reporter)."""

from normstudy.trial._reporter import LocalReporter, Reporter, TuneReporter
from normstudy.trial._train import run_trial

__all__ = ["LocalReporter", "Reporter", "TuneReporter", "run_trial"]
