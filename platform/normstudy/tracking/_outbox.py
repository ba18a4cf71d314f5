"""The MLflow outbox: operations waiting for the server, in order, kept in the study folder.

The file (``mlflow_outbox.jsonl``) holds one JSON object per line, oldest first. It may still
hold an operation that was delivered just before a crash; that is harmless, because every
operation is idempotent (see `normstudy.tracking._mlflow.RunSender`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from normstudy.storage import Location

OUTBOX_NAME = "mlflow_outbox.jsonl"
Op = dict[str, Any]


def outbox_file(state_file: Location) -> Location:
    """The outbox of the study whose MLflow run ids are kept in ``state_file``."""
    return state_file.parent / OUTBOX_NAME


def describe(op: Op) -> str:
    """What an operation logs, in a few words (for failure lines)."""
    trial = op.get("trial_id")
    return {
        "start_study": "start study run",
        "start_trial": f"start run of {trial}",
        "metrics": f"metrics of {trial} epoch {op.get('step')}",
        "tags": f"tags of {trial}",
        "artifacts": f"artifacts of {trial}",
        "end_trial": f"end run of {trial}",
        "end_study": "end study run",
    }.get(str(op.get("op")), f"operation {op.get('op')!r}")


class Outbox:
    """Operations in order, in memory and (when saved) in ``file``; safe across threads.

    ``file`` None keeps them in memory only (the study folder could not be read at start).
    """

    def __init__(self, file: Location | None, ops: list[Op] | None = None) -> None:
        self.file = file
        self.problems: list[str] = []
        self.dirty = False
        self.saved_at = float("-inf")
        self.on_disk = bool(ops)
        now = time.monotonic()
        self._ops: deque[tuple[Op, float]] = deque((op, now) for op in ops or [])
        self._lock = threading.Lock()  # guards _ops and dirty
        self._write = threading.Lock()  # one file write at a time, in snapshot order

    @classmethod
    def load(cls, file: Location) -> Outbox:
        """The outbox kept in ``file`` (empty when there is none). A line that is not JSON (the
        tail of a write cut short) is left out and named in `problems`. Storage errors raise."""
        text = file.read_text() if file.exists() else ""
        ops, bad = [], []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                op = json.loads(line)
            except ValueError:
                bad.append(number)
                continue
            if isinstance(op, dict) and "op" in op:
                ops.append(op)
        box = cls(file, ops)
        box.on_disk = bool(text)
        if bad:
            box.problems.append(f"{file}: lines {bad} are not JSON; left out")
        return box

    def __len__(self) -> int:
        return len(self._ops)

    def add(self, op: Op) -> None:
        with self._lock:
            self._ops.append((op, time.monotonic()))
            self.dirty = True

    def head(self) -> Op:
        return self._ops[0][0]

    def pop(self) -> None:
        """Forgets the first operation (it was delivered, or can never be)."""
        with self._lock:
            self._ops.popleft()
            self.dirty = True

    def pending(self) -> list[Op]:
        with self._lock:
            return [op for op, _ in self._ops]

    def waiting_s(self) -> float:
        """How long the first operation has waited (0 when there is none)."""
        with self._lock:
            return time.monotonic() - self._ops[0][1] if self._ops else 0.0

    def save(self) -> None:
        """Writes the waiting operations to the file whole (atomically), or deletes the file
        when none wait. Storage errors raise; the operations stay in memory."""
        with self._write:
            with self._lock:
                ops = [op for op, _ in self._ops]
                self.dirty, self.saved_at = False, time.monotonic()
            if self.file is None:
                return
            try:
                if ops:
                    self.file.write_text("".join(json.dumps(op, default=str) + "\n" for op in ops))
                    self.on_disk = True
                elif self.on_disk:
                    self.file.delete()
                    self.on_disk = False
            except BaseException:
                self.dirty = True
                raise
