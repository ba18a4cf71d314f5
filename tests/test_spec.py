"""The study description: every kind of bad input names the field, exits 2, writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from normstudy.spec import SpecError, apply_override, load_spec, validate_data
from normstudy.spec._metrics import PLAIN

BASE = {
    "name": "t",
    "dataset": {"name": "digits"},
    "model": {"name": "test_resnet"},
    "plugins": {"gamma_init": {"value": 0.5}},
    "search": {"space": {"train.lr": {"type": "loguniform", "low": 0.01, "high": 0.1}}},
}


def _bad(data: dict, *needles: str) -> str:
    with pytest.raises(SpecError) as info:
        validate_data(data, "x.yaml")
    text = str(info.value)
    for needle in needles:
        assert needle in text, text
    return text


def _with(key: str, value: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    apply_override(data, key, value)
    return data


def test_valid_base_and_defaults() -> None:
    spec = validate_data(BASE)
    assert spec.train.epochs == 10
    assert spec.plugins == {"gamma_init": {"value": 0.5, "keep_zero_init": False}}
    assert spec.seed_list() == [0]


def test_typo_key_names_field_and_allowed_keys() -> None:
    _bad(_with("train.epochz", 3), "train.epochz", "unknown key", "epochs")


def test_wrong_type_names_field() -> None:
    _bad(_with("train.batch_size", "big"), "train.batch_size", "integer")


def test_low_above_high() -> None:
    _bad(_with("search.space.train.lr.low", 1.0), "search.space['train.lr']", "must not exceed")


def test_space_key_without_field() -> None:
    data = _with("search.space", {"train.lrate": {"type": "uniform", "low": 0, "high": 1}})
    _bad(data, "search.space['train.lrate']", "no config field")


def test_space_key_of_disabled_plugin() -> None:
    data = _with(
        "search.space", {"plugins.lr_divisor.gamma": {"type": "uniform", "low": 1, "high": 2}}
    )
    _bad(data, "plugins.lr_divisor.gamma", "not enabled")


def test_space_values_checked_against_the_field() -> None:
    data = _with(
        "search.space", {"plugins.gamma_init.value": {"type": "uniform", "low": 0.1, "high": 2.0}}
    )
    _bad(data, "plugins.gamma_init.value", "2.0")


@pytest.mark.parametrize(
    ("key", "value", "needles"),
    [
        ("plugins.gamma_inti", {}, ("gamma_inti", "unknown plugin", "gamma_init")),
        ("model.name", "resnet51", ("model.name", "unknown timm model", "resnet50")),
        ("dataset.name", "mnist", ("dataset.name", "digits", "cifar10")),
        ("plugins.gamma_init.valu", 1, ("plugins.gamma_init.valu", "value")),
        ("dataset", {"name": "cifar10"}, ("dataset.root",)),
    ],
)
def test_unknown_names(key: str, value: object, needles: tuple[str, ...]) -> None:
    _bad(_with(key, value), *needles)


def test_grid_needs_values_and_seeds_replicate_one_metric() -> None:
    _bad(_with("search.sampler", "grid"), "grid", "train.lr")
    from normstudy.search._space import num_trials

    replicated = validate_data(_with("seeds", [1, 2, 3]))  # each configuration on 3 seeds
    assert num_trials(replicated) == 3 * replicated.search.num_samples
    seeded = _with("seeds", [1, 2, 3])
    apply_override(seeded, "search.space.seed", {"type": "categorical", "choices": [1, 2]})
    _bad(seeded, "search.space.seed", "not a hyperparameter")
    apply_override(seeded, "search.space", BASE["search"]["space"])
    apply_override(seeded, "search.metric", ["val/acc", "val/loss"])
    apply_override(seeded, "search.mode", ["max", "min"])
    _bad(seeded, "several objectives")


def test_multi_objective_rules() -> None:
    data = _with("search.metric", ["val/acc", "val/loss"])
    apply_override(data, "search.mode", ["max"])
    _bad(data, "search.mode", "2 metrics")
    apply_override(data, "search.mode", ["max", "min"])
    apply_override(data, "search.scheduler.name", "asha")
    _bad(data, "asha")


def test_md5_seeds() -> None:
    import hashlib

    spec = validate_data(_with("seeds", {"count": 3}) | {"search": {"sampler": "grid"}})
    expected = [int(hashlib.md5(str(k).encode()).hexdigest(), 16) % (2**31 - 1) for k in (1, 2, 3)]
    assert spec.seed_list() == expected


def test_override_keeps_dotted_space_keys(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(BASE))
    spec = load_spec(path, ["search.space.train.lr.high=0.5", "train.epochs=2"])
    assert spec.search.space["train.lr"].high == 0.5  # type: ignore[union-attr]
    assert spec.train.epochs == 2


@pytest.mark.parametrize("spec_file", sorted(Path(__file__).parents[1].glob("searchspaces/*.yaml")))
def test_shipped_searchspaces_validate(spec_file: Path) -> None:
    load_spec(spec_file)


def test_cli_validate_bad_input_exit_2_and_writes_nothing(tmp_path: Path, quickstart: Path) -> None:
    home = tmp_path / "home"
    cmd = [
        sys.executable,
        "-m",
        "normstudy",
        "run",
        str(quickstart),
        "--home",
        str(home),
        "--set",
        "train.epochz=1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.epochz" in proc.stderr
    assert not home.exists()


def test_timm_name_snapshot_matches_installed_timm() -> None:
    import timm

    from normstudy.spec._timm_names import timm_model_names

    assert timm_model_names() == frozenset(timm.list_models())


def test_light_commands_do_not_import_torch_or_ray(quickstart: Path, tmp_path: Path) -> None:
    from normstudy.results import ResultsSink, flatten_config
    from normstudy.spec import load_spec

    spec = load_spec(quickstart)
    (tmp_path / "quickstart").mkdir()
    (tmp_path / "quickstart" / "study.yaml").write_text(
        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    )
    sink = ResultsSink(tmp_path / "quickstart" / "results")
    for i, acc in enumerate([0.5, 0.7]):
        row = {
            "study": "quickstart",
            "trial_id": f"t{i}",
            "seed": 1,
            "epoch": 1,
            **flatten_config(spec.trial_base()),
            "val/acc": acc,
            "best/val/acc": acc,
        }
        sink.update(f"t{i}", [row], status="completed")
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from normstudy.cli import app\n"
        "def ok(*args):\n"
        "    r = CliRunner().invoke(app, list(args))\n"
        "    assert r.exit_code == 0, r.output\n"
        "    return r.output\n"
        f"ok('validate', {str(quickstart)!r})\n"
        "ok('--help')\n"
        "assert ok('--version').startswith('normstudy ')\n"
        "assert 'gamma_init' in ok('plugins')\n"
        f"out = ok('best', 'quickstart', '--home', {str(tmp_path)!r}, '--format', 'json')\n"
        "assert out.index('t1') < out.index('t0'), out\n"
        f"ok('report', 'quickstart', '--home', {str(tmp_path)!r}, '--format', 'md', "
        f"'--out', {str(tmp_path / 'rep')!r})\n"
        "heavy = [m for m in ('torch', 'ray', 'mlflow', 'timm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "rep" / "trials.md").exists()


VARIANTS = {
    **BASE,
    "plugins": {"input_norm": {}},
    "variants": {"plain": {}, "scaled": {"gamma_init": {"value": 0.5}, "lr_divisor": {}}},
    "search": {
        "sampler": "grid",
        "space": {
            "variant": {"type": "grid", "values": ["plain", "scaled"]},
            "plugins.gamma_init.value": {"type": "grid", "values": [0.1, 1.0]},
        },
    },
}


def test_variants_resolve_to_plugin_sets() -> None:
    from normstudy.spec import resolve_config

    spec = validate_data(VARIANTS)
    base = spec.trial_base()
    plain = resolve_config(
        base, {"variant": "plain", "plugins.gamma_init.value": 0.1}, spec.variants
    )
    assert plain["variant"] == "plain" and set(plain["plugins"]) == {"input_norm"}
    scaled = resolve_config(
        base, {"variant": "scaled", "plugins.gamma_init.value": 0.1}, spec.variants
    )
    assert set(scaled["plugins"]) == {"input_norm", "gamma_init", "lr_divisor"}
    assert scaled["plugins"]["gamma_init"]["value"] == 0.1


@pytest.mark.parametrize(
    ("key", "value", "needles"),
    [
        ("search.space.variant.values", ["plain", "other"], ("unknown variant", "other")),
        ("variants.scaled.gamma_inti", {}, ("variants.scaled", "gamma_inti")),
        ("variants.plain.gamma_init.value", 3, ("variants.plain", "gamma_init.value")),
    ],
)
def test_bad_variants(key: str, value: object, needles: tuple[str, ...]) -> None:
    data = yaml.safe_load(yaml.safe_dump(VARIANTS))
    apply_override(data, key, value)
    _bad(data, *needles)


def test_variants_must_be_searched() -> None:
    data = yaml.safe_load(yaml.safe_dump(VARIANTS))
    del data["search"]["space"]["variant"]
    _bad(data, "search.space.variant")


def test_asha_grace_period_within_epochs() -> None:
    data = _with("search.scheduler", {"name": "asha", "grace_period": 5})
    apply_override(data, "train.epochs", 2)
    _bad(data, "grace_period", "train.epochs")


def test_data_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = validate_data(_with("dataset", {"name": "cifar10", "root": "data/c10"}))
    assert spec.with_absolute_paths().dataset.root == str(tmp_path / "data" / "c10")


def test_every_grid_point_passes_the_plugins_checks() -> None:
    """Each value may be fine alone while a combination is impossible (ghost batches must
    divide the training batch): the grid sampler's points are all checked."""
    data = _with("plugins", {"norm_batch": {"size": 8}})
    apply_override(
        data,
        "search",
        {
            "sampler": "grid",
            "space": {
                "plugins.norm_batch.size": {"type": "grid", "values": [8, 16]},
                "train.batch_size": {"type": "grid", "values": [16, 24]},
            },
        },
    )
    _bad(data, "grid point", "plugins.norm_batch.size", "train.batch_size")


