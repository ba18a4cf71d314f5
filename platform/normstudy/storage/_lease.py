"""One driver per study: a lease file in the study folder, kept fresh by a heartbeat.

The lease (``<study>/driver.lease``, JSON) names its holder: host, pid, start time, last
heartbeat, heartbeat interval, a random owner token and the command line. Living in the study
folder, it works wherever the study does: a laptop, NFS, s3:// or gs://.

Protocol:

- **Acquire.** No lease, or a stale one, and ours is written; a live one held by someone else
  raises `LeaseHeldError`, which names the holder and what to do. A lease is *stale* when its
  holder ran on this host and its pid is gone, or when its last heartbeat is older than the bound
  (``$NORMSTUDY_LEASE_STALE_S``, else 3 × the holder's own interval + 15 s).
- **Hold.** A thread rewrites the lease every ``$NORMSTUDY_LEASE_HEARTBEAT_S`` seconds (10 by
  default), after checking that it is still ours; if another process has taken it (ours looked
  stale, e.g. the machine slept), it stops and says so.
- **Release.** The lease is deleted only if it is still ours (same owner token).

Exactness: on a local or NFS folder, creating the lease is exclusive (``link(2)`` of a fully
written file, which fails if the name exists as ``O_CREAT | O_EXCL`` does, and which open(2)
recommends over ``O_EXCL`` on NFS); taking over a stale lease or releasing ours first renames the
file aside, so that only the one process that moved it decides, and puts back a lease that was
not the one it judged. Object stores have no create-if-absent in ``pyarrow.fs``: there the
writer re-reads after ``$NORMSTUDY_LEASE_SETTLE_S`` seconds (2 by default) and the last writer
wins. Two drivers can both proceed only if one of them took longer than that delay between
reading "no lease" and its write becoming visible (a stalled PUT).

What remains inexact: on object stores that race, and the read-then-write of each heartbeat
and the read-then-delete of a release (they can clobber a lease taken over in between, which
happens only to a holder that already looked stale); locally, the same heartbeat window of a
few microseconds. In every case the next heartbeat of the process that lost its lease notices
it, within one interval, and logs an error naming the new holder; it does not stop that process.
Staleness by heartbeat age compares the clocks of different hosts: they must agree to within
the 15 s margin. A pid reused on this host keeps a dead holder's lease until its heartbeat ages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import operator
import os
import secrets
import shlex
import socket
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normstudy.storage._location import StorageError

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from normstudy.storage._location import Location

LEASE_FILE = "driver.lease"
HEARTBEAT_ENV = "NORMSTUDY_LEASE_HEARTBEAT_S"
STALE_ENV = "NORMSTUDY_LEASE_STALE_S"
SETTLE_ENV = "NORMSTUDY_LEASE_SETTLE_S"
_MARGIN_S = 15.0

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease, as its file says (times are Unix seconds)."""

    host: str
    pid: int
    started: float
    heartbeat: float
    heartbeat_s: float
    token: str
    command: str

    @classmethod
    def parse(cls, text: str) -> LeaseHolder:
        """The holder a lease file names; an unreadable file stands for a holder long gone."""
        try:
            data = json.loads(text)
            fields = {f.name: data[f.name] for f in dataclasses.fields(cls)}
            return cls(**fields)
        except (ValueError, TypeError, KeyError):
            return cls("unknown", 0, 0.0, 0.0, 0.0, "", f"(unreadable lease: {text[:60]!r})")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    def describe(self, now: float | None = None) -> str:
        """``host H, pid P, since …, last heartbeat … ago, command: …``."""
        if not self.token:
            return self.command
        now = time.time() if now is None else now
        since = datetime.fromtimestamp(self.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"host {self.host}, pid {self.pid}, since {since}, last heartbeat "
            f"{_age(now - self.heartbeat)} ago, command: {self.command}"
        )

    def stale_reason(self, now: float | None = None) -> str | None:
        """Why this holder is gone, or None while it may still be running."""
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return f"its process {self.pid} is gone"
        age = (time.time() if now is None else now) - self.heartbeat
        bound = stale_after(self.heartbeat_s)
        if age > bound:
            return f"no heartbeat for {_age(age)} (more than {_age(bound)})"
        return None


