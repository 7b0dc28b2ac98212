"""Randomized fault trials: faults at random moments, invariants checked after every trial.

Each trial runs a job's command line (``jobs/generate.py`` or ``jobs/train.py``, as a
subprocess attached to a shared multi-node Ray cluster with ``RAY_ADDRESS``), injects one
fault (or two) at random moments, re-runs the same command while it exits non-zero (as the
job's message tells a user to; at most 3 re-runs), and then checks what users rely on:

* generation: the sample set is complete with exactly n seeds, none lost or duplicated, and
  every shard's bytes equal those of an undisturbed run;
* training: the final checkpoint's weights, EMA and Adam state are bit-identical to an
  uninterrupted run's (SHA-256 digests); for an elastic run whose worker count changed or differs from the reference's,
  equal to float tolerance (:data:`TOLERANCE`, the largest difference of any weight or EMA
  weight; Adam's step count exactly), since DDP sums in another order for another count.

Faults (one per trial, kinds dealt round-robin in a seeded shuffled order, moments drawn
uniformly over the undisturbed run's wall time):

``actor_killed`` / ``worker_killed``  SIGKILL a sampling actor's / a Train worker's process
``node_removed``   remove the node hosting that process (``ray.cluster_utils.Cluster``, no
                   grace), then add a fresh node as an autoscaler would
``store_outage``   stop the S3 server (moto on loopback) for 2-6 s, then start it again
``driver_killed``  SIGKILL the job's driver (the ``python jobs/...`` process)

Two more kinds of trial (``--churn-trials``, ``--two-fault-trials``; generation and training
alternately), drawn after the single-fault trials from their own seeded stream, so that the
single-fault schedule of a seed is what it always was:

``node_churn``     the job runs elastic (training ``--num-workers 1-3``, generation
                   ``--min-actors 1 --num-actors 3``); the node hosting one of its workers or
                   actors is removed at one moment and a fresh node joins at a later one (a
                   spot reclaim, then its replacement), so the job shrinks and may grow again.
                   A training churn trial's moments are fractions of the undisturbed run's
                   stepping (from its first logged step to its end), not of its wall time:
                   start-up is most of a tiny run's wall, and a node lost there hits a group
                   that has not trained yet
``A+B``            two different single faults in one run, at two moments (the first never
                   ``driver_killed``, which would end the run before the second)

The schedule is printed first; ``--only K`` replays trial K alone with the same draws.
Prints one line per trial, the table by fault kind (trials, faults that landed, trials
passed, rows lost, rows duplicated, re-runs, tracebacks seen in any output) and, last, a
JSON object. Exit code 0 when every trial passed.

    python benchmarks/chaos.py [--generation-trials 20] [--training-trials 10] [--churn-trials 4]
        [--two-fault-trials 4] [--seed 0] [--only K]

A fault that "did not land" found nothing to hit (the job had finished, or its process was
not running yet); the trial still checks the invariants.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe  # noqa: E402
from ncsn_ray.testing.stores import RestartableS3  # noqa: E402

GENERATION_FAULTS = ("actor_killed", "node_removed", "store_outage", "driver_killed")
TRAINING_FAULTS = ("worker_killed", "node_removed", "store_outage", "driver_killed")
PROCESS_OF = {"generation": "GenerateShards", "training": "RayTrainWorker"}  # in the Ray process titles
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "chaos-key-id", "AWS_SECRET_ACCESS_KEY": "chaos-secret",
                    "AWS_DEFAULT_REGION": "us-east-1"}
NODE = {"num_cpus": 2, "object_store_memory": 100_000_000}
TRAIN_STEPS = 24
N_SAMPLES = 16
TOLERANCE = 1e-4  # elastic training against the fixed reference: largest weight or EMA difference
ELASTIC = {"training": ["--num-workers", "1-3", "--resize-check", "2"],
           "generation": ["--min-actors", "1", "--num-actors", "3"]}

TINY_CONFIG = {
    "name": "tiny",
    "data": {"dataset": "digits", "image_size": 8, "channels": 1},
    "model": {"kind": "ncsn", "ngf": 4},
    "noise": {"sigma_max": 1.0, "sigma_min": 0.01, "num_levels": 3},
    "training": {"batch_size": 32, "steps": TRAIN_STEPS, "checkpoint_every": 4, "log_every": 4,
                 "keep_checkpoints": 20, "ema_decay": 0.9},
    "sampling": {"steps_per_level": 2, "preview_samples": 4, "batch_size": 2},
}


@dataclass
class Trial:
    index: int
    job: str  # generation | training
    fault: str
    at: float  # moment of the fault, as a fraction of the undisturbed run's wall time (see Rig.moment)
    outage_s: float  # store_outage only
    choice: int  # which matching process or node, when there are several
    second: str | None = None  # a second fault (two-fault trials; node_churn: the node that joins)
    at2: float = 0.0  # its moment, after ``at``

    @property
    def label(self) -> str:
        """The trial's kind in the table: the fault, ``node_churn`` or ``A+B``."""
        if self.fault == "node_churn" or self.second is None:
            return self.fault
        return f"{self.fault}+{self.second}"

    @property
    def elastic(self) -> bool:
        return self.fault == "node_churn"


