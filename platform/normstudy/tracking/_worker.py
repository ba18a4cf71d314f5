"""Delivery of the outbox: in order, on one daemon thread; the study never waits on MLflow.

While the server answers, operations are sent as they come. Once one fails for want of an
answer, the server counts as down: nothing else is attempted (each try would cost a timeout),
operations wait in the outbox (saved to its file), and only a probe talks to the server, every
``retry_s``. When a probe is answered, the outbox is sent in order.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from normstudy.tracking._client import is_permanent, why
from normstudy.tracking._outbox import describe

if TYPE_CHECKING:
    from normstudy.tracking._mlflow import RunSender
    from normstudy.tracking._outbox import Outbox

log = logging.getLogger(__name__)

SAVE_S = 1.0  # at most one outbox write per second
MAX_ATTEMPTS = 3  # an operation failing this often while probes are answered is dropped


class Delivery:
    """Sends ``outbox`` through ``sender``; `failures` names the operations dropped."""

    def __init__(self, outbox: Outbox, sender: RunSender, *, retry_s: float) -> None:
        self.outbox, self.sender, self.retry_s = outbox, sender, retry_s
        self.failures: list[str] = []
        self.sent = 0
        self.up = True
        self.last_error = ""
        self._last_probe = float("-inf")
        self._attempts = 0  # failures of the outbox's first operation
        self._wake, self._closing = threading.Event(), threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="mlflow", daemon=True)

    # -- one step at a time (also used directly by `sync_outbox`) --------------------------
    def probe(self) -> bool:
        """Whether the server answers; sending resumes when it does."""
        err = self._ask()
        if err is not None:
            self._down(err)
            return False
        self.up = True
        return True

    def send_one(self) -> None:
        op = self.outbox.head()
        try:
            self.sender.send(op)
        except Exception as e:
            if not is_permanent(e):
                self._down(e)  # try again after the next answered probe
                if self._ask() is not None:
                    return
                self._attempts += 1  # the server answers, yet this operation fails
                if self._attempts < MAX_ATTEMPTS:
                    return
            self.failures.append(f"{describe(op)}: {why(e)}")
        else:
            self.sent += 1
        self.outbox.pop()
        self._attempts = 0

    def drain(self, deadline: float) -> None:
        """Sends while the server answers, until the outbox is empty or ``deadline``."""
        while self.up and len(self.outbox) and time.monotonic() < deadline:
            self.send_one()
            self.save(force=False)

    def save(self, *, force: bool) -> None:
        """Writes the outbox file when it changed: at once when ``force``, else at most once per
        `SAVE_S`, and only while something waits (server down, or operations backing up)."""
        box = self.outbox
        if not box.dirty:
            return
        if not force:
            if time.monotonic() - box.saved_at < SAVE_S:
                return
            if self.up and not box.on_disk and box.waiting_s() < SAVE_S:
                return
        try:
            box.save()
        except Exception as e:
            if not any(line.startswith("outbox file") for line in self.failures):
                self.failures.append(f"outbox file {box.file}: {why(e)}")

    def _ask(self) -> Exception | None:
        """Probes the server: None when it answers, else the error."""
        self._last_probe = time.monotonic()
        try:
            self.sender.probe()
        except Exception as e:
            return e
        return None

    def _down(self, err: BaseException) -> None:
        if self.up:
            log.info("MLflow does not answer (%s); operations wait in the outbox", why(err))
        self.up, self.last_error = False, why(err)

    # -- the thread ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def close(self, timeout_s: float) -> None:
        """Sends what waits, bounded by ``timeout_s`` (one probe if the server is down), then
        saves the outbox file with what is left."""
        self._deadline = time.monotonic() + timeout_s
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():  # stuck in a call: keep what waits on disk ourselves
            self.save(force=True)

    def _run(self) -> None:
        while not self._closing.is_set():
            if len(self.outbox) and self.up:
                self.send_one()
            elif len(self.outbox) and time.monotonic() - self._last_probe >= self.retry_s:
                self.probe()
            else:
                self._wake.wait(min(SAVE_S, self.retry_s))
                self._wake.clear()
            self.save(force=False)
        if len(self.outbox) and not self.up and time.monotonic() < self._deadline:
            self.probe()
        self.drain(self._deadline)
        self.save(force=True)
