"""BN noise measurement (000, Sect. 3.1): V = (μ − M)/σ, U = σ/S, and the 1/k law."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import typer
import yaml
from torch import nn
from typer.testing import CliRunner

from normstudy.cli_diagnostics import register
from normstudy.data import Split
from normstudy.diagnostics.bn_noise import (
    COLUMNS,
    measure_bn_noise,
    noise_slopes,
    restore_trial,
)
from normstudy.spec import resolve_config, validate_data
from normstudy.trial import LocalReporter, run_trial

torch.set_num_threads(1)

TRIAL_ID = "ab12c_00000"
PARAMS = {"train.lr": 0.05}


def _inverse_chi_moments(n: int) -> tuple[float, float]:
    """E[U], Var[U] of U = √n/χ_{n−1}."""
    d = n - 1
    first = math.sqrt(n / 2) * math.exp(math.lgamma((d - 1) / 2) - math.lgamma(d / 2))
    return first, n / (d - 2) - first**2


def test_statistics_of_iid_normal_inputs_follow_the_model_of_000() -> None:
    """A BN whose running averages are the population's, fed i.i.d. N(m, s²) inputs: V has
    variance 1/n, U the inverse-chi law, and the output variance E_x̂ Var((x̂ + V)·U) is
    1/(n − 3) + Var(U) (V and U independent: sample mean and variance of normal data)."""
    channels, z = 32, 4
    torch.manual_seed(0)
    x = torch.randn(8000, channels, 2, 2) * 3 + 2
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.fill_(2.0)
        bn.running_var.fill_(9.0)
    model = nn.Sequential(bn)
    generator = torch.Generator().manual_seed(1)
    table = measure_bn_noise(model, Split(x, torch.zeros(8000)), [8, 16, 64], 60, generator)
    assert list(table.columns) == COLUMNS and len(table) == 3
    for row in table.to_dict("records"):
        n = row["k"] * z
        assert row["z"] == z and row["n"] == n
        mean_u, var_u = _inverse_chi_moments(n)
        assert row["var_v"] * n == pytest.approx(1.0, rel=0.2)
        assert abs(row["mean_v"]) < 5 / math.sqrt(n * 60 * channels)
        assert row["mean_u"] == pytest.approx(mean_u, abs=0.03)
        assert row["std_u"] == pytest.approx(math.sqrt(var_u), rel=0.2)
        assert row["out_var"] == pytest.approx(1 / (n - 3) + var_u, rel=0.2)
    assert noise_slopes(table)["0"] == pytest.approx(-1.0, abs=0.15)


def test_measurement_leaves_the_model_as_it_was() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU())
    model[2].train()  # mixed modes must come back as they were
    model[1].eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    split = Split(torch.randn(100, 3, 6, 6), torch.zeros(100))
    rng = torch.get_rng_state()
    table = measure_bn_noise(model, split, [4, 8], 3, torch.Generator().manual_seed(0))
    assert set(table["layer"]) == {"1"}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_bad_arguments_are_refused() -> None:
    model, split = (
        nn.Sequential(nn.BatchNorm2d(2)),
        Split(torch.randn(10, 2, 2, 2), torch.zeros(10)),
    )
    with pytest.raises(ValueError, match="batch sizes must be in"):
        measure_bn_noise(model, split, [4, 11], 5, torch.Generator())
    with pytest.raises(ValueError, match="batches must be at least 2"):
        measure_bn_noise(model, split, [4], 1, torch.Generator())


# --- a trained network, through the real trial and its checkpoint ------------------------------


def _spec() -> Any:
    return validate_data(
        {
            "name": "bn-noise",
            "dataset": {"name": "digits", "image_size": 16},
            "model": {"name": "test_resnet", "cifar_stem": True},
            "train": {"epochs": 2, "batch_size": 32, "lr": 0.1, "threads": 1},
            "evaluation": {"evalmode_train_samples": 0, "dropout50": False, "coverage": False},
            "search": {
                "sampler": "grid",
                "space": {"train.lr": {"type": "grid", "values": [0.05]}},
            },
        }
    )


@pytest.fixture(scope="module")
def study_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study home as ``normstudy run`` leaves it: study.yaml, and a Tune trial folder with
    params.json and checkpoints (the trial trained for real, by the trial function)."""
    home = tmp_path_factory.mktemp("home")
    spec = _spec()
    root = home / spec.name
    trial_dir = root / "tune" / f"tune_trainable_{TRIAL_ID}_0_train.lr=0.0500_2025-01-01"
    trial_dir.mkdir(parents=True)
    root.joinpath("study.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    trial_dir.joinpath("params.json").write_text(json.dumps(PARAMS))
    config = resolve_config(spec.trial_base(), PARAMS, spec.variants)
    run_trial(config, LocalReporter(trial_dir / "checkpoint_000002"))
    # An older checkpoint beside it must not be the one loaded.
    shutil.copytree(trial_dir / "checkpoint_000002", trial_dir / "checkpoint_000001")
    state = torch.load(trial_dir / "checkpoint_000001" / "state.pt", weights_only=False)
    state["model"] = {k: torch.zeros_like(v) for k, v in state["model"].items()}
    torch.save(state, trial_dir / "checkpoint_000001" / "state.pt")
    return home


def _trial_dir(home: Path) -> Path:
    (found,) = (home / "bn-noise" / "tune").iterdir()
    return found


def test_bn_noise_of_a_trained_network_falls_as_one_over_k(study_home: Path) -> None:
    """000, Fig. 4: the variance of BN's output falls as 1/k (slope −1 in log-log)."""
    spec = _spec()
    checkpoint = _trial_dir(study_home) / "checkpoint_000002"
    trial = restore_trial(resolve_config(spec.trial_base(), PARAMS), checkpoint)
    saved = torch.load(checkpoint / "state.pt", weights_only=False)
    assert trial.epoch == 2 and trial.cfg.train.lr == 0.05
    assert all(torch.equal(v, saved["model"][k]) for k, v in trial.model.state_dict().items())
    generator = torch.Generator().manual_seed(0)
    sizes = [8, 16, 32, 64, 128]
    table = measure_bn_noise(trial.model, trial.splits.train, sizes, 20, generator)
    slopes = noise_slopes(table)
    assert len(slopes) == len({n for n, _ in _bn_layers(trial.model)}) > 3
    median = sorted(slopes.values())[len(slopes) // 2]
    assert -1.3 <= median <= -0.7, slopes
    assert all(-1.6 <= s <= -0.5 for s in slopes.values()), slopes
    assert (table.groupby("layer")["std_u"].apply(lambda s: s.is_monotonic_decreasing)).all()


def _bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


def test_cli_measures_the_latest_checkpoint_of_a_trial(study_home: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command, so the first keeps its name
    csv = tmp_path / "noise.csv"
    args = ["measure-bn-noise", "bn-noise", TRIAL_ID, "--home", str(study_home)]
    result = CliRunner().invoke(
        app, [*args, "--sizes", "8,32,128", "--batches", "5", "--csv", str(csv)]
    )
    assert result.exit_code == 0, result.output
    assert "median slope" in result.output and "layer1.0.bn1" in result.output
    written = pd.read_csv(csv)
    assert list(written.columns) == COLUMNS and set(written["k"]) == {8, 32, 128}
    # The same numbers as measuring the newest checkpoint directly (seed 0), not the older one.
    trial = restore_trial(
        resolve_config(_spec().trial_base(), PARAMS), _trial_dir(study_home) / "checkpoint_000002"
    )
    direct = measure_bn_noise(
        trial.model, trial.splits.train, [8, 32, 128], 5, torch.Generator().manual_seed(0)
    )
    pd.testing.assert_frame_equal(written, direct, check_exact=False, rtol=1e-9)
    missing = CliRunner().invoke(
        app, ["measure-bn-noise", "bn-noise", "zz99", "--home", str(study_home)]
    )
    assert missing.exit_code == 2 and "no trial folders" in missing.output
    bad = CliRunner().invoke(app, [*args, "--sizes", "8"])
    assert bad.exit_code == 2 and "at least two batch sizes" in bad.output
