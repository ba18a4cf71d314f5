"""The live view of `run`: a line per running trial with its epoch, score and time left."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from rich.console import Console

from normstudy.search._live import LiveView


def _trial(trial_id: str, status: str, last: dict[str, Any], lr: float) -> Any:
    config = {"train": {"lr": lr, "epochs": 5}, "plugins": {"gamma_init": {"value": 0.21}}}
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=last, config=config)


def _view(console: Console) -> LiveView:
    return LiveView(
        console,
        total=4,
        epochs=5,
        score_key="best/val/acc",
        mode="max",
        searched=["train.lr", "plugins.gamma_init.value"],
    )


def _text(view: LiveView, trials: list[Any]) -> str:
    console = Console(record=True, width=150, force_terminal=False)
    console.print(view.render(trials))
    return console.export_text()


def test_each_running_trial_has_its_epoch_score_and_eta() -> None:
    view = _view(Console(force_terminal=False))
    trials = [
        _trial("a1", "RUNNING", {"epoch": 2, "epoch_time_s": 10.0, "best/val/acc": 0.5}, 0.068),
        _trial("b2", "RUNNING", {}, 0.01),
        _trial("c3", "TERMINATED", {"epoch": 5, "best/val/acc": 0.75}, 0.1),
        _trial("d4", "PENDING", {}, 0.2),
    ]
    text = _text(view, trials)
    head, *lines = text.splitlines()
    assert "4/4 started" in head and "2 running" in head and "1 finished" in head
    assert "best val/acc 0.7500 (c3)" in head
    a1 = next(line for line in lines if line.startswith("a1"))
    # epoch 2 of 5, three epochs of 10 s left; the searched values under their short names
    assert "2/5" in a1 and "0.5000" in a1 and "0m30s" in a1
    assert "lr=0.068" in a1 and "value=0.21" in a1
    b2 = next(line for line in lines if line.startswith("b2"))
    assert "starting/5" in b2
    assert not any(line.startswith(("c3", "d4")) for line in lines)  # only running trials


def test_min_mode_picks_the_lowest_score() -> None:
    view = LiveView(
        Console(force_terminal=False),
        total=2,
        epochs=3,
        score_key="best/val/loss",
        mode="min",
        searched=[],
    )
    trials = [
        _trial("a1", "TERMINATED", {"best/val/loss": 0.9}, 0.1),
        _trial("b2", "TERMINATED", {"best/val/loss": 0.4}, 0.1),
    ]
    assert "best val/loss 0.4000 (b2)" in _text(view, trials)


def test_the_view_shows_before_the_first_trial_step() -> None:
    console = Console(record=True, width=120, force_terminal=True)
    view = _view(console)
    view.start("starting Ray")
    view.stop()
    assert "starting Ray (0m0" in console.export_text()
