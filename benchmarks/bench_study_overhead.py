"""What a study costs beyond its trials: `normstudy run` wall time against the same trials run
in one process, one at a time (issue 10's study overhead).

The quickstart study (digits, test_resnet, FIFO, one trial at a time so the ratio is not blurred
by parallelism) runs twice through the CLI, with 1 and with N trials, each in a fresh home; the
same number of trials then runs in this process with `run_trial` (no Ray, no stores). Reported:

- ratio = study wall (N trials) / in-process wall (N trials);
- fixed cost per study = wall(1 trial) - in-process wall(1 trial);
- cost per trial = (wall(N) - wall(1) - (in-process(N) - in-process(1))) / (N - 1).

    python benchmarks/bench_study_overhead.py [--trials 4] [--epochs 6] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "searchspaces" / "quickstart.yaml"


def overrides(trials: int, epochs: int) -> list[str]:
    sets = [
        f"search.num_samples={trials}",
        "search.max_concurrent=1",
        "search.scheduler.name=fifo",
        "search.sampler=random",
        f"train.epochs={epochs}",
    ]
    return [a for s in sets for a in ("--set", s)]


def study_wall(trials: int, epochs: int) -> float:
    with tempfile.TemporaryDirectory(prefix="nsbench") as home:
        args = [sys.executable, "-m", "normstudy", "run", str(QUICKSTART), "--home", home]
        start = time.perf_counter()
        done = subprocess.run(
            [*args, *overrides(trials, epochs)], capture_output=True, text=True, check=False
        )
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"normstudy run failed:\n{done.stderr[-3000:]}")
    return wall


def in_process_wall(trials: int, epochs: int) -> list[float]:
    from normstudy.spec import load_spec, resolve_config
    from normstudy.trial import LocalReporter, run_trial

    spec = load_spec(QUICKSTART, [f"train.epochs={epochs}"])
    times = []
    for seed in range(trials):
        config = resolve_config(spec.trial_base(), {"seed": seed})
        start = time.perf_counter()
        run_trial(config, LocalReporter())
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    n, epochs = args.trials, args.epochs
    in_process = in_process_wall(n, epochs)  # also warms the page cache and the imports
    one, many = study_wall(1, epochs), study_wall(n, epochs)
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "gpu": "none",
            "python": platform.python_version(),
            "load_after": os.getloadavg()[0],
        },
        "trials": n,
        "epochs": epochs,
        "in_process_s": [round(t, 2) for t in in_process],
        "study_1_s": round(one, 2),
        f"study_{n}_s": round(many, 2),
        "ratio": round(many / sum(in_process), 3),
        "fixed_per_study_s": round(one - in_process[0], 2),
        "per_trial_s": round((many - one - sum(in_process[1:])) / (n - 1), 2),
    }
    print(json.dumps(record, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study_overhead_cpu.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
