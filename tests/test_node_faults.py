"""Nodes that go away mid-job, on Ray's multi-node test cluster (``ray.cluster_utils.Cluster``:
real raylets on one machine). A training node is removed under its worker; a node hosting a
sampling actor is removed and a fresh node joins (as an autoscaler would add one). Both
jobs finish: training from its last checkpoint with the step counter intact, generation
with exactly n unique seeds, byte-identical to a run no node left.
"""

from __future__ import annotations

import io
import json
import threading
import time

import pyarrow.parquet as pq
import pytest

from ncsn_core import load_checkpoint
from ncsn_ray.testing import faults
from ncsn_ray.train.checkpoints import RAY_TRAIN_SNAPSHOT
from support.data import make_tiny_run
from support.jobs import load_job
from support.train_helpers import metrics, write_tiny_config

pytestmark = [pytest.mark.ray]


# The head has no CPU, so no worker or actor runs beside the driver. Its GCS declares a node
# dead after 5 missed health checks; at 1 s apart (Ray's default is 3 s) the tests spend 5 s
# instead of 15 s noticing the node they removed.
_HEAD = {"num_cpus": 0, "object_store_memory": 100_000_000,
         "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}}


def _node_of(node_hex: str, cluster):
    return next(n for n in cluster.list_all_nodes() if n.node_id == node_hex)


@pytest.mark.slow  # CI covers a lost training node in test_elastic.py (a node removed under the group, the run ends as a fixed one); run with -m slow
@pytest.mark.timeout(900)
def test_removing_the_node_that_runs_the_training_worker_resumes_elsewhere(digits_local, tmp_path, monkeypatch):
    """A training node goes away mid-run (``Cluster.remove_node`` on the node the worker runs
    on): Ray Train replaces the worker on another node, which resumes from the last
    checkpoint, and the run finishes with its step counter intact."""
    import threading

    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=_HEAD)
    try:
        for _ in range(2):  # 2 CPUs each: the worker's and one for the Ray Data tasks that read its data
            cluster.add_node(num_cpus=2, object_store_memory=100_000_000)
        ray.init(address=cluster.address)
        config = write_tiny_config(tmp_path, training={"log_every": 2})
        storage = tmp_path / "runs"
        monkeypatch.setenv(faults.ENV, "train.rank_digests")
        outcome: dict = {}
        args = ["--config", str(config), "--data", str(digits_local), "--storage", str(storage), "--steps", "24",
                "--checkpoint-every", "4", "--max-failures", "2", "--no-preview",
                "--cpus-per-worker", "1", "--set", "training.keep_checkpoints=20"]
        thread = threading.Thread(target=lambda: outcome.setdefault("code", load_job("train").main(args)))
        thread.start()
        first = storage / "tiny" / "rank_digests" / "step_00000004_rank_0.json"
        # Wait until Ray Train's controller has registered checkpoint 4 (its snapshot names it):
        # a worker lost between writing a checkpoint and its registration restarts from the
        # checkpoint before, here from step 0, which is Ray Train's contract but not this test's case.
        snapshot = storage / "tiny" / RAY_TRAIN_SNAPSHOT
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not (
                first.exists() and snapshot.exists() and "checkpoint_00000004" in snapshot.read_text()):
            time.sleep(0.2)
        node = json.loads(first.read_text())["node"]
        cluster.remove_node(_node_of(node, cluster), allow_graceful=False)
        thread.join(timeout=600)
        assert outcome.get("code") == 0, outcome
    finally:
        ray.shutdown()
        cluster.shutdown()
    run = storage / "tiny"
    final = load_checkpoint(run / "checkpoint_00000024" / "checkpoint.pt")
    assert final.step == 24 and int(final.optimizer_state["state"][0]["step"]) == 24
    nodes = {json.loads(p.read_text())["node"] for p in (run / "rank_digests").glob("*.json")}
    assert node in nodes and len(nodes) == 2, "the worker moved to another node"
    steps = [m["step"] for m in metrics(run)]
    assert steps[-1] == 24 and steps == sorted(steps), "a resumed run continues its step counter"



def _seeds_and_pngs(folder) -> dict[int, bytes]:
    rows = {}
    for shard in sorted(folder.glob("samples-*.parquet")):
        table = pq.read_table(io.BytesIO(shard.read_bytes()))
        for seed, png in zip(table.column("seed").to_pylist(), table.column("image").to_pylist()):
            assert seed not in rows, f"seed {seed} twice"
            rows[seed] = png
    return rows


