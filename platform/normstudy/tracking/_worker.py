"""A background queue for tracking calls: the study never waits on a slow or dead server."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class BackgroundCalls:
    """Runs submitted calls in order on one daemon thread; records the ones that failed."""

    def __init__(self, name: str = "tracking") -> None:
        self._queue: queue.Queue[tuple[str, Callable[[], Any]] | None] = queue.Queue()
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, what: str, call: Callable[[], Any]) -> None:
        self._queue.put((what, call))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            what, call = item
            try:
                call()
            except Exception as err:
                self.failures.append(f"{what}: {type(err).__name__}: {str(err)[:200]}")
                log.debug("tracking call failed: %s", what, exc_info=True)

    def close(self, timeout_s: float) -> int:
        """Finish queued calls within ``timeout_s``; return how many were left undone."""
        self._queue.put(None)
        deadline = time.monotonic() + timeout_s
        self._thread.join(max(0.0, deadline - time.monotonic()))
        left = self._queue.qsize() if self._thread.is_alive() else 0
        if left:
            self.failures.append(f"{left} calls not sent before the {timeout_s:.0f}s deadline")
        return left
