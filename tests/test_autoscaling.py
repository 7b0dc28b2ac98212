"""Autoscaling from zero, exercised on Ray's simulated autoscaling cluster.

The cluster is built from cluster/aws.yaml's own node types: a head with 0 CPUs, and its
GPU and CPU worker types with ``min_workers: 0`` and their ``max_workers``, declaring the
resources the launcher detects for their instance types (g5.xlarge: 4 CPU, 1 GPU;
m5.2xlarge: 8 CPU). Ray's fake multi-node provider then starts and stops real raylets on
this machine as the autoscaler decides; their GPUs are declared, not real, so the jobs run
with ``NCSN_TEST_FAKE_GPUS=1`` (work that reserved a GPU computes on the CPU).

Through ``ray job submit`` with token authentication:

* ``jobs/generate.py --min-actors 1 --max-actors 3 --use-gpu``: GPU nodes are added from
  zero, the actor pool grows to three, the job finishes with exactly n unique seeds, and
  the nodes are removed after the (shortened) idle timeout;
* ``jobs/train.py --num-workers 2 --use-gpu``: the job waits for, then gets, two GPU nodes.

What it measured goes to the test's output (``-s``) and docs/results/scaling.md.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from ncsn_ray.sample.sample_set import read_sample_manifest
from ncsn_ray.io.storage import Storage
from support.data import make_tiny_run
from support.ray_head import fake_autoscaling_config, local_ray_head
from support.ray_jobs import alive_nodes, job_output, job_succeeded, submit_job
from support.train_helpers import REPO, write_tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # about 6 minutes on 2 cores: run with -m slow

DETECTED = {"g5.xlarge": {"CPU": 4, "GPU": 1}, "m5.2xlarge": {"CPU": 8}}  # what the launcher detects
IDLE_TIMEOUT_MINUTES = 0.25


def node_types_from_aws_yaml() -> tuple[dict, int]:
    aws = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    head = aws["available_node_types"][aws["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    types = {}
    for name, spec in aws["available_node_types"].items():
        if name == aws["head_node_type"]:
            continue
        resources = {**DETECTED[spec["node_config"]["InstanceType"]], **spec["resources"],
                     "object_store_memory": 80_000_000}
        types[name] = {"resources": resources, "min_workers": spec["min_workers"], "max_workers": spec["max_workers"]}
    return types, aws["max_workers"]


def gpu_nodes(head) -> int:
    return sum(1 for n in alive_nodes(head) if n.get("resources_total", {}).get("GPU", 0) > 0)


class NodeWatch:
    """Samples the number of live GPU nodes every half second while a job runs."""

    def __init__(self, head):
        self.head, self.samples, self.stop = head, [], threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.5):
            try:
                self.samples.append((time.monotonic() - self.started, gpu_nodes(self.head)))
            except OSError:
                pass

    def finish(self) -> list[tuple[float, int]]:
        self.stop.set()
        self.thread.join(timeout=10)
        return self.samples


@pytest.mark.timeout(1500)
def test_jobs_scale_gpu_nodes_up_from_zero_and_back_down(tmp_path):
    types, max_workers = node_types_from_aws_yaml()
    assert {t["min_workers"] for t in types.values()} == {0}
    config = fake_autoscaling_config(types, max_workers=max_workers, idle_timeout_minutes=IDLE_TIMEOUT_MINUTES)
    run = tmp_path / "run"
    make_tiny_run(run)
    out = tmp_path / "samples"
    with local_ray_head(num_cpus=0, tmp_path=tmp_path / "head", autoscaling_config=config,
                        env={"NCSN_TEST_FAKE_GPUS": "1"}) as head:
        assert gpu_nodes(head) == 0, "GPU workers start from zero"
        watch = NodeWatch(head)
        result = submit_job(head, ["python", "jobs/generate.py", "--checkpoint", str(run), "--n", "48", "--out",
                                   str(out), "--shard-size", "2", "--batch-size", "2", "--steps-per-level", "50",
                                   "--min-actors", "1", "--max-actors", "3", "--use-gpu", "--json"],
                            working_dir=REPO, timeout=900)
        scaled_up = watch.finish()
        assert job_succeeded(result), job_output(result)[-4000:]
        peak = max(count for _, count in scaled_up)
        first_up = next(t for t, count in scaled_up if count > 0)
        assert peak >= 2, f"the pool should grow onto more GPU nodes: {scaled_up}"
        manifest = read_sample_manifest(Storage.from_uri(str(out)))
        seeds = sorted(s for shard in manifest["shards"] for s in range(shard["first"], shard["last"] + 1))
        assert manifest["count"] == 48 and seeds == list(range(48))
        summary = next(line for line in reversed(result.stdout.splitlines()) if line.startswith("{"))
        assert '"actors_used": 3' in summary, summary

        ended = time.monotonic()
        while gpu_nodes(head) > 0 and time.monotonic() - ended < 300:
            time.sleep(1)
        scaled_down_after = time.monotonic() - ended
        assert gpu_nodes(head) == 0, "idle GPU nodes should be removed after the idle timeout"

        config_file = write_tiny_config(tmp_path, training={"log_every": 2})
        watch = NodeWatch(head)
        train = submit_job(head, ["python", "jobs/train.py", "--config", str(config_file), "--data",
                                  str(_digits(tmp_path)), "--storage", str(tmp_path / "runs"), "--num-workers", "2",
                                  "--use-gpu", "--steps", "4", "--checkpoint-every", "2", "--no-preview"],
                           working_dir=REPO, timeout=900)
        training = watch.finish()
        assert job_succeeded(train), job_output(train)[-4000:]
        assert max(count for _, count in training) >= 2, f"two GPU workers need two GPU nodes: {training}"
        assert (tmp_path / "runs" / "tiny" / "checkpoint_00000004" / "checkpoint.pt").exists()
    print(f"\n[autoscaling] generation: first GPU node after {first_up:.0f} s, peak {peak} GPU nodes; "
          f"all removed {scaled_down_after:.0f} s after the job (idle timeout {IDLE_TIMEOUT_MINUTES * 60:.0f} s); "
          f"training: {max(c for _, c in training)} GPU nodes, first after "
          f"{next(t for t, c in training if c > 0):.0f} s")


def _digits(tmp_path: Path) -> Path:
    from ncsn_ray.data.prepare import prepare_dataset

    data = tmp_path / "digits"
    prepare_dataset("digits", str(data), log=lambda m: None)
    return data
