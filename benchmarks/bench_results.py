"""`normstudy best` on a large synthetic study: wall time (process start included) and peak memory.

A study home is filled with synthetic results typed by the quickstart study's schema: TRIALS
trials x EPOCHS epochs, every metric of the study's catalogue random, test/* on the epochs that
improve val/acc. The same rows are then read in three layouts, each timed as a fresh
`python -m normstudy best` process, after one warm-up run (imports and files in the page cache):

- trials: one file per trial, as a study leaves them without compaction;
- parts: parts of 100 trials, as the sink leaves them while a study runs (it compacts every
  100 finished trials);
- compacted: after the compaction that ends a study (parts of about 1M rows), timed itself
  when the trial files were generated first.

With --old, the per-row reader this replaced (git revision OLD_REV) reads the trial files too,
in a fresh process, for a side-by-side ratio (slow: 40-60 s and 3 GB at 1M rows).

    python benchmarks/bench_results.py                    # 1M rows: 5,000 trials x 200 epochs
    python benchmarks/bench_results.py --trials 50000 --layouts parts compacted   # 10M rows
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
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
from normstudy.results._compact import PART_ROWS, write_part
from normstudy.results._schema import conform
from normstudy.results._schema_file import save_schema, with_metadata
from normstudy.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
STUDY = "bench"
OLD_REV = "5f10151"
LAYOUTS = ("trials", "compacted", "parts")


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


def generate(home: Path, trials: int, epochs: int, group: int) -> Path:
    """The study's results: one file per trial (``group`` 0), else parts of ``group`` trials."""
    spec = load_spec(ROOT / "searchspaces" / "quickstart.yaml").model_copy(update={"name": STUDY})
    study = home / STUDY
    results = study / "results"
    results.mkdir(parents=True)
    (study / "study.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    schema = study_schema(spec)
    save_schema(_loc(results), schema)
    typed = with_metadata(schema)
    for start in range(0, trials, group or trials):
        ids = range(start, min(start + (group or trials), trials))
        if not group:
            for i in ids:
                table = trial_table(schema, spec, i, epochs).replace_schema_metadata(typed.metadata)
                pq.write_table(table, results / f"t{i:06d}.parquet")
        else:
            tables = (trial_table(schema, spec, i, epochs) for i in ids)
            part = _loc(results) / f"part-{start // group + 1:06d}.parquet"
            write_part(part, tables, [f"t{i:06d}" for i in ids], schema)
    return results


def _loc(path: Path) -> Any:
    from normstudy.storage import as_location

    return as_location(path)


def timed(command: list[str]) -> tuple[float, float, float]:
    """Wall and CPU seconds and peak RSS (MB) of a fresh process running ``command``."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "w = time.perf_counter() - t\n"
        "assert p.returncode == 0, p.stderr\n"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(w, u.ru_utime + u.ru_stime, u.ru_maxrss / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True
    )
    wall, cpu, rss = out.stdout.split()
    return float(wall), float(cpu), float(rss)


def measure(home: Path, repeats: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "normstudy", "best", STUDY, "--home", str(home)]
    timed(command)  # warm-up: imports and files in the page cache
    runs = [timed(command) for _ in range(repeats)]
    files = list((home / STUDY / "results").glob("*.parquet"))
    return {
        "wall_s": sorted(round(w, 2) for w, _, _ in runs),
        "cpu_s": sorted(round(c, 2) for _, c, _ in runs),
        "rss_max_mb": round(max(r for _, _, r in runs)),
        "files": len(files),
        "mb_on_disk": round(sum(f.stat().st_size for f in files) / 2**20),
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
    return {"wall_s": round(float(wall), 2), "rss_max_mb": round(float(rss))}


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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--old", action="store_true", help="also time the per-row reader")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rows = args.trials * args.epochs
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "rows": rows,
        "trials": args.trials,
        "epochs": args.epochs,
        "command": "python " + " ".join(sys.argv),
        "layouts": {},
    }
    layouts = report["layouts"]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "a"
        if "trials" in args.layouts:
            started = time.perf_counter()
            results = generate(home, args.trials, args.epochs, 0)
            layouts["trials"] = measure(home, args.repeats)
            layouts["trials"]["generate_s"] = round(time.perf_counter() - started)
            if args.old:
                layouts["trials"]["old_reader"] = old_reader(results)
            _show("trials", layouts)
        if "compacted" in args.layouts:
            started = time.perf_counter()
            if "trials" in args.layouts:
                compact(home / STUDY / "results")
            else:
                generate(home, args.trials, args.epochs, PART_ROWS // args.epochs)
            layouts["compacted"] = measure(home, args.repeats)
            key = "compact_s" if "trials" in args.layouts else "generate_s"
            layouts["compacted"][key] = round(time.perf_counter() - started)
            _show("compacted", layouts)
        if "parts" in args.layouts:
            shutil.rmtree(home, ignore_errors=True)
            started = time.perf_counter()
            generate(home, args.trials, args.epochs, 100)
            layouts["parts"] = measure(home, args.repeats)
            layouts["parts"]["generate_s"] = round(time.perf_counter() - started)
            _show("parts", layouts)
    report["machine"]["load_after"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    size = f"{rows // 1_000_000}M" if rows >= 1_000_000 else f"{rows // 1000}k"
    (args.out / f"results_{size}.json").write_text(json.dumps(report, indent=2) + "\n")


def _show(layout: str, layouts: dict[str, Any]) -> None:
    print(layout, json.dumps(layouts[layout]), flush=True)


if __name__ == "__main__":
    main()