# -- reading: UTF-8, one value per key, bounded size and aliases ------------------------------


def _bad_file(tmp_path: Path, content: str | bytes, *needles: str) -> str:
    path = tmp_path / "s.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    text = str(info.value)
    for needle in needles:
        assert needle in text, text
    return text


ALIAS_BOMB = (
    "name: bomb\nmodel:\n  name: test_resnet\n  kwargs:\n    l0: &l0 [lol, lol, lol]\n"
    + "".join(f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
)


def test_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    """A 1 kB file whose nine levels of nine aliases expand to 3·9**9 values: refused while
    composing (the bound is on the expanded size), never built as Python objects."""
    assert len(ALIAS_BOMB) < 1024
    _bad_file(tmp_path, ALIAS_BOMB, "s.yaml", "line ", "aliases expanded")


def test_too_many_aliases(tmp_path: Path) -> None:
    text = "name: t\nmodel:\n  kwargs:\n    a: &a 1\n    b: [" + ", ".join(["*a"] * 101) + "]\n"
    _bad_file(tmp_path, text, "line 5", "more than 100 aliases")


def test_recursive_alias(tmp_path: Path) -> None:
    _bad_file(tmp_path, "name: t\nmodel: &m\n  kwargs: {self: *m}\n", "line 3", "*m", "own anchor")


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    data = yaml.safe_dump(VARIANTS, sort_keys=False).replace(
        "  scaled:\n    gamma_init:", "  scaled:\n    gamma_init: &g"
    )
    path.write_text(data + "  again:\n    gamma_init: *g\n")
    spec = load_spec(path)
    assert spec.variants["again"]["gamma_init"] == spec.variants["scaled"]["gamma_init"]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (
            "name: t\ntrain:\n  epochs: 3\n  lr: 0.1\n  epochs: 4\n",
            ("line 5", "'epochs'", "line 3"),
        ),
        ("name: t\nname: u\n", ("line 2", "duplicate key 'name'")),
        ("name: t\nplugins: {gamma_init: {}, gamma_init: {value: 1.0}}\n", ("'gamma_init'",)),
    ],
)
def test_duplicate_keys(tmp_path: Path, text: str, needles: tuple[str, ...]) -> None:
    _bad_file(tmp_path, text, "duplicate key", *needles)


