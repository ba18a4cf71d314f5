"""What a study costs beyond its trials: `normstudy run` wall time against the same trials run
in one process, one at a time (issue 10's study overhead).

The quickstart study (digits, test_resnet, FIFO, one trial at a time so the ratio is not blurred
by parallelism) runs twice through the CLI, with 1 and with N trials, each in a fresh home; the
same number of trials then runs in this process with `run_trial` (no Ray, no stores). Reported:

- ratio = study wall (N trials) / in-process wall (N trials);
- fixed cost per study = wall(1 trial) - in-process wall(1 trial);
- cost per trial = (wall(N) - wall(1) - (in-process(N) - in-process(1))) / (N - 1).

Twice: with a fresh local Ray per study (what `normstudy run` does on a laptop), and attached
to a Ray instance already running (``ray start --head``, then ``RAY_ADDRESS``), as on a cluster
where `normstudy submit` finds Ray up.

    python benchmarks/bench_study_overhead.py [--trials 4] [--epochs 6] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def study_wall(trials: int, epochs: int, address: str | None = None) -> float:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    if address:
        env["RAY_ADDRESS"] = address
    with tempfile.TemporaryDirectory(prefix="nsbench") as home:
        args = [sys.executable, "-m", "normstudy", "run", str(QUICKSTART), "--home", home]
        start = time.perf_counter()
        done = subprocess.run(
            [*args, *overrides(trials, epochs)], capture_output=True, text=True, env=env
        )
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"normstudy run failed:\n{done.stderr[-3000:]}")
    return wall


@contextlib.contextmanager
def running_ray() -> Iterator[str]:
    """A local Ray started beforehand (``ray start --head``), stopped afterwards."""
    ray = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port = 6390
    with tempfile.TemporaryDirectory(prefix="nsray", dir="/tmp") as tmp:
        subprocess.run(
            [ray, "start", "--head", f"--port={port}", "--include-dashboard=false",
             f"--temp-dir={tmp}", f"--num-cpus={os.cpu_count()}"],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        try:
            yield f"127.0.0.1:{port}"
        finally:
            subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)


def overhead(in_process: list[float], one: float, many: float) -> dict[str, float]:
    n = len(in_process)
    return {
        "study_1_s": round(one, 2),
        f"study_{n}_s": round(many, 2),
        "ratio": round(many / sum(in_process), 3),
        "fixed_per_study_s": round(one - in_process[0], 2),
        "per_trial_s": round((many - one - sum(in_process[1:])) / (n - 1), 2),
    }


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
    load_before = os.getloadavg()[0]
    in_process = in_process_wall(n, epochs)  # also warms the page cache and the imports
    fresh = overhead(in_process, study_wall(1, epochs), study_wall(n, epochs))
    with running_ray() as address:
        one, many = study_wall(1, epochs, address), study_wall(n, epochs, address)
        attached = overhead(in_process, one, many)
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "gpu": "none",
            "python": platform.python_version(),
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
        },
        "trials": n,
        "epochs": epochs,
        "in_process_s": [round(t, 2) for t in in_process],
        "fresh_local_ray": fresh,
        "attached_to_running_ray": attached,
    }
    print(json.dumps(record, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study_overhead_cpu.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "study_overhead_cpu.md").write_text(markdown(record, n, epochs))


def markdown(record: dict[str, Any], n: int, epochs: int) -> str:
    m = record["machine"]
    rows = [
        f"| {label} | {r['study_1_s']} | {r[f'study_{n}_s']} | {r['ratio']} | "
        f"{r['fixed_per_study_s']} | {r['per_trial_s']} |"
        for label, r in (
            ("fresh local Ray (`normstudy run`)", record["fresh_local_ray"]),
            ("attached to a running Ray (`RAY_ADDRESS`)", record["attached_to_running_ray"]),
        )
    ]
    trial_s = sum(record["in_process_s"]) / n
    return "\n".join(
        [
            "# Study overhead: `normstudy run` against the same trials in one process",
            "",
            f"- Date: {record['date']}",
            f"- CPU: {m['cpu']}, {m['cores']} cores (no GPU), Python {m['python']}; 1-min load "
            f"average {m['load_before']:.2f} before, {m['load_after']:.2f} after",
            f"- The quickstart study (digits, test_resnet), {epochs} epochs, FIFO, random "
            f"sampler, one trial at a time; in process: {n} trials with `run_trial`, "
            f"{trial_s:.1f} s each on average ({', '.join(map(str, record['in_process_s']))} s)",
            "- ratio = study wall (N trials) / in-process wall (N trials); fixed = study wall "
            "(1 trial) - in-process wall (1 trial); per trial = what each further trial adds",
            "- Targets (issue 10): ratio ≤ 1.05 for 30-s trials, fixed ≤ 5 s, per trial ≤ 1 s",
            "",
            f"Command: `python benchmarks/bench_study_overhead.py --trials {n} --epochs {epochs}`",
            "",
            f"| Ray | study, 1 trial (s) | study, {n} trials (s) | ratio | fixed per study (s) "
            "| per trial (s) |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    main()