@dataclass
class Outcome:
    trial: Trial
    landed: bool = False
    exit_codes: list[int] = field(default_factory=list)
    tracebacks: int = 0
    rows_lost: int = 0
    rows_duplicated: int = 0
    identical: bool = False
    difference: float = 0.0  # elastic training: largest weight or EMA difference from the reference
    resizes: list = field(default_factory=list)  # elastic training: the worker counts the run went through
    driver_killed: bool = False  # a driver_killed fault landed (its run exits -9)
    passed: bool = False
    detail: str = ""
    seconds: float = 0.0
    traceback_context: str = ""  # the lines around the first traceback in any run's output


def schedule(seed: int, generation_trials: int, training_trials: int, churn_trials: int = 0,
             two_fault_trials: int = 0) -> list[Trial]:
    """The trials, a function of the arguments alone (so any trial can be replayed). Churn
    and two-fault trials come last, from a stream of their own: adding them leaves the
    single-fault trials of a seed unchanged."""
    rng = random.Random(seed)
    trials: list[Trial] = []
    for job, count, kinds in (("generation", generation_trials, GENERATION_FAULTS),
                              ("training", training_trials, TRAINING_FAULTS)):
        order = list(kinds)
        rng.shuffle(order)
        for k in range(count):
            trials.append(Trial(len(trials), job, order[k % len(order)], round(rng.uniform(0.15, 0.9), 3),
                                round(rng.uniform(2.0, 6.0), 2), rng.randrange(1 << 16)))
    more = random.Random(f"{seed}-churn-and-two-faults")
    for k in range(churn_trials):
        at = round(more.uniform(0.15, 0.5), 3)
        trials.append(Trial(len(trials), ("training", "generation")[k % 2], "node_churn", at, 0.0,
                            more.randrange(1 << 16), second="node_joined", at2=round(at + more.uniform(0.15, 0.5), 3)))
    for k in range(two_fault_trials):
        job = ("generation", "training")[k % 2]
        kinds = GENERATION_FAULTS if job == "generation" else TRAINING_FAULTS
        first = more.choice([kind for kind in kinds if kind != "driver_killed"])
        second = more.choice([kind for kind in kinds if kind != first])
        at = round(more.uniform(0.15, 0.5), 3)
        trials.append(Trial(len(trials), job, first, at, round(more.uniform(2.0, 6.0), 2), more.randrange(1 << 16),
                            second=second, at2=round(at + more.uniform(0.1, 0.4), 3)))
    return trials


# ------------------------------------------------------------------ the rig: cluster, store, data


