"""The Optuna storage of a study: a sqlite file in the home, or a working copy synced to it.

A bucket cannot hold a live database, so for an s3:// or gs:// home the driver works on a sqlite
copy in its cache and uploads a consistent snapshot (sqlite's backup API) after every finished
trial and at the end. A generation number beside each copy says which is newer, so a driver on
the same machine keeps its own unsynced progress and a driver on another machine starts from
the home's copy. ``search.storage`` (an RDB URL such as the head node's Postgres) bypasses all
of this. No Ray here: `report` opens the storage too and must start fast (the Tune callback that
pushes after each trial is `normstudy.search._callbacks.OptunaSync`).
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from normstudy.home import StudyPaths
    from normstudy.spec import StudySpec


def storage_url(spec: StudySpec, paths: StudyPaths) -> str:
    """The RDB URL the searcher opens (after `pull`)."""
    if spec.search.storage:
        return spec.search.storage
    return f"sqlite:///{paths.optuna_local}"


def _synced(spec: StudySpec, paths: StudyPaths) -> bool:
    return not spec.search.storage and not paths.home.is_local


def _gen_file(local: Path) -> Path:
    return local.with_name(local.name + ".gen")


def _generation(text: str | None) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        return -1


def pull(spec: StudySpec, paths: StudyPaths) -> None:
    """Brings the home's copy to this machine unless the local one is at least as new."""
    if not _synced(spec, paths):
        return
    local = paths.optuna_local
    remote_gen_file = paths.root / "optuna.gen"
    remote_gen = _generation(remote_gen_file.read_text()) if remote_gen_file.exists() else -1
    local_gen_file = _gen_file(local)
    local_gen = _generation(local_gen_file.read_text()) if local_gen_file.exists() else -1
    if local.exists() and local_gen >= remote_gen:
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    if paths.optuna_db.exists():
        paths.optuna_db.download_to(local)
        local_gen_file.write_text(str(remote_gen))
    else:  # a new study: no stale copy of an earlier one with the same name
        local.unlink(missing_ok=True)
        local_gen_file.unlink(missing_ok=True)


def push(spec: StudySpec, paths: StudyPaths) -> None:
    """Uploads a consistent snapshot of the working copy to the home."""
    if not _synced(spec, paths) or not paths.optuna_local.exists():
        return
    local_gen_file = _gen_file(paths.optuna_local)
    gen = 1 + (_generation(local_gen_file.read_text()) if local_gen_file.exists() else 0)
    with tempfile.TemporaryDirectory() as folder:
        snapshot = Path(folder) / "optuna.db"
        src = sqlite3.connect(paths.optuna_local)
        dst = sqlite3.connect(snapshot)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        paths.optuna_db.upload_from(snapshot)
    (paths.root / "optuna.gen").write_text(str(gen))
    local_gen_file.write_text(str(gen))
