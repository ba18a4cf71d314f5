"""One typed dataset per study: its schema from the spec, other tools reading it, compaction,
migration of older datasets, and export."""

from __future__ import annotations

import json
import math
import uuid
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from normstudy.results import (
    SCHEMA_FILE,
    DamagedResultWarning,
    ResultsFormatError,
    ResultsSink,
    export_results,
    flatten_config,
    read_results,
    read_scores,
    study_schema,
    trial_scores,
)
from normstudy.spec import StudySpec, resolve_config, validate_data
from normstudy.storage import Location, as_location

MIXED = """
name: mixed
dataset: {name: digits, image_size: 16}
model: {name: test_resnet, cifar_stem: true}
train: {epochs: 3, lr: 0.05}
plugins: {gamma_init: {value: 1.0}}
variants:
  plain: {}
  decay: {gamma_decay: {mode: batch}}
search:
  sampler: random
  num_samples: 6
  space:
    train.lr: {type: categorical, choices: [1, 0.5]}
    dataset.image_size: {type: categorical, choices: [null, 16]}
    variant: {type: categorical, choices: [plain, decay]}
    plugins.gamma_init.value: {type: uniform, low: 0.1, high: 1.0}
    model.kwargs.zero_init_last: {type: categorical, choices: [true, false]}
"""
"""Mixed int/float choices, a nullable field, variants with a plugin only one of them has."""


@pytest.fixture(scope="module")
def spec() -> StudySpec:
    return validate_data(yaml.safe_load(MIXED))