def test_merge_keys_override_without_being_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    base = yaml.safe_dump(BASE, sort_keys=False)
    path.write_text(
        base.replace("name: t\n", "name: t\ntrain:\n  <<: {epochs: 3, lr: 0.2}\n  epochs: 4\n")
    )
    spec = load_spec(path)
    assert (spec.train.epochs, spec.train.lr) == (4, 0.2)


def test_file_limits(tmp_path: Path) -> None:
    _bad_file(tmp_path, b"name: t\ndescription: caf\xe9\n", "not UTF-8")
    _bad_file(tmp_path, "name: t\ndescription: " + "x" * 1_000_001 + "\n", "larger than 1000000")
    _bad_file(tmp_path, "name: t\nmodel:\n  kwargs: {a: " + "[" * 70 + "]" * 70 + "}\n", "deeper")
    _bad_file(tmp_path, "name: t\nseeds: [" + "9" * 5000 + "]\n", "not valid YAML", "digits")
    _bad_file(tmp_path, "name: t\n---\nname: u\n", "single document")


def test_override_values_are_read_with_the_same_limits() -> None:
    with pytest.raises(SpecError, match="duplicate key"):
        load_spec(
            Path(__file__).parents[1] / "searchspaces/quickstart.yaml", ["train={a: 1, a: 2}"]
        )


