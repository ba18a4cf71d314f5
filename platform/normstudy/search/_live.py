"""The live view of `normstudy run`: the study's counts, best so far, and a line per running
trial (epoch k/E, its score, its ETA), on the terminal from the first second."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from normstudy.report import format_duration
from normstudy.search._reconcile import _flat

if TYPE_CHECKING:
    from ray.tune.experiment import Trial
    from rich.console import Console

_REFRESH_S = 0.5


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class LiveView(Callback):
    """Trials running / finished / errored, the best score so far and, per running trial, its
    epoch, score and time left. On a terminal it redraws in place (``start`` shows it before
    Ray is up); elsewhere (logs, CI) it prints one line per finished trial."""

    def __init__(
        self,
        console: Console,
        *,
        total: int,
        epochs: int,
        score_key: str,
        mode: str,
        searched: list[str],
    ) -> None:
        self.console, self.total, self.epochs = console, total, epochs
        self.score_key, self.mode, self.searched = score_key, mode, searched
        self._live: Any = None
        self._last = 0.0
        self._phase = ""
        self._started = time.monotonic()
        self._trials: list[Trial] = []

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks: this one is given anew
        return {}

    # -- rendering -------------------------------------------------------------------------
    def _score(self, trial: Trial) -> float | None:
        value = (trial.last_result or {}).get(self.score_key)
        return float(value) if isinstance(value, int | float) else None

    def _best(self, trials: list[Trial]) -> tuple[float, Trial] | None:
        scored = [(s, t) for t in trials if (s := self._score(t)) is not None]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda st: st[0])

    def _eta(self, trial: Trial) -> float | None:
        last = trial.last_result or {}
        epoch, per_epoch = last.get("epoch"), last.get("epoch_time_s")
        if not isinstance(epoch, int | float) or not isinstance(per_epoch, int | float):
            return None
        return max(0.0, (self.epochs - epoch) * float(per_epoch))

    def _trial_row(self, trial: Trial) -> list[str]:
        last = trial.last_result or {}
        epoch = last.get("epoch")
        shown = ", ".join(
            f"{k.rsplit('.', 1)[-1]}={_short(v)}"
            for k, v in _flat(dict(trial.config)).items()
            if k in self.searched
        )
        score = self._score(trial)
        return [
            trial.trial_id,
            f"{epoch}/{self.epochs}" if epoch is not None else f"starting/{self.epochs}",
            f"{score:.4f}" if score is not None else "-",
            format_duration(self._eta(trial)),
            shown,
        ]

    def render(self, trials: list[Trial]) -> Any:
        from rich.console import Group
        from rich.table import Table

        elapsed = format_duration(time.monotonic() - self._started)
        if self._phase:
            return f"{self._phase} ({elapsed})"
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        best = self._best(trials)
        name = self.score_key.removeprefix("best/")
        head = (
            f"trials {len(trials)}/{self.total} started: {counts.get('RUNNING', 0)} running, "
            f"{counts.get('TERMINATED', 0)} finished, {counts.get('ERROR', 0)} errored, "
            f"{counts.get('PENDING', 0)} pending; best {name} "
            + (f"{best[0]:.4f} ({best[1].trial_id})" if best else "-")
            + f"; {elapsed}"
        )
        running = [t for t in trials if t.status == "RUNNING"]
        if not running:
            return head
        table = Table("trial", "epoch", name, "ETA", "searched", box=None, pad_edge=False)
        for trial in running:
            table.add_row(*self._trial_row(trial))
        return Group(head, table)

    def __rich__(self) -> Any:  # redrawn by rich twice a second: elapsed times move on
        return self.render(self._trials)

    # -- the display -----------------------------------------------------------------------
    def start(self, phase: str) -> None:
        """Shows ``phase`` (e.g. 'starting Ray') until the first trial step; terminal only."""
        self._phase = phase
        if not self.console.is_terminal:
            return
        from rich.live import Live

        if self._live is None:
            self._live = Live(self, console=self.console, refresh_per_second=2)
            self._live.start()
        self._live.refresh()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        self._phase, self._trials = "", list(trials)
        if not self.console.is_terminal or time.monotonic() - self._last < _REFRESH_S:
            return
        if self._live is None:
            self.start("")
        self._live.refresh()
        self._last = time.monotonic()

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        if not self.console.is_terminal:
            done = sum(t.status in ("TERMINATED", "ERROR") for t in trials) + 1
            last = trial.last_result or {}
            score = last.get(self.score_key)
            shown = f"{score:.4f}" if isinstance(score, int | float) else "-"
            self.console.print(
                f"[{done}/{self.total}] {trial.trial_id} done after {last.get('epoch', '?')} "
                f"epochs: {self.score_key} {shown}",
                highlight=False,
            )

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.console.print(
            f"[red]{trial.trial_id} failed[/red] (see its error.txt in the Tune experiment folder)"
        )

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._trials = list(trials)
        if self._live is not None:
            self._live.refresh()
        self.stop()
