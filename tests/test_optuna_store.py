"""The Optuna storage of a study in a bucket home: a working copy synced to the home."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna
import pytest

from normstudy.home import StudyPaths
from normstudy.search._optuna_store import pull, push, storage_url
from normstudy.spec import SpecError, load_spec
from normstudy.storage import as_location
from tests._loopback import S3Store


def _trials(url: str, name: str) -> int:
    return len(optuna.load_study(study_name=name, storage=url).trials)


def _add_trials(url: str, name: str, n: int) -> None:
    study = optuna.create_study(study_name=name, storage=url, load_if_exists=True)
    for _ in range(n):
        study.tell(study.ask(), 1.0)


def test_working_copy_syncs_through_the_home(
    s3_env: S3Store, tmp_path: Path, quickstart: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(quickstart)
    home = as_location(f"s3://{s3_env.bucket}/optuna-test/{uuid.uuid4().hex}")
    paths = StudyPaths(home, spec.name)
    monkeypatch.setenv("NORMSTUDY_CACHE", str(tmp_path / "machine-a"))
    pull(spec, paths)  # a new study: nothing to bring
    url = storage_url(spec, paths)
    assert url == f"sqlite:///{paths.optuna_local}" and str(tmp_path) in url
    _add_trials(url, spec.name, 2)
    push(spec, paths)
    assert paths.optuna_db.exists()

    # Another machine (a new head) starts from the home's copy.
    monkeypatch.setenv("NORMSTUDY_CACHE", str(tmp_path / "machine-b"))
    pull(spec, paths)
    url_b = storage_url(spec, paths)
    assert _trials(url_b, spec.name) == 2
    _add_trials(url_b, spec.name, 1)
    push(spec, paths)

    # Back on the first machine: its copy is older than the home's, so it is replaced...
    monkeypatch.setenv("NORMSTUDY_CACHE", str(tmp_path / "machine-a"))
    pull(spec, paths)
    assert _trials(storage_url(spec, paths), spec.name) == 3
    # ...while progress not yet pushed (a driver killed between two pushes) is kept.
    _add_trials(storage_url(spec, paths), spec.name, 1)
    pull(spec, paths)
    assert _trials(storage_url(spec, paths), spec.name) == 4


def test_search_storage_url_is_used_as_given(tmp_path: Path, quickstart: Path) -> None:
    spec = load_spec(quickstart, [f"search.storage=sqlite:///{tmp_path}/o.db"])
    paths = StudyPaths(as_location("s3://bucket/h"), spec.name)
    assert storage_url(spec, paths) == f"sqlite:///{tmp_path}/o.db"
    pull(spec, paths)  # nothing to sync: touches no bucket
    push(spec, paths)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://optuna:hunter2@db/optuna", "holds a password"),
        ("redis://db", "not an RDB URL"),
    ],
)
def test_search_storage_refuses(quickstart: Path, url: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        load_spec(quickstart, [f"search.storage={url}"])
    assert "hunter2" not in str(err.value)
