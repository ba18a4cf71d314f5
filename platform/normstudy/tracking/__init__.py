"""Experiment tracking (MLflow): never the source of truth, never able to stall a study."""

from normstudy.tracking._mlflow import StudyTracker

__all__ = ["StudyTracker"]
