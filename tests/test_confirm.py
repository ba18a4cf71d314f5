"""`normstudy confirm`: the top configurations of a search and a baseline over MD5 seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from normstudy.confirm import ConfirmError, confirm_spec, ranked_configurations
from normstudy.results import TrialScore
from normstudy.search._space import num_trials
from normstudy.seeds import md5_seeds
from normstudy.spec import load_spec, resolve_config

KEYS = ("plugins.gamma_init.value", "plugins.lr_divisor.gamma", "train.lr")


def _score(trial: str, score: float | None, g: float, c: float, lr: float, seed: int = 0):
    config = dict(zip(KEYS, (g, c, lr), strict=True)) | {"seed": seed, "train.epochs": 6}
    return TrialScore(trial, seed, "completed", score, 1, 1, config)


@pytest.fixture
def search(quickstart: Path):
    return load_spec(quickstart)


SCORES = [
    _score("a", 0.50, 0.1, 10.0, 0.05),
    _score("b", 0.90, 0.2, 20.0, 0.06),
    _score("c", 0.70, 0.3, 30.0, 0.07, seed=1),
    _score("d", 0.80, 0.3, 30.0, 0.07, seed=2),  # c and d: one configuration, mean 0.75
    _score("e", None, 0.4, 40.0, 0.08),  # no score yet: not a candidate
]


def test_configurations_are_ranked_by_their_mean_over_seeds(search) -> None:
    ranked = ranked_configurations(search, SCORES)
    assert [(r[0]["plugins.gamma_init.value"], r[2]) for r in ranked] == [
        (0.2, 1),
        (0.3, 2),
        (0.1, 1),
    ]
    assert ranked[1][1] == pytest.approx(0.75)


def test_the_confirm_study_is_top_k_and_a_baseline_over_md5_seeds(search) -> None:
    base = {"plugins.gamma_init.value": 1.0, "plugins.lr_divisor.gamma": 1.0}
    spec = confirm_spec(search, SCORES, top=2, seeds=15, baseline=base)
    assert spec.name == "quickstart-confirm" and spec.confirms == "quickstart"
    assert list(spec.configs) == ["top1", "top2", "baseline"]
    assert spec.seed_list() == md5_seeds(15)
    assert spec.search.sampler == "grid" and spec.search.scheduler.name == "fifo"
    assert num_trials(spec) == 3 * 15
    top2 = resolve_config(spec.trial_base(), {"configuration": "top2", "seed": 7})
    assert top2["configuration"] == "top2" and top2["seed"] == 7
    assert top2["plugins"]["gamma_init"]["value"] == 0.3 and top2["train"]["lr"] == 0.07
    baseline = resolve_config(spec.trial_base(), {"configuration": "baseline"})
    assert baseline["plugins"]["lr_divisor"]["gamma"] == 1.0
    assert baseline["train"]["lr"] == search.train.lr  # left out: the base value
    assert "configurations" not in baseline


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"top": 4}, "--top 4: study 'quickstart' has 3 configurations"),
        ({"top": 0}, "--top must be at least 1"),
        ({"seeds": 1}, "--seeds must be 2 to 1000"),
        ({"baseline": {"plugins.gamma_init.valu": 1.0}}, "plugins.gamma_init.valu"),
        ({"baseline": {"train.lr": -1.0}}, "--baseline"),
        ({"baseline": {"nothing.here": 1}}, "nothing"),
    ],
)
def test_bad_requests_name_the_option(search, kwargs: dict, says: str) -> None:
    args = {"top": 2, "seeds": 15, "baseline": {}} | kwargs
    with pytest.raises(ConfirmError, match=None) as err:
        confirm_spec(search, SCORES, **args)
    assert says in str(err.value)


def test_a_confirm_study_is_not_confirmed_again(search) -> None:
    spec = confirm_spec(search, SCORES, top=1, seeds=3, baseline={})
    with pytest.raises(ConfirmError, match="itself a confirm study"):
        confirm_spec(spec, SCORES, top=1, seeds=3, baseline={})


@pytest.mark.integration
@pytest.mark.slow
def test_confirm_runs_the_best_and_a_baseline_over_fifteen_seeds(
    tmp_path: Path, quickstart: Path
) -> None:
    from mlflow import MlflowClient

    from tests.test_study_integration import FAST, _normstudy, _rows

    home = tmp_path / "home"
    fast = [*FAST, "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=2"]
    search = _normstudy(
        "run", str(quickstart), "--home", str(home), *fast, "--set", "search.num_samples=2"
    )
    assert search.returncode == 0, search.stderr[-3000:]
    ranked = {r["trial_id"]: r for r in _rows(home, "quickstart")}
    # The confirm study inherits the search's settings (its --set values included).
    done = _normstudy(
        "confirm", "quickstart", "--home", str(home), "--top", "1", "--seeds", "15",
        "--baseline", "plugins.gamma_init.value=1.0", "--baseline", "plugins.lr_divisor.gamma=1",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = _rows(home, "quickstart-confirm")
    assert len(rows) == 30 and {r["status"] for r in rows} == {"completed"}
    by_config: dict[str, set[int]] = {}
    for r in rows:
        by_config.setdefault(r["config.configuration"], set()).add(r["seed"])
    assert by_config == {"top1": set(md5_seeds(15)), "baseline": set(md5_seeds(15))}
    best = max(ranked.values(), key=lambda r: r["best/val/acc"])
    top1 = next(r for r in rows if r["config.configuration"] == "top1")
    assert top1["config.train.lr"] == pytest.approx(best["config.train.lr"])
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "quickstart-confirm"]
    (parent,) = client.search_runs([exp.experiment_id], "tags.`normstudy.role` = 'study'")
    assert parent.data.tags["normstudy.confirms"] == "quickstart"

    # Its report is the paper table: top1 against the baseline, paired over the 15 seeds.
    import csv

    report = _normstudy(
        "report", "quickstart-confirm", "--home", str(home), "--format", "csv",
        "--out", str(tmp_path / "rep"),
    )  # fmt: skip
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    with next((tmp_path / "rep").glob("*configs*.csv")).open() as f:
        table = list(csv.DictReader(f))
    holm = next(c for c in table[0] if c.startswith("p Holm"))
    row = {r["configuration"]: r for r in table}
    assert set(row) == {"top1", "baseline"}
    assert 0.0 <= float(row["top1"][holm]) <= 1.0 and not row["baseline"][holm]
