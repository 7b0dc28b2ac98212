"""Elastic training on a simulated cluster whose nodes come and go: what a join and a loss cost.

Builds Ray's multi-node test cluster (``ray.cluster_utils.Cluster``: a CPU-less head and
nodes of one CPU, so one node holds one training worker), starts ``jobs/train.py
--num-workers 1-3`` on one node as a user would (a subprocess attached with ``RAY_ADDRESS``),
and then changes the cluster under it:

1. one node: the group trains with 1 worker;
2. a node joins: the group grows to 2 (timed: from ``add_node`` to the new group's first step);
3. another joins: 3 workers;
4. a node is removed (no grace, as a spot reclaim): the group goes on with 2, from the
   newest checkpoint.

It prints, from the run's own ``metrics.jsonl`` (windows and resize records):

* images/s of the steady windows at 1, 2 and 3 workers (the first window after each start is
  left out: it holds the restart's warm-up);
* the time from a node joining to the group using it, and from a node's removal to training
  again;
* the work lost to the removal: the steps trained past the newest checkpoint, trained again
  (``redone_steps``, counted to the log window), against ``training.checkpoint_every``.

Simulated nodes on one machine share its cores: throughput does not grow with nodes here,
and the figures are what elasticity costs (restarts, redone steps), not how it scales. Run
``python benchmarks/bench_train.py --plain-only`` beside it for the machine's speed.

    python benchmarks/bench_elastic.py [--config digits-ncsn] [--steps 4000] [--checkpoint-every 50]
        [--log-every 10] [--windows 4] [--resize-check 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe  # noqa: E402

HEAD = {"num_cpus": 0, "object_store_memory": 100_000_000,
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}}
NODE = {"num_cpus": 1, "object_store_memory": 100_000_000}


def records(run: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (FileNotFoundError, ValueError):  # not there yet, or caught mid-rewrite
        return []


def windows(run: Path, workers: int | None = None) -> list[dict]:
    return [r for r in records(run) if "loss" in r and (workers is None or r["workers"] == workers)]


def wait_for(condition, timeout: float, what: str, driver: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if driver.poll() is not None:
            raise RuntimeError(f"the training job ended (exit {driver.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def steady(run: Path, workers: int) -> list[float]:
    """images/s of the windows trained by groups of ``workers``, each group's first window left out."""
    out, previous_start = [], None
    for w in windows(run, workers):
        if w["loop_started_at"] != previous_start:
            previous_start = w["loop_started_at"]
            continue
        out.append(w["images_per_s"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="digits-ncsn")
    parser.add_argument("--steps", type=int, default=4000, help="long enough to outlast the changes (the job is "
                        "stopped once they are measured)")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--windows", type=int, default=4, help="steady windows to measure at each size")
    parser.add_argument("--resize-check", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import ray
    from ray.cluster_utils import Cluster

    from ncsn_ray.data.prepare import prepare_dataset

    log = lambda message: print(message, flush=True)  # noqa: E731
    log(f"machine: {describe()}")
    result: dict = {"machine": describe(), "config": args.config, "checkpoint_every": args.checkpoint_every,
                    "log_every": args.log_every}
    with tempfile.TemporaryDirectory() as folder:
        data, storage = Path(folder) / "digits", Path(folder) / "runs"
        prepare_dataset("digits", str(data), log=lambda *a: None)
        cluster = Cluster(initialize_head=True, head_node_args=HEAD)
        driver = None
        try:
            cluster.add_node(**NODE)
            cluster.wait_for_nodes()
            command = [sys.executable, str(ROOT / "jobs" / "train.py"), "--config", args.config, "--data", str(data),
                       "--storage", str(storage), "--name", "elastic", "--steps", str(args.steps),
                       "--checkpoint-every", str(args.checkpoint_every), "--set", f"training.log_every={args.log_every}",
                       "--set", "training.keep_checkpoints=100", "--num-workers", "1-3", "--resize-check",
                       str(args.resize_check), "--cpus-per-worker", "1", "--no-preview", "--no-eval",
                       "--tracking", "none"]
            env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONUNBUFFERED": "1"}
            output = open(Path(folder) / "job.log", "w")
            driver = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
            run = storage / "elastic"
            joins, rates = [], {}
            for size in (1, 2, 3):
                if size > 1:
                    cluster.add_node(**NODE)
                    joined = time.time()
                wait_for(lambda: len(steady(run, size)) >= args.windows, 900, f"{args.windows} windows at {size}",
                         driver)
                rates[size] = round(statistics.median(steady(run, size)), 1)  # before a restart drops any
                if size > 1:
                    first = min(w["loop_started_at"] for w in windows(run, size))
                    window = min(w["time"] for w in windows(run, size))
                    joins.append({"to": size, "first_step_s": round(first - joined, 1),
                                  "first_window_s": round(window - joined, 1)})
                    log(f"a node joined: {size} workers training {first - joined:.1f} s later")
            removed_at = time.time()
            before = max(w["step"] for w in windows(run))
            cluster.remove_node([n for n in cluster.list_all_nodes() if n is not cluster.head_node][0],
                                allow_graceful=False)
            wait_for(lambda: any(r.get("resize", {}).get("from") == 3 for r in records(run))
                     and any(w["loop_started_at"] > removed_at for w in windows(run, 2)), 900,
                     "training again after the removal", driver)
            note = next(r for r in records(run) if r.get("resize", {}).get("from") == 3)
            again = min(w["loop_started_at"] for w in windows(run, 2) if w["loop_started_at"] > removed_at)
            result["removal"] = {"last_logged_step": before, "resumed_from_step": note["step"],
                                 "redone_steps": note["resize"]["redone_steps"],
                                 "training_again_s": round(again - removed_at, 1), "gap_s": note["resize"]["gap_s"]}
            log(f"a node removed at step {before}: resumed from the checkpoint at step {note['step']} "
                f"({note['resize']['redone_steps']} steps trained again; checkpoint every {args.checkpoint_every}), "
                f"training again {again - removed_at:.1f} s later")
            result["joins"] = joins
            result["images_per_s"] = rates
            result["resizes"] = [r["resize"] for r in records(run) if "resize" in r]
        finally:
            if driver is not None and driver.poll() is None:
                driver.terminate()
                try:
                    driver.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    driver.kill()
            ray.shutdown()
            cluster.shutdown()
    for size, rate in result.get("images_per_s", {}).items():
        log(f"{size} node(s), {size} worker(s): {rate} img/s (median of the steady windows)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
