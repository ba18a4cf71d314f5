from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEARCHSPACES = ROOT / "searchspaces"

# Ray: no token auth on a throw-away local instance; quiet, small object store for 2 cores.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture
def quickstart() -> Path:
    return SEARCHSPACES / "quickstart.yaml"
