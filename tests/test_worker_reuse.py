"""Trials of a study share worker processes (Tune's reuse_actors) and get the metrics a fresh
process gives them."""

from __future__ import annotations

from pathlib import Path

import pytest

from normstudy.spec._metrics import TIMINGS
from tests.test_study_integration import FAST, _normstudy, _rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_reused_worker_gives_the_metrics_of_a_fresh_one(tmp_path: Path, quickstart: Path) -> None:
    from ray.tune import ExperimentAnalysis

    from normstudy.spec import load_spec, resolve_config
    from normstudy.trial import LocalReporter, run_trial

    home = tmp_path / "home"
    args = [*FAST, "--set", "search.num_samples=3", "--set", "search.max_concurrent=1"]
    done = _normstudy("run", str(quickstart), "--home", str(home), *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = ExperimentAnalysis(str(home / "quickstart" / "tune")).trials
    pids = {t.last_result["pid"] for t in trials}
    assert len(trials) == 3 and len(pids) == 1, "the three trials should share one worker"

    spec = load_spec(home / "quickstart" / "study.yaml")
    rows = _rows(home, "quickstart")
    for trial in trials:
        fresh = LocalReporter()
        run_trial(resolve_config(spec.trial_base(), dict(trial.config), spec.variants), fresh)
        mine = sorted(
            (r for r in rows if r["trial_id"] == trial.trial_id), key=lambda r: r["epoch"]
        )
        assert len(mine) == len(fresh.history)
        for row, expected in zip(mine, fresh.history, strict=True):
            for key, value in expected.items():
                if isinstance(value, float) and key not in TIMINGS:
                    assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (key, row["epoch"])
        assert all(r["setup_s"] > 0 for r in mine)