# -- bounds: seeds, counts, finite floats, names ----------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "needles"),
    [
        ("search.seed", 2**40, ("search.seed", "4294967295")),
        ("search.seed", -1, ("search.seed", "greater than or equal to 0")),
        ("seeds", [2**70], ("seeds.0", "4294967295")),
        ("seeds", [-3], ("seeds.0",)),
        ("seeds", {"count": 10**6}, ("seeds.count",)),
        ("dataset.split_seed", 2**32, ("dataset.split_seed",)),
        ("train.epochs", 10**30, ("train.epochs", "100000")),
        ("train.epochs", 1e30, ("train.epochs",)),
        ("train.batch_size", 10**9, ("train.batch_size",)),
        ("train.eval_batch_size", 10**9, ("train.eval_batch_size",)),
        ("train.max_steps_per_epoch", 10**12, ("train.max_steps_per_epoch",)),
        ("train.schedule.warmup_epochs", 10**6, ("train.schedule.warmup_epochs",)),
        ("search.num_samples", 10**9, ("search.num_samples",)),
        ("search.max_concurrent", 10**6, ("search.max_concurrent",)),
        ("dataset.image_size", 10**5, ("dataset.image_size",)),
        ("dataset.augment.crop_padding", 10**5, ("dataset.augment.crop_padding",)),
        ("evaluation.evalmode_train_samples", 10**12, ("evaluation.evalmode_train_samples",)),
        ("resources.cpus", 1e9, ("resources.cpus",)),
        ("failure.max_retries", 10**9, ("failure.max_retries",)),
    ],
)
def test_numbers_are_bounded(key: str, value: object, needles: tuple[str, ...]) -> None:
    _bad(_with(key, value), *needles)


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    ("key", "value", "needles"),
    [
        ("train.lr", INF, ("train.lr", "finite")),
        ("train.weight_decay", NAN, ("train.weight_decay", "finite")),
        ("resources.gpus", INF, ("resources.gpus", "finite")),
        ("evaluation.noise_sigmas", [0.1, INF], ("evaluation.noise_sigmas.1", "finite")),
        ("search.space.train.lr.high", INF, ("search.space['train.lr'].high", "finite")),
        ("search.space.train.lr.low", -INF, ("search.space['train.lr'].low", "finite")),
        ("model.kwargs", {"drop_path_rate": NAN}, ("model.kwargs.drop_path_rate", "finite")),
        ("model.kwargs", {"x": [1, {"y": INF}]}, ("model.kwargs.x", "[1].y", "finite")),
        ("model.kwargs", {"x": 2**70}, ("model.kwargs.x", "out of range")),
        ("plugins.gamma_init.value", NAN, ("plugins.gamma_init.value", "finite")),
        ("plugins", {"standardization": {"coefficient": INF}}, ("plugins.standardization",)),
    ],
)
def test_floats_are_finite(key: str, value: object, needles: tuple[str, ...]) -> None:
    _bad(_with(key, value), *needles)