@pytest.mark.slow  # CI covers it in test_a_generation_pool_grows_as_nodes_join_and_goes_on_when_one_is_lost (a node with an actor removed mid-job); run with -m slow
@pytest.mark.timeout(900)
def test_removing_a_node_that_hosts_a_sampling_actor_loses_and_duplicates_nothing(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from ncsn_ray.sample import generate
    from ncsn_ray.sample.generate import GenerateOptions
    from ncsn_ray.sample.pipeline import ActorPlan

    run = tmp_path / "run"
    make_tiny_run(run)
    settings = dict(n=16, checkpoint=str(run), shard_size=2, batch_size=2, steps_per_level=30,
                    actors=ActorPlan(num_actors=2))
    cluster = Cluster(initialize_head=True, head_node_args=_HEAD)
    try:
        workers = [cluster.add_node(num_cpus=1, object_store_memory=100_000_000) for _ in range(2)]
        ray.init(address=cluster.address)
        generate.run(GenerateOptions(out=str(tmp_path / "undisturbed"), **settings), log=lambda m: None)
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.setdefault("summary", generate.run(
            GenerateOptions(out=str(tmp_path / "node-lost"), **settings), log=lambda m: None)))
        thread.start()
        deadline = time.monotonic() + 300
        while not list((tmp_path / "node-lost").glob("samples-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.2)
        cluster.remove_node(workers[0], allow_graceful=False)  # both nodes host an actor (the head has no CPU)
        cluster.add_node(num_cpus=1, object_store_memory=100_000_000)  # the replacement an autoscaler would add
        thread.join(timeout=600)
        assert outcome.get("summary", {}).get("status") == "complete", outcome
    finally:
        ray.shutdown()
        cluster.shutdown()
    lost, reference = _seeds_and_pngs(tmp_path / "node-lost"), _seeds_and_pngs(tmp_path / "undisturbed")
    assert sorted(lost) == list(range(16)) and lost == reference


@pytest.mark.timeout(900)
def test_a_generation_pool_grows_as_nodes_join_and_goes_on_when_one_is_lost(tmp_path):
    """``--min-actors 1 --num-actors 3`` on a cluster of one 1-CPU node: two nodes join while
    the job runs (the pool grows onto them) and one of them is then removed (its actor dies,
    its shard in flight is retried, the pool goes on smaller). Every seed exactly once, each
    sample's bytes those of an undisturbed run on a fixed pool of one actor."""
    import ray
    from ray.cluster_utils import Cluster

    from ncsn_ray.sample import generate
    from ncsn_ray.sample.generate import GenerateOptions
    from ncsn_ray.sample.pipeline import ActorPlan

    run = tmp_path / "run"
    make_tiny_run(run)
    # 150 steps per level: shards slow enough (about 3 s each here) that the pool has time to
    # grow onto the joining nodes before the job ends, on a fast machine too (at 60 steps a
    # 17 s job once ended on its first actor).
    settings = dict(n=24, checkpoint=str(run), shard_size=2, batch_size=2, steps_per_level=150)
    node = {"num_cpus": 1, "object_store_memory": 100_000_000}
    cluster = Cluster(initialize_head=True, head_node_args=_HEAD)
    try:
        cluster.add_node(**node)
        ray.init(address=cluster.address)
        generate.run(GenerateOptions(out=str(tmp_path / "undisturbed"), actors=ActorPlan(num_actors=1), **settings),
                     log=lambda m: None)
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.setdefault("summary", generate.run(
            GenerateOptions(out=str(tmp_path / "churn"), actors=ActorPlan(min_actors=1, max_actors=3), **settings),
            log=lambda m: None)))
        thread.start()

        def shards() -> int:
            return len(list((tmp_path / "churn").glob("samples-*.parquet")))

        deadline = time.monotonic() + 300
        while shards() < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        joined = [cluster.add_node(**node) for _ in range(2)]
        while shards() < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        cluster.remove_node(joined[0], allow_graceful=False)
        thread.join(timeout=600)
        summary = outcome.get("summary", {})
        assert summary.get("status") == "complete", outcome
    finally:
        ray.shutdown()
        cluster.shutdown()
    churned, reference = _seeds_and_pngs(tmp_path / "churn"), _seeds_and_pngs(tmp_path / "undisturbed")
    assert sorted(churned) == list(range(24)) and churned == reference
    assert summary["actors_used"] >= 2, f"the pool never grew onto the joining nodes: {summary}"
