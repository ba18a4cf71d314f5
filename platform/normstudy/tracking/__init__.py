"""Experiment tracking (MLflow): never the source of truth, never able to stall a study."""

from normstudy.tracking._check import check_server
from normstudy.tracking._outbox import OUTBOX_NAME
from normstudy.tracking._tracker import StudyTracker, SyncResult, sync_outbox
from normstudy.tracking._view import link as view_link
from normstudy.tracking._view import view_tags

__all__ = [
    "OUTBOX_NAME",
    "StudyTracker",
    "SyncResult",
    "check_server",
    "sync_outbox",
    "view_link",
    "view_tags",
]
