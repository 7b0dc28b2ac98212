"""Training on real multi-node and submitted Ray clusters.

* Two simulated nodes (``ray.cluster_utils.Cluster``), two DDP workers spread one per node:
  every rank ends each checkpoint with identical weights and the loss goes down.
* ``ray start --head`` on 127.0.0.1 with token authentication, then
  ``ray job submit --working-dir . -- python jobs/train.py ...``: the job finishes and its
  checkpoint is in storage.
"""

from __future__ import annotations

import json

import pytest

from ncsn_core import load_checkpoint
from ncsn_ray.testing import faults
from support.jobs import load_job
from support.ray_head import local_ray_head
from support.ray_jobs import job_output, job_succeeded, submit_job
from support.train_helpers import REPO, metrics, write_tiny_config

pytestmark = [pytest.mark.ray]




@pytest.mark.timeout(600)
def test_ddp_on_two_nodes_keeps_ranks_identical_and_lowers_the_loss(digits_local, tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    train_main = load_job("train").main
    monkeypatch.setenv(faults.ENV, "train.rank_digests")

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100_000_000})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=100_000_000)
        cluster.add_node(num_cpus=1, object_store_memory=100_000_000)
        ray.init(address=cluster.address)
        config = write_tiny_config(tmp_path, training={"lr": 5e-3, "log_every": 4, "batch_size": 64})
        storage = tmp_path / "runs"
        code = train_main(["--config", str(config), "--data", str(digits_local), "--storage", str(storage),
                           "--num-workers", "2", "--placement-strategy", "SPREAD", "--cpus-per-worker", "1",
                           "--steps", "40", "--checkpoint-every", "20", "--max-failures", "0", "--no-preview"])
        assert code == 0
    finally:
        ray.shutdown()
        cluster.shutdown()
    run = storage / "tiny"
    for step in (20, 40):
        records = [json.loads((run / "rank_digests" / f"step_{step:08d}_rank_{r}.json").read_text()) for r in (0, 1)]
        assert records[0]["digest"] == records[1]["digest"], f"ranks' weights disagree at step {step}"
        assert records[0]["ema_digest"] == records[1]["ema_digest"], f"ranks' EMA weights disagree at step {step}"
        assert records[0]["node"] != records[1]["node"], "the two workers ran on the same node"
    logged = metrics(run)
    assert [m["step"] for m in logged] == sorted({m["step"] for m in logged}) and logged[-1]["step"] == 40
    losses = [m["loss"] for m in logged]
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, f"loss did not go down: {losses}"
    assert load_checkpoint(run / "checkpoint_00000040" / "checkpoint.pt").step == 40


@pytest.mark.slow  # CI covers this path in tests/test_pipeline_e2e.py; run with -m slow
@pytest.mark.timeout(600)
def test_ray_job_submit_with_token_auth_trains_and_checkpoints(digits_local, tmp_path):
    config = write_tiny_config(tmp_path)
    storage = tmp_path / "runs"
    with local_ray_head(num_cpus=2, object_store_memory=200_000_000, tmp_path=tmp_path) as head:
        result = submit_job(
            head,
            ["python", "jobs/train.py", "--config", str(config), "--data", str(digits_local),
             "--storage", str(storage), "--name", "submitted", "--steps", "4", "--checkpoint-every", "2"],
            working_dir=str(REPO),
            timeout=480,
        )
    output = job_output(result)
    assert job_succeeded(result), output[-3000:]
    assert "attached to the cluster" in output
    ckpt = load_checkpoint(storage / "submitted" / "checkpoint_00000004" / "checkpoint.pt")
    assert ckpt.step == 4 and ckpt.config.model.ngf == 4
    assert (storage / "submitted" / "samples" / "step_00000004.png").exists()