def _params(i: int) -> dict[str, Any]:
    return {
        "train.lr": [1, 0.5][i % 2],  # an int in some trials, a float in others
        "dataset.image_size": [None, 16][i // 2 % 2],
        "variant": ["plain", "decay"][i // 4 % 2],
        "plugins.gamma_init.value": 0.1 + 0.1 * i,
        "model.kwargs.zero_init_last": i % 3 == 0,
    }


def _rows(spec: StudySpec, trial_id: str, i: int, epochs: int) -> list[dict[str, Any]]:
    """What the driver callback writes for trial ``i``: its resolved config and metrics."""
    config = resolve_config(spec.trial_base(), _params(i), spec.variants)
    flat = flatten_config(config)
    return [
        {
            "study": spec.name,
            "trial_id": trial_id,
            "seed": 1,
            "epoch": e,
            **flat,
            "val/acc": round(0.1 * i + 0.2 * math.sin(e + i), 6),
            "train/loss": 1.0 / e,
        }
        for e in range(1, epochs + 1)
    ]


def _fill(spec: StudySpec, results: Any, *, compact_every: int = 0) -> ResultsSink:
    sink = ResultsSink.for_study(results, spec, compact_every=compact_every)
    for i in range(6):
        sink.update(f"t{i}", _rows(spec, f"t{i}", i, 3), "completed", {"attempts": 1})
    failed = _rows(spec, "t6", 6, 1)[0] | {"epoch": 0, "val/acc": None, "train/loss": None}
    sink.update("t6", [failed], "error", {"attempts": 2, "error": "RuntimeError: boom"})
    sink.update("t7", _rows(spec, "t7", 7, 2), "running")
    return sink


def _best(scores: dict[str, Any]) -> dict[str, float | None]:
    def clean(v: Any) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    return {str(k): clean(v) for k, v in sorted(scores.items())}


def test_schema_types_config_columns_by_field_and_distribution(spec: StudySpec) -> None:
    schema = study_schema(spec)
    types = {f.name: f.type for f in schema}
    assert types["config.train.lr"] == pa.float64()  # float field, choices [1, 0.5]
    assert types["config.dataset.image_size"] == pa.int64()  # int | None
    assert types["config.dataset.path"] == pa.string()  # always null, still typed
    assert types["config.variant"] == pa.string()
    assert types["config.plugins.gamma_decay.zeta"] == pa.float64()  # one variant's option
    assert types["config.model.kwargs.zero_init_last"] == pa.bool_()  # free-form: choices
    assert types["config.evaluation.noise_sigmas"] == pa.string()  # lists as JSON
    assert types["val/acc"] == types["best/val/acc"] == pa.float64()
    assert types["started_at"] == pa.timestamp("us", tz="UTC")
    assert types["optuna_trial"] == pa.int64() and types["mlflow_run_id"] == pa.string()
    assert not [f.name for f in schema if pa.types.is_null(f.type)]


@pytest.mark.parametrize("compacted", [False, True], ids=["trial-files", "compacted"])
def test_other_tools_open_the_study_and_agree_with_best(
    spec: StudySpec, tmp_path: Path, compacted: bool
) -> None:
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as ds

    results = tmp_path / "results"
    sink = _fill(spec, results)
    if compacted:
        assert sink.compact()  # t7 still runs: its own file stays
        assert sorted(p.name for p in results.glob("*.parquet")) == [
            "part-000001.parquet",
            "t7.parquet",
        ]
    expected = _best({s.trial_id: s.score for s in read_scores(results, "val/acc", "max")})
    glob = str(results / "*.parquet")

    table = ds.dataset(results).to_table()
    assert table.schema.field("config.train.lr").type == pa.float64()
    got = table.group_by("trial_id").aggregate([("val/acc", "max")]).to_pylist()
    assert _best({r["trial_id"]: r["val/acc_max"] for r in got}) == expected

    frame = pd.read_parquet(results)
    assert str(frame["config.train.lr"].dtype) == "float64"
    assert _best(frame.groupby("trial_id")["val/acc"].max().to_dict()) == expected

    polars = pl.scan_parquet(glob).group_by("trial_id").agg(pl.col("val/acc").max()).collect()
    assert _best(dict(zip(polars["trial_id"], polars["val/acc"], strict=True))) == expected
    assert pl.scan_parquet(glob).collect_schema()["config.variant"] == pl.String

    query = f"SELECT trial_id, max(\"val/acc\") FROM read_parquet('{glob}') GROUP BY trial_id"
    assert _best(dict(duckdb.sql(query).fetchall())) == expected
    described = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{glob}')").fetchall()
    kinds = {row[0]: row[1] for row in described}
    assert kinds["config.dataset.image_size"] == "BIGINT" and kinds["ended_at"].startswith(
        "TIMESTAMP"
    )

    assert expected["t6"] is None and len(expected) == 8  # the failed trial is a result too


def test_schema_is_stored_with_its_version(spec: StudySpec, tmp_path: Path) -> None:
    _fill(spec, tmp_path)
    stored = json.loads((tmp_path / SCHEMA_FILE).read_text())
    assert stored["version"] == 2
    assert {"name": "config.train.lr", "type": "double"} in stored["columns"]
    for file in tmp_path.glob("*.parquet"):
        metadata = pq.read_schema(file).metadata
        assert json.loads(metadata[b"normstudy.schema"])["version"] == 2
        assert pq.read_schema(file).remove_metadata().equals(study_schema(spec))


def test_a_newer_schema_version_is_named(tmp_path: Path) -> None:
    (tmp_path / SCHEMA_FILE).write_text(json.dumps({"format": "normstudy-results", "version": 3}))
    with pytest.raises(ResultsFormatError, match=r"version 3.*upgrade normstudy"):
        read_results(tmp_path)


def test_trial_times_and_failed_trials(spec: StudySpec, tmp_path: Path) -> None:
    _fill(spec, tmp_path)
    rows = {(r["trial_id"], r["epoch"]): r for r in read_results(tmp_path).to_pylist()}
    assert rows[("t7", 1)]["ended_at"] is None and rows[("t7", 1)]["started_at"] is not None
    assert rows[("t0", 3)]["ended_at"] >= rows[("t0", 1)]["started_at"]
    assert rows[("t6", 0)]["status"] == "error" and rows[("t6", 0)]["attempts"] == 2
    assert rows[("t0", 1)]["optuna_trial"] is None  # filled by the search, not the sink
    failed = read_scores(tmp_path, "val/acc", "max")[-1]
    assert (failed.trial_id, failed.score, failed.error) == ("t6", None, "RuntimeError: boom")


def test_periodic_compaction_keeps_every_row_once(spec: StudySpec, tmp_path: Path) -> None:
    _fill(spec, tmp_path, compact_every=3)
    names = sorted(p.name for p in tmp_path.glob("*.parquet"))
    assert names[:2] == ["part-000001.parquet", "part-000002.parquet"]
    table = read_results(tmp_path)
    keys = list(zip(table["trial_id"].to_pylist(), table["epoch"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == 6 * 3 + 1 + 2


def test_interrupted_compaction_loses_and_duplicates_nothing(
    spec: StudySpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = _fill(spec, tmp_path)
    before = _rows_of(tmp_path)

    def crash(self: Location) -> None:
        raise OSError("killed")

    monkeypatch.setattr(Location, "delete", crash)
    with pytest.raises(OSError, match="killed"):
        sink.compact()  # the part is written, no trial file is deleted yet
    assert (tmp_path / "part-000001.parquet").exists() and (tmp_path / "t0.parquet").exists()
    assert _rows_of(tmp_path) == before
    monkeypatch.undo()
    sink.compact()
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == [
        "part-000002.parquet",
        "t7.parquet",
    ]
    assert _rows_of(tmp_path) == before


def test_large_compactions_split_into_parts_and_survive_a_crash_between_them(
    spec: StudySpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normstudy.results import _compact

    sink = _fill(spec, tmp_path)
    before = _rows_of(tmp_path)
    monkeypatch.setattr(_compact, "PART_ROWS", 4)  # two trials of 3 rows per part
    written = []

    def second_fails(self: Location, data: bytes) -> None:
        if self.name.startswith("part-") and written:
            raise OSError("killed")
        written.append(self.name)
        self.local_path.write_bytes(data)

    monkeypatch.setattr(Location, "write_bytes", second_fails)
    with pytest.raises(OSError, match="killed"):
        sink.compact()
    assert written == ["part-000001.parquet"] and _rows_of(tmp_path) == before
    monkeypatch.setattr(Location, "write_bytes", _write_bytes)
    parts = sink.compact()
    assert [p.name for p in parts] == [f"part-00000{i}.parquet" for i in (2, 3, 4, 5)]
    assert not (tmp_path / "part-000001.parquet").exists()  # its copies were stale
    assert _rows_of(tmp_path) == before


_write_bytes = Location.write_bytes


def test_a_compacted_trial_resumes_from_its_part(spec: StudySpec, tmp_path: Path) -> None:
    sink = _fill(spec, tmp_path)
    sink.compact()
    # --resume re-runs the failed trial t6: its rows come back from the part, and its own
    # file, newer, wins over the part's copy until the next compaction drops that copy.
    again = ResultsSink(tmp_path)
    assert [r["epoch"] for r in again.load("t6")] == [0]
    again.update("t6", _rows(spec, "t6", 6, 2), "completed", {"attempts": 3, "error": None})
    rows = [r for r in read_results(tmp_path).to_pylist() if r["trial_id"] == "t6"]
    assert [(r["epoch"], r["status"]) for r in rows] == [
        (0, "completed"),
        (1, "completed"),
        (2, "completed"),
    ]
    again.compact()
    assert len(list(tmp_path.glob("part-*.parquet"))) == 2  # the new one, the old one rewritten
    plain = pq.read_table(tmp_path, partitioning=None).to_pylist()  # a plain glob: once each
    keys = [(r["trial_id"], r["epoch"]) for r in plain]
    assert len(keys) == len(set(keys))
    assert [r["status"] for r in plain if r["trial_id"] == "t6"] == ["completed"] * 3


def test_a_new_column_extends_the_schema_and_the_older_files(
    spec: StudySpec, tmp_path: Path
) -> None:
    sink = _fill(spec, tmp_path)
    row = _rows(spec, "t8", 8, 1)[0] | {"val/brand_new": 0.5}
    sink.update("t8", [row], "running")
    schemas = {pq.read_schema(f).remove_metadata() for f in tmp_path.glob("*.parquet")}
    assert len(schemas) == 1 and schemas.pop().field("val/brand_new").type == pa.float64()
    assert "val/brand_new" in json.dumps(json.loads((tmp_path / SCHEMA_FILE).read_text()))


def test_a_version_1_dataset_is_read_and_migrated(spec: StudySpec, tmp_path: Path) -> None:
    from normstudy.results import rows_to_table

    # As written before schemas were stored: each file typed by its own values.
    for i in range(2):  # train.lr is 1 in t0 and 0.5 in t1
        rows = [dict(r, status="completed") for r in _rows(spec, f"t{i}", i, 2)]
        pq.write_table(rows_to_table(rows), tmp_path / f"t{i}.parquet")
    assert pq.read_schema(tmp_path / "t0.parquet").field("config.train.lr").type == pa.int64()
    legacy = read_results(tmp_path)
    assert legacy.schema.field("config.train.lr").type == pa.float64()
    ResultsSink.for_study(tmp_path, spec)  # a --resume migrates it
    for file in tmp_path.glob("t*.parquet"):
        assert pq.read_schema(file).remove_metadata().equals(study_schema(spec))
    assert read_results(tmp_path).to_pylist() == _typed_like(legacy, study_schema(spec))


def test_a_damaged_part_is_named_and_left_out(spec: StudySpec, tmp_path: Path) -> None:
    sink = _fill(spec, tmp_path)
    [part] = sink.compact()
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = read_scores(tmp_path, "val/acc", "max")
    assert [s.trial_id for s in scores] == ["t7"]
    assert [w.category for w in caught] == [DamagedResultWarning]
    assert "part-000001.parquet" in str(caught[0].message)


@pytest.mark.parametrize("format_", ["parquet", "csv", "jsonl"])
def test_export_writes_one_file(spec: StudySpec, tmp_path: Path, format_: str) -> None:
    import pandas as pd

    _fill(spec, tmp_path / "results")
    out = tmp_path / f"rows.{format_}"
    assert export_results(tmp_path / "results", out, format_) == 6 * 3 + 1 + 2  # type: ignore[arg-type]
    read = {"parquet": pd.read_parquet, "csv": pd.read_csv}.get(format_)
    frame = read(out) if read else pd.read_json(out, lines=True, precise_float=True)
    assert len(frame) == 21 and set(frame["trial_id"]) == {f"t{i}" for i in range(8)}
    trials = tmp_path / f"trials.{format_}"
    assert export_results(tmp_path / "results", trials, format_, per_trial=("val/acc", "max")) == 8  # type: ignore[arg-type]
    per_trial = read(trials) if read else pd.read_json(trials, lines=True, precise_float=True)
    expected = {s.trial_id: s.score for s in read_scores(tmp_path / "results", "val/acc", "max")}
    assert list(per_trial["trial_id"]) == list(expected)  # best first
    assert _best(dict(zip(per_trial["trial_id"], per_trial["score"], strict=True))) == _best(
        expected
    )
    assert "train/loss" in per_trial.columns  # the other metrics at the best epoch


def test_compaction_and_reading_on_s3(spec: StudySpec, request: pytest.FixtureRequest) -> None:
    s3 = request.getfixturevalue("s3_env")
    results = as_location(f"s3://{s3.bucket}/results-test/{uuid.uuid4().hex}")
    sink = _fill(spec, results)
    before = read_results(results).num_rows
    assert sink.compact()
    assert sorted(f.name for f in results.files(".parquet")) == [
        "part-000001.parquet",
        "t7.parquet",
    ]
    assert read_results(results).num_rows == before
    assert (results / SCHEMA_FILE).exists()
    assert [r["epoch"] for r in ResultsSink(results).load("t6")] == [0]
    assert read_scores(results, "val/acc", "max")[0].trial_id == "t7"


def test_trial_scores_of_a_table_and_of_a_folder_agree(spec: StudySpec, tmp_path: Path) -> None:
    _fill(spec, tmp_path)
    assert trial_scores(read_results(tmp_path), "val/acc", "max") == read_scores(
        tmp_path, "val/acc", "max"
    )


def test_best_and_export_on_the_command_line(spec: StudySpec, tmp_path: Path) -> None:
    import subprocess
    import sys

    home = tmp_path / "home"
    (home / "mixed").mkdir(parents=True)
    (home / "mixed" / "study.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    _fill(spec, home / "mixed" / "results").compact()
    command = [sys.executable, "-X", "importtime", "-m", "normstudy"]
    best = subprocess.run(
        [*command, "best", "mixed", "--home", str(home), "--format", "json", "--top", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert best.returncode == 0, best.stderr
    imported = {ln.split("|")[-1].strip() for ln in best.stderr.splitlines() if "|" in ln}
    assert not {"torch", "ray", "mlflow"} & imported
    scores = read_scores(home / "mixed" / "results", "val/acc", "max")
    assert [r["trial_id"] for r in json.loads(best.stdout)] == [s.trial_id for s in scores]
    out = tmp_path / "trials.csv"
    options = ["--home", str(home), "--per-trial", "--format", "csv", "--out", str(out)]
    export = subprocess.run(
        [sys.executable, "-m", "normstudy", "export", "mixed", *options],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert export.returncode == 0, export.stderr
    assert "wrote 8 rows" in export.stdout and out.read_text().startswith('"trial_id"')


def _rows_of(results: Path) -> list[tuple[Any, ...]]:
    table = read_results(results)
    return sorted(
        zip(*(table[c].to_pylist() for c in ("trial_id", "epoch", "val/acc")), strict=True)
    )


def _typed_like(table: pa.Table, schema: pa.Schema) -> list[dict[str, Any]]:
    from normstudy.results._schema import conform

    return conform(table, schema).to_pylist()
