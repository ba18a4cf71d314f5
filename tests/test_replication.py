"""Seed replication end to end: a TPE study with two seeds runs every configuration it proposes
with both, and Optuna is told their mean."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_study_integration import FAST, _normstudy, _rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_tpe_runs_each_configuration_on_every_seed_and_learns_the_mean(
    tmp_path: Path, quickstart: Path
) -> None:
    import optuna

    home = tmp_path / "home"
    done = _normstudy(
        "run", str(quickstart), "--home", str(home), *FAST,
        "--set", "search.num_samples=2", "--set", "seeds=[1, 2]",
        "--set", "train.epochs=2",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = _rows(home, "quickstart")
    keys = ("config.train.lr", "config.plugins.gamma_init.value", "config.plugins.lr_divisor.gamma")
    best: dict[tuple, dict[int, float]] = {}
    for r in rows:
        per_seed = best.setdefault(tuple(r[k] for k in keys), {})
        per_seed[r["seed"]] = max(per_seed.get(r["seed"], float("-inf")), r["val/acc"])
    assert len({r["trial_id"] for r in rows}) == 4
    assert len(best) == 2 and all(set(s) == {1, 2} for s in best.values())

    storage = f"sqlite:///{home / 'quickstart' / 'optuna.db'}"
    trials = optuna.load_study(study_name="quickstart", storage=storage).trials
    assert len(trials) == 2 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    for t in trials:
        assert "seed" not in t.params
        (config,) = [
            c for c in best if c == tuple(t.params[k.removeprefix("config.")] for k in keys)
        ]
        assert t.value == pytest.approx(sum(best[config].values()) / 2)
        assert set(t.intermediate_values) == {1, 2}
