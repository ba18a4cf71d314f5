"""`normstudy best` on a large synthetic study: wall time (process start included) and peak memory.

A study home is filled with synthetic results typed by the quickstart study's schema: TRIALS
trials x EPOCHS epochs, every metric of the study's catalogue random, test/* on the epochs that
improve val/acc. The same rows are then read in three layouts, each timed as a fresh
`python -m normstudy best` process (after one warm-up run, so the files are in the page cache):

- trial files: one file per trial, as a running study leaves them;
- parts of 100: as the sink leaves them while a study runs (it compacts every 100 finished trials);
- one part: after the compaction that ends a study.

With --old, the per-row reader this replaced (git revision OLD_REV) reads the trial files too,
in-process, for a side-by-side ratio (slow: start with --trials 500).

    python benchmarks/bench_results.py                    # 1M rows: 5,000 trials x 200 epochs
    python benchmarks/bench_results.py --trials 50000 --layouts parts one   # 10M rows
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from normstudy.results import compact, flatten_config, study_schema
from normstudy.results._compact import write_part
from normstudy.results._schema import conform
from normstudy.results._schema_file import save_schema, with_metadata
from normstudy.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
STUDY = "bench"
OLD_REV = "5f10151"
LAYOUTS = ("trials", "parts", "one")


def trial_table(schema: pa.Schema, spec: Any, index: int, epochs: int) -> pa.Table:
    """One trial's rows: its config in every row, random metrics, test/* on improvements."""
    rng = np.random.default_rng(index)
    config = spec.trial_base()
    config["train"]["lr"] = float(10 ** rng.uniform(-3, 0))
    config["seed"] = index
    values: dict[str, Any] = flatten_config(config)
    values.update(
        study=STUDY,
        trial_id=f"t{index:06d}",
        seed=index,
        status="completed",
        attempts=1,
        **{"meta.version": "bench", "meta.git_rev": "bench"},
    )
    columns = {k: pa.array([v] * epochs, schema.field(k).type) for k, v in values.items()}
    columns["epoch"] = pa.array(np.arange(1, epochs + 1), pa.int64())
    acc = np.maximum.accumulate(rng.uniform(0.0, 1.0, epochs) ** 0.2)
    improved = np.concatenate([[True], acc[1:] > acc[:-1]])
    for f in schema:
        if "/" in f.name or f.name in ("lr", "epoch_time_s"):
            data = rng.uniform(0.0, 1.0, epochs)
            mask = ~improved if f.name.startswith("test/") else None
            columns[f.name] = pa.array(data, pa.float64(), mask=mask)
    columns["val/acc"] = pa.array(acc)
    return conform(pa.table(columns), schema)


def generate(home: Path, trials: int, epochs: int, layout: str) -> None:
    spec = load_spec(ROOT / "searchspaces" / "quickstart.yaml").model_copy(update={"name": STUDY})
    study = home / STUDY
    results = study / "results"
    results.mkdir(parents=True)
    (study / "study.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    schema = study_schema(spec)
    save_schema(_loc(results), schema)
    typed = with_metadata(schema)
    group = 100 if layout == "parts" else trials
    for start in range(0, trials, group):
        ids = range(start, min(start + group, trials))
        if layout == "trials":
            for i in ids:
                table = trial_table(schema, spec, i, epochs).replace_schema_metadata(typed.metadata)
                pq.write_table(table, results / f"t{i:06d}.parquet")
        else:
            tables = (trial_table(schema, spec, i, epochs) for i in ids)
            part = _loc(results) / f"part-{start // group + 1:06d}.parquet"
            write_part(part, tables, [f"t{i:06d}" for i in ids], schema)


def _loc(path: Path) -> Any:
    from normstudy.storage import as_location

    return as_location(path)


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a fresh process running ``command``."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "w = time.perf_counter() - t\n"
        "assert p.returncode == 0, p.stderr\n"
        "print(w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True
    )
    wall, rss = out.stdout.split()
    return float(wall), float(rss)


def measure(home: Path, repeats: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "normstudy", "best", STUDY, "--home", str(home)]
    timed(command)  # warm-up: imports and files in the page cache
    runs = [timed(command) for _ in range(repeats)]
    walls, rss = [w for w, _ in runs], [r for _, r in runs]
    return {
        "wall_median_s": statistics.median(walls),
        "wall_min_s": min(walls),
        "wall_max_s": max(walls),
        "rss_max_mb": max(rss),
        "files": len(list((home / STUDY / "results").glob("*.parquet"))),
        "bytes": sum(f.stat().st_size for f in (home / STUDY / "results").glob("*.parquet")),
    }


def old_reader(results: Path) -> dict[str, Any]:
    """The per-row reader this replaced, in a fresh process (source from git)."""
    source = subprocess.run(
        ["git", "show", f"{OLD_REV}:platform/normstudy/results/_dataset.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "old_dataset.py").write_text(source)
        probe = (
            "import resource, sys, time\n"
            f"sys.path.insert(0, {tmp!r})\n"
            "t = time.perf_counter()\n"
            "import old_dataset as d\n"
            f"s = d.trial_scores(d.read_results({str(results)!r}), 'val/acc', 'max')\n"
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss "
            "/ 1024)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
    wall, rss = out.stdout.split()
    return {"wall_s": float(wall), "rss_max_mb": float(rss)}


def machine() -> dict[str, Any]:
    model = "unknown"
    if shutil.which("lscpu"):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                      if ln.startswith("Model name")), model)  # fmt: skip
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": "none",
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "load_before": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--old", action="store_true", help="also time the per-row reader")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "rows": args.trials * args.epochs,
        "trials": args.trials,
        "epochs": args.epochs,
        "command": "python " + " ".join(sys.argv),
        "layouts": {},
    }
    for layout in args.layouts:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            started = time.perf_counter()
            generate(home, args.trials, args.epochs, "trials" if layout == "one" else layout)
            if layout == "one":
                compact(home / STUDY / "results")
            generated = time.perf_counter() - started
            result = measure(home, args.repeats)
            result["generate_s"] = round(generated, 1)
            if args.old and layout == "trials":
                result["old_reader"] = old_reader(home / STUDY / "results")
            report["layouts"][layout] = result
            print(layout, json.dumps(result), flush=True)
    report["machine"]["load_after"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"results_{report['rows'] // 1_000_000 or report['rows'] // 1000}"
    name += "M" if report["rows"] >= 1_000_000 else "k"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