def test_distribution_bounds_within_float_range(tmp_path: Path) -> None:
    # YAML reads 1e400 as inf: the overflow is refused, with the field named.
    text = yaml.safe_dump(BASE).replace("high: 0.1", "high: 1.0e+400")
    _bad_file(tmp_path, text, "search.space['train.lr'].high", "finite")
    space = {"train.lr": {"type": "uniform", "low": -1e308, "high": 1e308}}
    _bad(_with("search.space", space), "search.space['train.lr']", "overflows")
    space = {"seed": {"type": "int", "low": 0, "high": 2**60}}
    _bad(_with("search.space", space), "search.space['seed'].high")
    space = {"model.kwargs.x": {"type": "categorical", "choices": [1.0, INF]}}
    _bad(_with("search.space", space), "search.space['model.kwargs.x'].choices.1", "finite")


@pytest.mark.parametrize(
    "name", ["a" * 101, "abc\n", "a/b", ".", "..", "", "-a", "A b", "é", "a\x00"]
)
def test_study_name(name: str) -> None:
    _bad(_with("name", name), "name")


def test_study_name_limits_that_pass() -> None:
    assert validate_data(_with("name", "a" * 100)).name == "a" * 100
    assert validate_data(_with("name", "0-a_b")).name == "0-a_b"


def test_variant_names_are_names_too() -> None:
    data = yaml.safe_load(yaml.safe_dump(VARIANTS))
    data["variants"]["plain\n"] = data["variants"].pop("plain")
    _bad(data, "variants.plain")


def test_data_paths_hold_no_nul() -> None:
    _bad(_with("dataset", {"name": "cifar10", "root": "data\x00c10"}), "dataset.root")


# -- search.metric: one the trials of this study report ---------------------------------------


def test_unknown_metric_names_the_close_one() -> None:
    text = _bad(_with("search.metric", "val/acuracy"), "search.metric", "'val/acuracy'")
    assert "did you mean 'val/acc'" in text and "reported: " in text and "test/aurc" in text
    data = _with("search.metric", ["val/acc", "val/los"])
    apply_override(data, "search.mode", ["max", "min"])
    _bad(data, "search.metric[1]", "'val/los'", "'val/loss'")
    _bad(_with("search.metric", "best/val/acc"), "search.metric", "'best/val/acc'")