class Rig:
    """A Ray cluster of a CPU-less head and two 2-CPU nodes, an S3 store, digits on it, a
    tiny config, and the undisturbed reference runs (their wall times set the fault moments)."""

    def __init__(self, workdir: Path) -> None:
        from ray.cluster_utils import Cluster

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

        os.environ.update(FAKE_CREDENTIALS)
        self.workdir = workdir
        self.store = RestartableS3()
        self.store.start()
        os.environ["AWS_ENDPOINT_URL"] = self.store.endpoint
        import boto3

        self.bucket = f"chaos-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=self.store.endpoint, region_name="us-east-1").create_bucket(Bucket=self.bucket)
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "object_store_memory": 100_000_000,
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}})
        for _ in range(2):
            self.cluster.add_node(**NODE)
        self.cluster.wait_for_nodes()
        self.config = workdir / "tiny.yaml"
        self.config.write_text(yaml.safe_dump(TINY_CONFIG))
        self.data = f"s3://{self.bucket}/data/digits"
        self.reference_seconds: dict[str, float] = {}
        self.reference_first_step_s: dict[str, float] = {}  # training: launch to its first step line

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def env(self) -> dict[str, str]:
        return {**os.environ, "RAY_ADDRESS": self.cluster.address, "PYTHONUNBUFFERED": "1"}

    def command(self, job: str, out: str, elastic: bool = False) -> list[str]:
        """The job's command line; ``elastic``: its worker group or actor pool grows and shrinks
        (:data:`ELASTIC`) instead of having a fixed size."""
        if job == "generation":
            pool = ELASTIC[job] if elastic else ["--num-actors", "2"]
            return [sys.executable, str(ROOT / "jobs" / "generate.py"), "--checkpoint", self.uri("train", "reference",
                    "tiny"), "--n", str(N_SAMPLES), "--shard-size", "2", "--batch-size", "2", "--steps-per-level",
                    "150", *pool, "--out", out]
        return [sys.executable, str(ROOT / "jobs" / "train.py"), "--config", str(self.config), "--data", self.data,
                "--storage", out, "--steps", str(TRAIN_STEPS), "--no-preview", "--max-failures", "3",
                "--cpus-per-worker", "1", *(ELASTIC[job] if elastic else [])]

    def prepare(self, log) -> None:
        subprocess.run([sys.executable, str(ROOT / "jobs" / "prepare_data.py"), "--dataset", "digits", "--out",
                        self.data], env=self.env(), check=True, capture_output=True)
        for job in ("training", "generation"):  # generation samples the reference training run
            started = time.monotonic()
            out = self.uri("train" if job == "training" else "gen", "reference")
            driver = subprocess.Popen(self.command(job, out), env=self.env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
            lines = []
            for line in driver.stdout:  # read as printed, to time the first training step
                lines.append(line)
                if "[train] step " in line and job not in self.reference_first_step_s:
                    self.reference_first_step_s[job] = time.monotonic() - started
            if driver.wait() != 0:
                raise RuntimeError(f"the undisturbed {job} run failed:\n{''.join(lines)}")
            self.reference_seconds[job] = time.monotonic() - started
            first = self.reference_first_step_s.get(job)
            log(f"undisturbed {job} run: {self.reference_seconds[job]:.1f} s"
                + (f" (first step logged after {first:.1f} s)" if first is not None else ""))
        from ncsn_ray.io.storage import Storage
        from ncsn_ray.testing.digests import training_state_digests

        run = Storage.from_uri(self.uri("train", "reference", "tiny"))
        self.reference_bytes = run.read_bytes(f"checkpoint_{TRAIN_STEPS:08d}/checkpoint.pt")
        self.reference_digests = training_state_digests(self.reference_bytes)
        self.reference_workers = worker_counts(run)

    def moment(self, trial: "Trial", at: float) -> float:
        """Seconds after launch for the fraction ``at`` of the undisturbed run: of its wall time,
        or for a training churn trial of its stepping (first logged step to end)."""
        total = self.reference_seconds[trial.job]
        first = self.reference_first_step_s.get(trial.job) if trial.elastic and trial.job == "training" else None
        return at * total if first is None else first + at * (total - first)

    def worker_nodes(self) -> list:
        return [n for n in self.cluster.list_all_nodes() if n is not self.cluster.head_node]

    def restore_nodes(self) -> None:
        """Back to two worker nodes after a trial that removed or added one."""
        while len(self.worker_nodes()) < 2:
            self.cluster.add_node(**NODE)
        while len(self.worker_nodes()) > 2:
            self.cluster.remove_node(self.worker_nodes()[-1])
        self.cluster.wait_for_nodes()

    def close(self) -> None:
        self.cluster.shutdown()
        self.store.stop()


# ------------------------------------------------------------------ faults


def _processes(pattern: str) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if pattern in cmdline and "chaos.py" not in cmdline:
            found.append(proc)
    return sorted(found, key=lambda p: p.pid)


def _node_hosting(proc, cluster):
    """The cluster node whose raylet is an ancestor of ``proc`` (None for the head or none)."""
    raylets = {}
    for node in cluster.list_all_nodes():
        if node is cluster.head_node:
            continue
        for info in node.all_processes.get("raylet", []):
            raylets[info.process.pid] = node
    try:
        for parent in proc.parents():
            if parent.pid in raylets:
                return raylets[parent.pid]
    except Exception:  # noqa: BLE001 - the process went away meanwhile
        return None
    return None


def inject(kind: str, trial: Trial, rig: Rig, driver: subprocess.Popen) -> bool:
    """Inject a fault of ``kind`` now; True if it hit something. Besides the kinds of
    :data:`GENERATION_FAULTS` and :data:`TRAINING_FAULTS`, the two halves of ``node_churn``:
    ``node_lost`` removes the node hosting a worker or actor and adds none, ``node_joined``
    adds a fresh node."""
    if kind == "node_joined":
        rig.cluster.add_node(**NODE)
        return True
    if kind == "driver_killed":
        driver.kill()
        return True
    if kind == "store_outage":
        rig.store.stop()
        time.sleep(trial.outage_s)
        rig.store.start()
        return True
    targets = _processes(PROCESS_OF[trial.job])
    if not targets:
        return False
    target = targets[trial.choice % len(targets)]
    if kind in ("actor_killed", "worker_killed"):
        try:
            target.send_signal(signal.SIGKILL)
        except Exception:  # noqa: BLE001 - it exited on its own meanwhile
            return False
        return True
    node = _node_hosting(target, rig.cluster)
    if node is None:
        return False
    rig.cluster.remove_node(node, allow_graceful=False)
    if kind == "node_removed":
        rig.cluster.add_node(**NODE)  # a fresh node joins at once, as the autoscaler would add one
    return True


# ------------------------------------------------------------------ invariants


def check_generation(rig: Rig, out: str, outcome: Outcome) -> None:
    from ncsn_ray.io.storage import Storage
    from ncsn_ray.sample.sample_set import read_sample_manifest

    storage, reference = Storage.from_uri(out), Storage.from_uri(rig.uri("gen", "reference"))
    manifest = read_sample_manifest(storage)
    seeds = []
    for shard in manifest["shards"]:
        seeds += storage.read_table(shard["path"], columns=["seed"]).column("seed").to_pylist()
    unique = set(seeds)
    outcome.rows_lost = len(set(range(N_SAMPLES)) - unique)
    outcome.rows_duplicated = len(seeds) - len(unique)
    names = sorted(s["path"] for s in read_sample_manifest(reference)["shards"])
    outcome.identical = (sorted(s["path"] for s in manifest["shards"]) == names
                         and all(storage.read_bytes(n) == reference.read_bytes(n) for n in names))


def worker_counts(run) -> set[int]:
    """The worker-group sizes that trained a run's logged windows (``metrics.jsonl``)."""
    lines = [json.loads(line) for line in run.read_bytes("metrics.jsonl").decode().splitlines() if line.strip()]
    return {line["workers"] for line in lines if "loss" in line}


def check_training(rig: Rig, out: str, outcome: Outcome) -> None:
    from ncsn_core import load_checkpoint
    from ncsn_ray.io.storage import Storage
    from ncsn_ray.testing.digests import training_state_digests

    run = Storage.from_uri(f"{out}/tiny")
    final = run.read_bytes(f"checkpoint_{TRAIN_STEPS:08d}/checkpoint.pt")
    digests = training_state_digests(final)
    lines = [json.loads(line) for line in run.read_bytes("metrics.jsonl").decode().splitlines() if line.strip()]
    outcome.resizes = [[r["resize"]["from"], r["resize"]["to"]] for r in lines if "resize" in r]
    if not outcome.resizes and worker_counts(run) == rig.reference_workers:
        # the reference's worker count throughout: bit identity, as for a fixed group
        outcome.identical = digests == rig.reference_digests
        if not outcome.identical:
            outcome.detail = "differs in " + ", ".join(k for k in digests if digests[k] != rig.reference_digests[k])
        return
    ours, reference = load_checkpoint(final), load_checkpoint(rig.reference_bytes)
    outcome.difference = max((a.float() - b.float()).abs().max().item()
                             for mine, theirs in ((ours.model_state, reference.model_state),
                                                  (ours.ema_state, reference.ema_state))
                             for a, b in ((mine[k], theirs[k]) for k in theirs))
    steps = int(ours.optimizer_state["state"][0]["step"])
    outcome.identical = outcome.difference < TOLERANCE and ours.step == steps == TRAIN_STEPS
    if not outcome.identical:
        outcome.detail = f"differs by {outcome.difference:.2e} (Adam step {steps})"


def run_trial(trial: Trial, rig: Rig, keep_logs: Path | None = None) -> Outcome:
    outcome = Outcome(trial)
    out = rig.uri("gen" if trial.job == "generation" else "train", f"trial-{trial.index}")
    command, logs = rig.command(trial.job, out, elastic=trial.elastic), []
    faults = [(trial.at, "node_lost" if trial.elastic else trial.fault)]
    if trial.second is not None:
        faults.append((trial.at2, trial.second))
    started = time.monotonic()
    for attempt in range(4):  # the first run and at most 3 re-runs
        with tempfile.TemporaryFile("w+") as output:
            driver = subprocess.Popen(command, env=rig.env(), stdout=output, stderr=subprocess.STDOUT, text=True)
            if attempt == 0:
                landed = []
                for at, kind in faults:
                    fire = started + rig.moment(trial, at)
                    while driver.poll() is None and time.monotonic() < fire:
                        time.sleep(0.05)
                    landed.append(driver.poll() is None and inject(kind, trial, rig, driver))
                    outcome.driver_killed |= kind == "driver_killed" and landed[-1]
                outcome.landed = all(landed)
            try:
                code = driver.wait(timeout=600)
            except subprocess.TimeoutExpired:
                driver.kill()
                code = driver.wait()
                outcome.detail = "a run hung for 600 s"
            output.seek(0)
            logs.append(output.read())
            if keep_logs is not None:
                (keep_logs / f"trial-{trial.index}-run-{attempt}.log").write_text(logs[-1])
        outcome.exit_codes.append(code)
        if code == 0:
            break
    outcome.seconds = time.monotonic() - started
    rig.restore_nodes()
    outcome.tracebacks = sum(text.count("Traceback") for text in logs)
    for text in logs:
        if "Traceback" in text:
            lines = text.splitlines()
            at = next(i for i, line in enumerate(lines) if "Traceback" in line)
            outcome.traceback_context = "\n".join(lines[max(0, at - 5):at + 25])
            break
    if outcome.exit_codes[-1] != 0:
        outcome.detail = outcome.detail or f"never finished: {logs[-1].strip().splitlines()[-1:]}"
        return outcome
    try:
        (check_generation if trial.job == "generation" else check_training)(rig, out, outcome)
    except Exception as err:  # noqa: BLE001 - an unreadable result is a failed trial
        outcome.detail = f"result unreadable: {type(err).__name__}: {err}"
        return outcome
    expected_codes = all(c in (0, 1) or (outcome.driver_killed and i == 0) for i, c in enumerate(outcome.exit_codes))
    outcome.passed = (outcome.identical and outcome.rows_lost == 0 and outcome.rows_duplicated == 0
                      and outcome.tracebacks == 0 and expected_codes)
    if not expected_codes:
        outcome.detail = outcome.detail or f"exit codes {outcome.exit_codes}"
    return outcome


def table(outcomes: list[Outcome]) -> list[dict]:
    rows: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for o in outcomes:
        row = rows[(o.trial.job, o.trial.label)]
        row["trials"] += 1
        row["landed"] += o.landed
        row["passed"] += o.passed
        row["rows_lost"] += o.rows_lost
        row["rows_duplicated"] += o.rows_duplicated
        row["reruns"] += len(o.exit_codes) - 1
        row["tracebacks"] += o.tracebacks
    return [{"job": job, "fault": fault, **counts} for (job, fault), counts in sorted(rows.items())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generation-trials", type=int, default=20)
    parser.add_argument("--training-trials", type=int, default=10)
    parser.add_argument("--churn-trials", type=int, default=4,
                        help="elastic jobs under node churn (a node removed, later one added)")
    parser.add_argument("--two-fault-trials", type=int, default=4, help="trials with two faults in one run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule (default: %(default)s)")
    parser.add_argument("--only", type=int, action="append", help="run only trial K (repeatable): a replay")
    parser.add_argument("--keep-logs", type=Path, help="write every run's output to DIR/trial-K-run-J.log")
    args = parser.parse_args(argv)
    log = lambda message: print(message, flush=True)  # noqa: E731
    trials = schedule(args.seed, args.generation_trials, args.training_trials, args.churn_trials,
                      args.two_fault_trials)
    if args.only:
        trials = [t for t in trials if t.index in args.only]
    log(f"machine: {describe()}")
    log(f"schedule (seed {args.seed}):")
    for t in trials:
        log(f"  trial {t.index}: {t.job} {t.label} at {t.at:.0%}" + (f" and {t.at2:.0%}" if t.second else "")
            + (" of the undisturbed run's stepping" if t.elastic and t.job == "training" else " of the undisturbed run")
            + (f", store down {t.outage_s} s" if "store_outage" in (t.fault, t.second) else "")
            + (" (elastic: a node removed, then one added)" if t.elastic else ""))
    with tempfile.TemporaryDirectory() as workdir:
        rig = Rig(Path(workdir))
        try:
            rig.prepare(log)
            outcomes = []
            for trial in trials:
                if args.keep_logs:
                    args.keep_logs.mkdir(parents=True, exist_ok=True)
                outcome = run_trial(trial, rig, args.keep_logs)
                outcomes.append(outcome)
                log(f"trial {trial.index}: {trial.job} {trial.label}: {'landed' if outcome.landed else 'missed'}, "
                    f"exit codes {outcome.exit_codes}, lost {outcome.rows_lost}, duplicated "
                    f"{outcome.rows_duplicated}, identical {outcome.identical}"
                    + (f" (resizes {outcome.resizes}, within {outcome.difference:.1e})" if outcome.resizes else "")
                    + f", tracebacks {outcome.tracebacks}, "
                    f"{outcome.seconds:.0f} s: {'PASS' if outcome.passed else 'FAIL ' + outcome.detail}")
                if outcome.traceback_context:
                    log("  the first traceback, in context:\n    " + outcome.traceback_context.replace("\n", "\n    "))
        finally:
            rig.close()
    rows = table(outcomes)
    log("\n| job | fault | trials | landed | passed | rows lost | rows duplicated | re-runs | tracebacks |")
    log("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        log(f"| {r['job']} | {r['fault']} | {r['trials']} | {r['landed']} | {r['passed']} | {r['rows_lost']} | "
            f"{r['rows_duplicated']} | {r['reruns']} | {r['tracebacks']} |")
    passed = sum(o.passed for o in outcomes)
    log(f"\n{passed} of {len(outcomes)} trials passed")
    print(json.dumps({"seed": args.seed, "reference_seconds": rig.reference_seconds, "table": rows,
                      "trials": [{**asdict(o.trial), **{k: v for k, v in asdict(o).items() if k != "trial"}}
                                 for o in outcomes]}))
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
