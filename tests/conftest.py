from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._loopback import S3Store, start_s3, stop

ROOT = Path(__file__).resolve().parents[1]
SEARCHSPACES = ROOT / "searchspaces"

# Ray: no token auth on a throw-away local instance; quiet, small object store for 2 cores.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture
def quickstart() -> Path:
    return SEARCHSPACES / "quickstart.yaml"


@pytest.fixture(scope="session")
def quickstart_path() -> Path:
    return SEARCHSPACES / "quickstart.yaml"


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Store]:
    """A real S3-compatible server (moto_server) on loopback with one bucket, for the whole
    session; stopped by pid at the end."""
    store = start_s3(tmp_path_factory.mktemp("s3"))
    try:
        yield store
    finally:
        stop(store.proc)


@pytest.fixture
def s3_env(s3: S3Store, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    """This process reads and writes the S3 store as a laptop with credentials in its
    environment does."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3
