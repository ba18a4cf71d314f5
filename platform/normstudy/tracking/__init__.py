"""Experiment tracking (MLflow): never the source of truth, never able to stall a study."""

from normstudy.tracking._check import check_server
from normstudy.tracking._outbox import OUTBOX_NAME
from normstudy.tracking._tracker import StudyTracker, SyncResult, sync_outbox

__all__ = ["OUTBOX_NAME", "StudyTracker", "SyncResult", "check_server", "sync_outbox"]
