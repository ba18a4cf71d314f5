"""The Parquet results dataset: typed rows, atomic idempotent writes, reading, best epochs."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from normstudy.results import (
    BASE_SCHEMA,
    ResultsSink,
    flatten_config,
    make_row,
    read_results,
    trial_scores,
)
from normstudy.storage import _location

CONFIG = {"train": {"lr": 0.1, "epochs": 3, "nesterov": True}, "model": {"name": "resnet18"}}


def rows(trial_id: str, values: list[float], *, first: int = 1, seed: int = 1, **extra):
    """One row per epoch with val/acc from ``values``, starting at epoch ``first``."""
    return [
        make_row(
            study="s",
            trial_id=trial_id,
            seed=seed,
            epoch=first + i,
            config=extra.get("config", CONFIG),
            metrics={"val/acc": v, "train/loss": 1},
            git_rev="abc123",
        )
        for i, v in enumerate(values)
    ]


def test_flatten_config_nests_dotted_keys_and_json_encodes_containers() -> None:
    flat = flatten_config({"a": {"b": 1, "c": {"d": None}}, "l": [1, {"x": 2}], "s": "v"})
    assert flat == {
        "config.a.b": 1,
        "config.a.c.d": None,
        "config.l": '[1, {"x": 2}]',
        "config.s": "v",
    }


def test_update_writes_typed_columns(tmp_path: Path) -> None:
    path = ResultsSink(tmp_path).update("t1", rows("t1", [0.5, 0.6]), "running")
    schema = pq.read_schema(path)
    assert schema.field("epoch").type == pa.int64()
    assert schema.field("seed").type == pa.int64()
    assert schema.field("config.train.lr").type == pa.float64()
    assert schema.field("config.train.epochs").type == pa.int64()
    assert schema.field("config.train.nesterov").type == pa.bool_()
    assert schema.field("config.model.name").type == pa.string()
    # Metrics are float64 even when every reported value is an int.
    assert schema.field("train/loss").type == pa.float64()
    assert pa.types.is_timestamp(schema.field("meta.updated_at").type)
    assert pq.read_table(path).column("status").to_pylist() == ["running", "running"]


def test_repeated_update_is_idempotent(tmp_path: Path) -> None:
    sink = ResultsSink(tmp_path)
    sink.update("t1", rows("t1", [0.5, float("nan"), 0.7]), "running")
    first = sink.load("t1")
    sink.update("t1", rows("t1", [0.5, float("nan"), 0.7]), "running")
    second = sink.load("t1")
    assert len(second) == 3
    assert repr(first) == repr(second)  # repr: NaN == NaN, and timestamps are kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_schema.json", "t1.parquet"]


def test_resumed_trial_replaces_re_reported_epoch(tmp_path: Path) -> None:
    sink = ResultsSink(tmp_path)
    sink.update("t1", rows("t1", [0.1, 0.2, 0.3]), "running")
    # Resumed from the epoch-2 checkpoint: epoch 3 is reported again with a new value.
    sink.update("t1", rows("t1", [0.33, 0.4], first=3), "completed")
    loaded = sink.load("t1")
    assert [(r["epoch"], r["val/acc"]) for r in loaded] == [(1, 0.1), (2, 0.2), (3, 0.33), (4, 0.4)]
    assert {r["status"] for r in loaded} == {"completed"}
    # Within one batch the later row of an epoch wins too.
    sink.update("t1", [*rows("t1", [0.9], first=4), *rows("t1", [0.5], first=4)], "completed")
    assert [r["val/acc"] for r in sink.load("t1")] == [0.1, 0.2, 0.33, 0.5]
    assert read_results(tmp_path).num_rows == 4


def test_failed_write_keeps_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = ResultsSink(tmp_path)
    sink.update("t1", rows("t1", [0.5]), "running")
    before = sink.load("t1")

    def crash(fd: int) -> None:  # the data is written, but the flush to disk fails
        raise OSError("disk full")

    monkeypatch.setattr(_location.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        sink.update("t1", rows("t1", [0.5, 0.6]), "running")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_schema.json", "t1.parquet"]
    assert repr(sink.load("t1")) == repr(before)


def test_update_rejects_bad_input(tmp_path: Path) -> None:
    sink = ResultsSink(tmp_path)
    with pytest.raises(ValueError, match="status"):
        sink.update("t1", rows("t1", [0.5]), "done")
    with pytest.raises(ValueError, match="file name"):
        sink.update("../t1", [], "running")
    with pytest.raises(ValueError, match="epoch"):
        sink.update("t1", [{"epoch": -1}], "running")
    with pytest.raises(ValueError, match="trial 't2'"):
        sink.update("t1", rows("t2", [0.5]), "running")
    with pytest.raises(TypeError, match="val/acc"):
        sink.update("t1", [{"epoch": 1, "val/acc": "high"}], "running")


def test_read_results_promotes_schemas_and_ignores_temp_files(tmp_path: Path) -> None:
    sink = ResultsSink(tmp_path)
    sink.update("a", rows("a", [0.5], config={"lr": 1, "only_a": 3}), "completed")
    sink.update("b", rows("b", [0.6], config={"lr": 0.1, "only_b": "x", "n": None}), "completed")
    (tmp_path / ".c.abc123.tmp").write_bytes(b"partial")
    table = read_results(tmp_path)
    assert table.num_rows == 2
    assert table.schema.field("config.lr").type == pa.float64()  # int in a, float in b
    assert table.column("config.only_a").to_pylist() == [3, None]
    assert table.column("config.only_b").to_pylist() == [None, "x"]
    assert table.column("trial_id").to_pylist() == ["a", "b"]


@pytest.mark.parametrize("make_dir", [True, False])
def test_read_results_without_trials_has_base_columns(tmp_path: Path, make_dir: bool) -> None:
    directory = tmp_path / "results"
    if make_dir:
        directory.mkdir()
    table = read_results(directory)
    assert table.num_rows == 0
    assert table.schema.equals(BASE_SCHEMA)
    assert trial_scores(table, "val/acc", "max") == []


def _scored(tmp_path: Path) -> pa.Table:
    sink = ResultsSink(tmp_path)
    sink.update("b", rows("b", [0.2, 0.9, float("nan"), 0.5], seed=2), "completed")
    sink.update("a", rows("a", [0.9, 0.1], seed=1), "completed")  # ties b: a first by id
    sink.update("c", rows("c", [0.3, 0.7], seed=3), "running")
    last = rows("d", [float("nan")], seed=4)
    last[0]["test/acc"] = 0.25
    sink.update("d", last, "error")
    sink.update("e", [{"study": "s", "epoch": 1, "train/loss": 1.0}], "error")  # no val/acc
    return read_results(tmp_path)


def test_trial_scores_pick_best_epoch_for_max(tmp_path: Path) -> None:
    scores = trial_scores(_scored(tmp_path), "val/acc", "max")
    assert [s.trial_id for s in scores] == ["a", "b", "c", "d", "e"]
    a, b = scores[0], scores[1]
    assert (b.score, b.best_epoch, b.epochs, b.seed) == (0.9, 2, 4, 2)  # best, not last
    assert (a.score, a.best_epoch) == (0.9, 1)
    assert a.config == {
        "train.lr": 0.1,
        "train.epochs": 3,
        "train.nesterov": True,
        "model.name": "resnet18",
    }
    assert scores[3].score is None and scores[3].test == {"test/acc": 0.25}
    assert scores[4].score is None and scores[4].best_epoch is None
    assert scores[2].status == "running"


def test_trial_scores_pick_best_epoch_for_min(tmp_path: Path) -> None:
    scores = trial_scores(_scored(tmp_path), "val/acc", "min")
    assert [(s.trial_id, s.score) for s in scores[:3]] == [("a", 0.1), ("b", 0.2), ("c", 0.3)]
    assert scores[0].best_epoch == 2
    assert [s.trial_id for s in scores[3:]] == ["d", "e"]


def test_trial_scores_rejects_unknown_metric_and_mode(tmp_path: Path) -> None:
    table = _scored(tmp_path)
    with pytest.raises(ValueError, match="val/acc"):
        trial_scores(table, "val/accuracy", "max")
    with pytest.raises(ValueError, match="mode"):
        trial_scores(table, "val/acc", "maximum")  # type: ignore[arg-type]


def test_a_truncated_file_is_named_and_left_out(tmp_path: Path, quickstart: Path) -> None:
    """One damaged trial file must not make the whole study unreadable: the reader leaves it
    out with a warning naming it, and `best` prints that warning, not a traceback."""
    import subprocess
    import sys
    import warnings

    import yaml

    from normstudy.results import DamagedResultWarning
    from normstudy.spec import load_spec

    spec = load_spec(quickstart)
    (tmp_path / "quickstart").mkdir()
    (tmp_path / "quickstart" / "study.yaml").write_text(
        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    )
    results = tmp_path / "quickstart" / "results"
    sink = ResultsSink(results)
    for trial_id, acc in (("good", 0.5), ("bad", 0.9)):
        sink.update(trial_id, rows(trial_id, [acc]), "completed")
    data = (results / "bad.parquet").read_bytes()
    (results / "bad.parquet").write_bytes(data[: len(data) // 2])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = read_results(results)
    assert set(table.column("trial_id").to_pylist()) == {"good"}
    assert [w.category for w in caught] == [DamagedResultWarning]
    assert "bad.parquet" in str(caught[0].message)

    proc = subprocess.run(
        [sys.executable, "-m", "normstudy", "best", "quickstart", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "good" in proc.stdout and "bad.parquet" in proc.stderr
    assert "Traceback" not in proc.stderr