@pytest.mark.parametrize(
    ("changes", "metric", "ok"),
    [
        ({"plugins.bayesian_scale": {}}, "val/nll_mc", True),
        ({"plugins.bayesian_scale": {"mc_samples": 0}}, "val/nll_mc", False),
        ({"plugins.norm_batch": {"size": 32}}, "norm_batch/effective", True),
        ({"plugins.embedding_l2": {}}, "loss/embedding_l2", True),
        ({}, "loss/embedding_l2", False),
        ({"evaluation.noise_sigmas": [0.1]}, "test/acc_noise@0.1", True),
        ({"evaluation.noise_sigmas": [0.1]}, "test/acc_noise@0.2", False),
        ({"evaluation.fgsm_eps": [0.03]}, "test/acc_fgsm@0.03", True),
        ({"evaluation.coverage": False}, "test/aurc", False),
        ({"evaluation.evalmode_train_samples": 0}, "train/loss_evalmode", False),
        ({"plugins": {"remove_norm": {}}}, "gamma/sq_mean", False),
    ],
)
def test_metrics_of_plugins_and_evaluations(
    changes: dict[str, object], metric: str, ok: bool
) -> None:
    data = _with("search.metric", metric)
    for key, value in changes.items():
        apply_override(data, key, value)
    if ok:
        assert validate_data(data).search.metric == metric
    else:
        _bad(data, "search.metric", repr(metric))


def test_metric_of_some_variants_only() -> None:
    data = yaml.safe_load(yaml.safe_dump(VARIANTS))
    data["variants"]["scaled"]["embedding_l2"] = {}
    apply_override(data, "search.metric", "loss/embedding_l2")
    _bad(data, "search.metric", "not reported by every trial", "plain")
    data["variants"]["plain"]["embedding_l2"] = {}
    assert validate_data(data).search.metric == "loss/embedding_l2"


def test_metric_of_a_searched_evaluation_option() -> None:
    data = _with("search.metric", "test/aurc")
    apply_override(
        data, "search.space.evaluation.coverage", {"type": "categorical", "choices": [True, False]}
    )
    _bad(data, "search.metric", "evaluation.coverage=False")


def _trial_study(plugins: dict, evaluation: dict) -> dict:
    return {
        "name": "catalogue",
        "dataset": {"name": "synthetic", "num_samples": 40, "image_size": 8, "num_classes": 4},
        "model": {"name": "test_resnet", "cifar_stem": True},
        "train": {
            "epochs": 1,
            "batch_size": 8,
            "eval_batch_size": 64,
            "max_steps_per_epoch": 1,
            "threads": 1,
        },
        "evaluation": evaluation,
        "plugins": plugins,
    }


def _plugin_cases() -> list[object]:
    from normstudy.plugins import plugin_registry

    many = {"evalmode_train_samples": 8, "noise_sigmas": [0.1, 0.25], "fgsm_eps": [0.01]}
    none = {"evalmode_train_samples": 0, "dropout50": False, "coverage": False}
    cases: list[object] = [pytest.param({}, many, id="many"), pytest.param({}, none, id="none")]
    for name, cls in plugin_registry().items():
        cases.append(pytest.param({name: {}, **cls.partners}, {}, id=name))
    cases.append(pytest.param({"bayesian_scale": {"mc_samples": 0}}, {}, id="bayesian-no-mc"))
    return cases


@pytest.mark.parametrize(("plugins", "evaluation"), _plugin_cases())
def test_metric_catalogue_matches_what_a_real_trial_reports(
    plugins: dict, evaluation: dict
) -> None:
    """The catalogue is kept without torch; a real short trial of every registered plugin
    (with its partners) on test_resnet reports exactly the catalogued metrics."""
    from normstudy.spec import metric_catalogue
    from normstudy.trial import LocalReporter, run_trial

    config = validate_data(_trial_study(plugins, evaluation)).trial_base()
    metrics = run_trial(config, LocalReporter())
    reported = {
        k
        for k, v in metrics.items()
        if ("/" in k or k in PLAIN) and not k.startswith("best/") and isinstance(v, int | float)
    }
    assert set(metric_catalogue(config)) == reported


# -- the real CLI: exit 2, the field on stderr, nothing written -------------------------------


