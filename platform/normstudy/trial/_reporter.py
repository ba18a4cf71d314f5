"""Where a trial's per-epoch metrics and checkpoints go: a list in memory, or Ray Tune."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Protocol

CHECKPOINT_FILE = "state.pt"


class Reporter(Protocol):
    def restore(self) -> dict[str, Any] | None:
        """The checkpoint state to resume from, or None for a fresh start."""

    def report(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        """Record one epoch's metrics and the state to resume from after it."""


class LocalReporter:
    """Keeps metrics in ``history``; with ``checkpoint_dir`` saves and resumes state (no Ray)."""

    def __init__(self, checkpoint_dir: str | Path | None = None) -> None:
        self.history: list[dict[str, Any]] = []
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None

    def restore(self) -> dict[str, Any] | None:
        if self.checkpoint_dir and (self.checkpoint_dir / CHECKPOINT_FILE).exists():
            return load_state(self.checkpoint_dir)
        return None

    def report(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        self.history.append(dict(metrics))
        if self.checkpoint_dir:
            save_state(self.checkpoint_dir, state)


class TuneReporter:
    """Reports through ``tune.report`` with a checkpoint; resumes from ``tune.get_checkpoint``."""

    def restore(self) -> dict[str, Any] | None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return load_state(Path(folder))

    def report(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        import ray
        from ray import tune

        # The node the epoch ran on: results show where each trial ran (and moved after a node
        # was lost); host names and IPs do not tell nodes of one machine apart.
        node = ray.get_runtime_context().get_node_id()
        with tempfile.TemporaryDirectory() as folder:
            save_state(Path(folder), state)
            tune.report(
                {**metrics, "node_id": node}, checkpoint=tune.Checkpoint.from_directory(folder)
            )


def save_state(folder: Path, state: dict[str, Any]) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(folder / CHECKPOINT_FILE)


def load_state(folder: Path) -> dict[str, Any]:
    import torch

    return torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
