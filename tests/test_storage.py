"""The storage layer against a local folder and a real S3-compatible server (moto_server)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from normstudy.storage import Location, StorageError, as_location
from tests._loopback import S3Store


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "local":
        return as_location(tmp_path / "home")
    s3: S3Store = request.getfixturevalue("s3_env")
    return as_location(f"s3://{s3.bucket}/storage-test/{uuid.uuid4().hex}")


def test_write_read_list_delete(root: Location) -> None:
    study = root / "study"
    assert not study.exists()
    (study / "results").mkdir()
    (study / "results" / "b.parquet").write_bytes(b"2")
    (study / "results" / "a.parquet").write_bytes(b"1")
    (study / "results" / "notes.txt").write_text("é")
    (study / "study.yaml").write_text("name: x\n")
    assert study.is_dir() and (study / "study.yaml").exists()
    assert [f.name for f in (study / "results").files(".parquet")] == ["a.parquet", "b.parquet"]
    assert (study / "results" / "notes.txt").read_text() == "é"
    assert [f.name for f in root.folders()] == ["study"]
    (study / "results" / "a.parquet").write_bytes(b"replaced")  # replaces whole
    assert (study / "results" / "a.parquet").read_bytes() == b"replaced"
    with pytest.raises(FileNotFoundError):
        (study / "missing.json").read_bytes()
    study.delete()
    assert not study.exists() and root.folders() == []
    study.delete()  # deleting what is gone is no error


def test_files_of_a_missing_folder_is_empty(root: Location) -> None:
    assert (root / "nothing").files() == []


def test_as_location_names_and_refuses() -> None:
    assert as_location("s3://bucket/a/b/").uri == "s3://bucket/a/b"
    assert as_location("gcs://bucket/a").uri == "gs://bucket/a"
    assert as_location("~/x").uri == str(Path("~/x").expanduser().resolve())
    assert as_location("file:///tmp/y").uri == "/tmp/y"
    loc = as_location("s3://bucket/a")
    assert (loc / "b").uri == "s3://bucket/a/b" and (loc / "b").parent == loc
    assert loc.fs_path == "bucket/a" and not loc.is_local
    with pytest.raises(StorageError, match="unsupported scheme"):
        as_location("hdfs://nn/x")
    with pytest.raises(StorageError, match="names no bucket"):
        as_location("s3://")
    with pytest.raises(ValueError, match="single path component"):
        loc / "../etc"
    with pytest.raises(StorageError, match="not on a local disk"):
        _ = loc.local_path


def test_unreachable_store_is_a_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError, match="s3://unreachable-bucket"):
        as_location(f"s3://unreachable-bucket/{uuid.uuid4().hex}/f").read_bytes()
