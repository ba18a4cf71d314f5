"""The one place that assembles Ray Tune and Optuna."""

from normstudy.search._study import StudyOutcome, StudyStateError, run_study

__all__ = ["StudyOutcome", "StudyStateError", "run_study"]
