"""A folder or file on a local disk or an object store, addressed by URI or path.

Credentials and endpoints come from the standard environment (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL`` for S3-compatible stores, ``GOOGLE_APPLICATION_CREDENTIALS``, instance
profiles), never from a study description: ``pyarrow.fs`` reads them itself.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow.fs as pafs

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://")


class StorageError(OSError):
    """A location cannot be reached or read (names the URI and the cause)."""


@functools.cache
def _filesystem(base: str) -> tuple[pafs.FileSystem, str]:
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(base)
    except (OSError, ValueError) as e:
        raise StorageError(f"cannot open {base}: {e}") from e


@dataclass(frozen=True)
class Location:
    """A path on one file system. Local paths are absolute; remote ones are URIs.

    Writes are atomic for readers: local files are written beside their target, flushed and
    renamed over it; an object store's PUT replaces an object whole.

    Example:
        >>> home = as_location("/tmp/studies")
        >>> str(home / "quickstart" / "study.yaml")
        '/tmp/studies/quickstart/study.yaml'
    """

    uri: str

    # -- naming --------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return not self.uri.startswith(REMOTE_SCHEMES)

    @property
    def local_path(self) -> Path:
        """The local path; only for local locations (remote ones raise)."""
        if not self.is_local:
            raise StorageError(f"{self.uri} is not on a local disk")
        return Path(self.uri)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return Location(self.uri.rstrip("/").rsplit("/", 1)[0])

    def __truediv__(self, part: str) -> Location:
        if not part or "/" in part or part in (".", ".."):
            raise ValueError(f"{part!r} is not a single path component")
        return Location(f"{self.uri.rstrip('/')}/{part}")

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:
        """Local locations work wherever a path does (``open``, ``pq.read_table``)."""
        return str(self.local_path)

    # -- file system ---------------------------------------------------------------------------
    @property
    def fs(self) -> pafs.FileSystem:
        """The pyarrow file system of this location."""
        if self.is_local:
            import pyarrow.fs as pafs

            return pafs.LocalFileSystem()
        return _filesystem(self._root_uri())[0]

    @property
    def fs_path(self) -> str:
        """This location's path inside `fs` (for pyarrow and Ray Tune's storage_filesystem)."""
        if self.is_local:
            return self.uri
        return self.uri.split("://", 1)[1]

    def _root_uri(self) -> str:
        scheme, rest = self.uri.split("://", 1)
        return f"{scheme}://{rest.split('/', 1)[0]}"

    def _info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.fs_path)
        except OSError as e:
            raise StorageError(f"cannot reach {self.uri}: {e}") from e

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return bool(self._info().type != pafs.FileType.NotFound)

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return bool(self._info().type == pafs.FileType.Directory)

    def read_bytes(self) -> bytes:
        if self.is_local:
            return self.local_path.read_bytes()
        try:
            with self.fs.open_input_stream(self.fs_path) as stream:
                return bytes(stream.read())
        except FileNotFoundError:
            raise
        except OSError as e:
            if not self.exists():
                raise FileNotFoundError(self.uri) from e
            raise StorageError(f"cannot read {self.uri}: {e}") from e

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        """Replaces the file whole: a reader sees the old content or the new, never a part."""
        if self.is_local:
            _write_local_atomic(self.local_path, data)
            return
        try:
            with self.fs.open_output_stream(self.fs_path) as stream:
                stream.write(data)
        except OSError as e:
            raise StorageError(f"cannot write {self.uri}: {e}") from e

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def mkdir(self) -> None:
        """Creates the folder (and parents); object stores need none, so nothing is made there."""
        if self.is_local:
            self.local_path.mkdir(parents=True, exist_ok=True)

    def files(self, suffix: str = "") -> list[Location]:
        """The files directly in this folder whose names end with ``suffix``, sorted by name;
        hidden files (temp files of unfinished local writes) are left out."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.fs_path, allow_not_found=True))
        except OSError as e:
            raise StorageError(f"cannot list {self.uri}: {e}") from e
        names = sorted(
            i.base_name
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.endswith(suffix)
            and not i.base_name.startswith(".")
        )
        return [self / n for n in names]

    def folders(self) -> list[Location]:
        """The folders directly in this folder, sorted by name."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.fs_path, allow_not_found=True))
        except OSError as e:
            raise StorageError(f"cannot list {self.uri}: {e}") from e
        names = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
        return [self / n for n in names if not n.startswith(".")]

    def delete(self) -> None:
        """Deletes the file or the whole folder; a missing one is no error."""
        if self.is_local:
            import shutil

            path = self.local_path
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            return
        import pyarrow.fs as pafs

        info = self._info()
        with contextlib.suppress(FileNotFoundError):
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(self.fs_path)
            elif info.type == pafs.FileType.File:
                self.fs.delete_file(self.fs_path)

    def download_to(self, target: Path) -> None:
        """Copies this file to a local path (atomically)."""
        _write_local_atomic(target, self.read_bytes())

    def upload_from(self, source: Path) -> None:
        self.write_bytes(source.read_bytes())


def as_location(where: str | Path | Location) -> Location:
    """A `Location` from a URI (s3://, gs://), a local path (made absolute, ``~`` expanded) or
    a ``file://`` URI."""
    if isinstance(where, Location):
        return where
    text = str(where)
    if text.startswith(REMOTE_SCHEMES):
        scheme, rest = text.split("://", 1)
        rest = rest.strip("/")
        if not rest:
            raise StorageError(f"{text!r} names no bucket")
        return Location(f"{'gs' if scheme == 'gcs' else scheme}://{rest}")
    if "://" in text and not text.startswith("file://"):
        raise StorageError(
            f"{text!r}: unsupported scheme; use a local/NFS path, s3://bucket/prefix or "
            "gs://bucket/prefix"
        )
    return Location(str(Path(text.removeprefix("file://")).expanduser().resolve()))


def _write_local_atomic(path: Path, data: bytes) -> None:
    # Readers (report, a concurrent `status`) see the old file or the new one, never a partial
    # one: write beside it, flush to disk, then rename over it.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o644)  # mkstemp's 0600 would hide results from others
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some file systems cannot open directories.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