class LeaseHeldError(RuntimeError):
    """Another live process holds the lease; the message names it and what to do."""

    def __init__(self, lease: Location, holder: LeaseHolder | None, *, raced: bool = False):
        self.lease, self.holder = lease, holder
        what = "took it at the same moment" if raced else "holds it"
        who = holder.describe() if holder else "unknown (its lease vanished while we looked)"
        bound = stale_after(holder.heartbeat_s if holder else _heartbeat_s())
        super().__init__(
            f"study folder {lease.parent} is in use: another normstudy process {what} "
            f"({who}). Wait for it to end, or stop it (on {holder.host if holder else 'its host'}: "
            f"kill -INT {holder.pid if holder else '<pid>'}, or `ray job stop` for a Ray job). "
            f"If you are sure it is dead, delete {lease}; a dead process's lease also lapses "
            f"{_age(bound)} after its last heartbeat."
        )


class StudyLease:
    """The lease of one study folder, held for a whole run.

    Args:
        folder: The study folder (local path, s3:// or gs://).
        command: What the holder runs, shown to whoever is refused (default: this process's
            command line, credentials masked).
        heartbeat_s: Seconds between heartbeats (default ``$NORMSTUDY_LEASE_HEARTBEAT_S`` or 10).
        settle_s: Object stores only: seconds between writing the lease and checking that it
            is still ours (default ``$NORMSTUDY_LEASE_SETTLE_S`` or 2).

    Example:
        >>> import tempfile
        >>> from normstudy.storage import as_location
        >>> folder = as_location(tempfile.mkdtemp()) / "quickstart"
        >>> with StudyLease(folder) as lease:
        ...     (folder / LEASE_FILE).exists()
        True
        >>> (folder / LEASE_FILE).exists()
        False
    """

    def __init__(
        self,
        folder: Location,
        *,
        command: str | None = None,
        heartbeat_s: float | None = None,
        settle_s: float | None = None,
    ) -> None:
        self.path = folder / LEASE_FILE
        self.token = secrets.token_hex(16)
        self.command = command or command_line()
        self.heartbeat_s = _heartbeat_s() if heartbeat_s is None else heartbeat_s
        self.settle_s = _env_float(SETTLE_ENV, 2.0) if settle_s is None else settle_s
        self.took_over: LeaseHolder | None = None
        self.notice: str | None = None
        self.lost: LeaseHolder | None = None
        self._started = 0.0
        self._made: list[Path] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StudyLease:
        if self._thread is None:  # not yet acquired by hand
            self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()

    def read(self) -> LeaseHolder | None:
        return read_lease(self.path)

    def acquire(self) -> LeaseHolder | None:
        """Takes the lease and starts the heartbeat; returns the stale holder it took over
        (also in `took_over`, and `notice` says so). Raises `LeaseHeldError`."""
        if self._thread is not None:
            raise RuntimeError(f"{self.path} is already held by this lease")
        self._started = time.time()
        taken = self._acquire_local() if self.path.is_local else self._acquire_remote()
        if taken is not None:
            holder, reason = taken
            self.took_over = holder
            self.notice = f"took over the lease of a driver that is gone ({reason}): " + (
                holder.describe()
            )
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat_until_stopped, daemon=True)
        self._thread.start()
        return self.took_over

    def release(self) -> None:
        """Stops the heartbeat and deletes the lease if it is still ours. Never raises: a lease
        left behind lapses by itself, and the caller may be handling another error."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=60)  # a beat stuck on a dead network must not hang the exit
        self._thread = None
        try:
            if self.path.is_local:
                _remove_local_if(self.path.local_path, lambda h: h.token == self.token)
                for folder in self._made:  # a refused or failed start leaves no empty folder
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            elif (current := self.read()) is not None and current.token == self.token:
                self.path.delete()
        except OSError as e:
            log.warning("could not release the lease %s: %s", self.path, e)

    # -- acquiring -----------------------------------------------------------------------------
    def _record(self) -> LeaseHolder:
        return LeaseHolder(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=self._started,
            heartbeat=time.time(),
            heartbeat_s=self.heartbeat_s,
            token=self.token,
            command=self.command,
        )

    def _acquire_local(self) -> tuple[LeaseHolder, str] | None:
        path = self.path.local_path
        self._made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        taken = None
        for _ in range(5):
            if _create_exclusive(path, self._record().to_json()):
                return taken
            current = self.read()
            if current is None:
                continue  # released between our attempt and our look: try again
            reason = current.stale_reason()
            if reason is None:
                self._forget_made()
                raise LeaseHeldError(self.path, current)
            if _remove_local_if(path, functools.partial(operator.eq, current)):
                taken = (current, reason)
        self._forget_made()
        raise LeaseHeldError(self.path, self.read(), raced=True)

    def _forget_made(self) -> None:
        for folder in self._made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._made = []

    def _acquire_remote(self) -> tuple[LeaseHolder, str] | None:
        current = self.read()
        taken = None
        if current is not None:
            reason = current.stale_reason()
            if reason is None:
                raise LeaseHeldError(self.path, current)
            taken = (current, reason)
        self.path.write_text(self._record().to_json())
        time.sleep(self.settle_s)  # a racing writer's PUT lands in this window: last one wins
        again = self.read()
        if again is None or again.token != self.token:
            raise LeaseHeldError(self.path, again, raced=True)
        return taken

    # -- holding -------------------------------------------------------------------------------
    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._beat():
                    return
            except Exception as e:  # a network blip: the next beat tries again
                log.warning("could not refresh the lease %s: %s", self.path, e)

    def _beat(self) -> bool:
        """Refreshes the lease; False once it is lost to another process."""
        current = self.read()
        if self._stop.is_set():  # released meanwhile: writing now would revive the lease
            return False
        if current is not None and current.token != self.token:
            self.lost = current
            log.error(
                "lost the lease %s to another process (%s); stop this one: two drivers of "
                "one study damage its state",
                self.path,
                current.describe(),
            )
            return False
        if not self.path.is_local:
            self.path.write_text(self._record().to_json())
        elif current is None:  # deleted by hand while we run: put it back, unless someone was first
            if self.path.parent.exists():
                _create_exclusive(self.path.local_path, self._record().to_json())
        else:
            self.path.write_text(self._record().to_json())
        return True


def read_lease(path: Location) -> LeaseHolder | None:
    """The holder a lease file names, or None when there is no lease."""
    try:
        return LeaseHolder.parse(path.read_bytes().decode("utf-8", errors="replace"))
    except FileNotFoundError:
        return None


def live_holder(folder: Location) -> LeaseHolder | None:
    """Who holds the lease of a study folder, if it is not stale."""
    holder = read_lease(folder / LEASE_FILE)
    return holder if holder is not None and holder.stale_reason() is None else None


def stale_after(heartbeat_s: float) -> float:
    """Seconds without a heartbeat after which a lease is stale."""
    return _env_float(STALE_ENV, 3 * heartbeat_s + _MARGIN_S)


def command_line() -> str:
    """This process's command line as typed (``normstudy run …``), credentials masked."""
    from normstudy.redact import redact

    argv = list(sys.argv) or ["python"]
    first = Path(argv[0])
    argv[0] = first.parent.name if first.name == "__main__.py" else first.name
    return redact(shlex.join(argv))


def _heartbeat_s() -> float:
    return _env_float(HEARTBEAT_ENV, 10.0)


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise StorageError(f"${name}={text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise StorageError(f"${name}={text!r} is not a number of seconds")
    return value


def _age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    with contextlib.suppress(OSError, IndexError):  # a zombie has ended, though not reaped
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _create_exclusive(path: Path, text: str) -> bool:
    """Publishes ``text`` at ``path`` whole, unless ``path`` exists (then False)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), 0o644)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _remove_local_if(path: Path, matches: Callable[[LeaseHolder], Any]) -> bool:
    """Deletes the lease at ``path`` if it ``matches``; True if it did. Renaming it aside first
    makes the check and the removal one step: a lease that changed in between is put back."""
    aside = path.with_name(f".{path.name}.{secrets.token_hex(8)}.aside")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        if matches(LeaseHolder.parse(aside.read_text(encoding="utf-8", errors="replace"))):
            return True
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        return False
    finally:
        aside.unlink(missing_ok=True)