def _cli(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    """``python -m normstudy ARGS`` in a clean folder with its own HOME and NORMSTUDY_HOME;
    returns the process and every path it created under ``tmp_path`` (HOME included)."""
    import os

    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    before = set(tmp_path.rglob("*"))
    env = {**os.environ, "HOME": str(tmp_path / "user"), "NORMSTUDY_HOME": str(tmp_path / "home")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "normstudy", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=work,
        env=env,
    )
    new = sorted(set(tmp_path.rglob("*")) - before)
    return proc, new


def _written(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize(
    ("content", "overrides", "needles"),
    [
        (None, ["search.seed=1099511627776"], ("search.seed",)),
        (None, ["search.metric=val/acuracy"], ("search.metric", "val/acc")),
        (None, ["train.epochs=1.0e+30"], ("train.epochs",)),
        (None, ["search.space.train.lr.high=1.0e+400"], ("search.space['train.lr'].high",)),
        ('name: "abc\\n"\n', [], ("name", "abc\\n")),
        (
            "name: t\ntrain: {epochs: 2}\ntrain: {epochs: 3}\n",
            [],
            ("duplicate key 'train'", "line 3"),
        ),
        (ALIAS_BOMB, [], ("aliases",)),
        (b"name: caf\xe9\n", [], ("not UTF-8",)),
    ],
    ids=["seed", "metric", "epochs", "overflow", "name", "duplicate", "alias-bomb", "latin-1"],
)
def test_cli_validate_refuses_and_writes_nothing(
    tmp_path: Path,
    quickstart: Path,
    content: str | bytes | None,
    overrides: list[str],
    needles: tuple[str, ...],
) -> None:
    path = quickstart if content is None else _written(tmp_path, "s.yaml", content)
    args = [a for item in overrides for a in ("--set", item)]
    proc, new = _cli(tmp_path, "validate", str(path), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert new == [], new


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (
            ["model.kwargs={no_such_arg: 1}"],
            ("model.kwargs.no_such_arg", "not an argument of timm.create_model('test_resnet')"),
        ),
        (
            ["dataset={name: cifar10, root: missing/cifar10}"],
            ("dataset.root", "missing/cifar10", "download"),
        ),
    ],
    ids=["model-kwarg", "dataset-root"],
)
def test_cli_run_preflight_exits_2_before_anything_starts(
    tmp_path: Path, quickstart: Path, overrides: list[str], needles: tuple[str, ...]
) -> None:
    """Checks that need torch or the data run before Optuna, MLflow or the results store (a
    local Ray starts meanwhile, and stops): the study home stays absent (no mlflow.db, no
    study folder)."""
    home = tmp_path / "home"
    args = [a for item in overrides for a in ("--set", item)]
    proc, new = _cli(tmp_path, "run", str(quickstart), "--home", str(home), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not home.exists()
    assert new == [], new


def test_preflight_of_the_shipped_studies_and_searched_kwargs(quickstart: Path) -> None:
    from normstudy.preflight import preflight

    for path in sorted(quickstart.parent.glob("*.yaml")):
        assert preflight(load_spec(path), data=False) == [], path
    searched = "search.space.model.kwargs.bogus={type: categorical, choices: [0.0, 0.1]}"
    problems = preflight(load_spec(quickstart, [searched]))
    assert len(problems) == 1 and "model.kwargs.bogus" in problems[0], problems
    assert "search.space['model.kwargs.bogus']" in problems[0]


def test_preflight_data(tmp_path: Path, quickstart: Path) -> None:
    from normstudy.preflight import preflight

    def problems(dataset: str) -> list[str]:
        return preflight(load_spec(quickstart, [f"dataset={dataset}"]))

    assert problems(f"{{name: cifar10, root: {tmp_path / 'nowhere'}, download: true}}") == []
    assert "does not hold the cifar10 files" in problems(f"{{name: cifar10, root: {tmp_path}}}")[0]
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    assert "no images" in problems(f"{{name: imagefolder, path: {tmp_path / 'imgs'}}}")[0]
    (tmp_path / "imgs" / "cat" / "a.png").write_bytes(b"")
    assert problems(f"{{name: imagefolder, path: {tmp_path / 'imgs'}}}") == []
    assert "not a folder" in problems(f"{{name: imagefolder, path: {tmp_path / 'none'}}}")[0]
