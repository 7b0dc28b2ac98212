"""The whole pipeline, end to end, as a user runs it on a cluster.

A real S3 API on loopback (moto) and a local Ray cluster (``ray start --head`` on 127.0.0.1
with token authentication); every step goes through ``ray job submit``: prepare digits into
the bucket, train a few steps, generate a few dozen samples, evaluate (with an Inception
weights file made in the test: the real weights cannot be downloaded
here, so the scores only prove the plumbing). Then an independent client (boto3 plus
pyarrow reading the objects' bytes, not the project's storage module) checks every
artefact in the bucket, and an unauthenticated request to the job API is refused.
Inpainting (the same sampling job with ``--mode inpaint``) is tested through the job's
command line and its actor pool in test_generate.py; it is left out here to keep CI short.

Credentials reach the cluster the way they reach a real node: in the environment of
``ray start``. The endpoint (not a secret) goes in the job's runtime env.
"""

from __future__ import annotations

import io
import json
import math

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import FAKE_AWS_ENV
from support.ray_head import local_ray_head
from support.ray_jobs import job_output, job_succeeded, submit_job, unauthenticated_status
from support.s3 import read_objects
from support.train_helpers import REPO, write_tiny_config

pytestmark = [pytest.mark.ray]

N_SAMPLES = 24


def _parquet_rows(objects: dict[str, bytes]) -> list[dict]:
    rows = []
    for key in sorted(objects):
        if key.endswith(".parquet"):
            rows += pq.read_table(io.BytesIO(objects[key])).to_pylist()
    return rows


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.mark.timeout(1500)
def test_prepare_train_generate_evaluate_through_ray_job_submit(s3_bucket, tmp_path, inception_weights_file):
    bucket, endpoint = s3_bucket
    root = f"s3://{bucket}"
    config = write_tiny_config(tmp_path)
    job_env = {"AWS_ENDPOINT_URL": endpoint}
    steps = [
        ["python", "jobs/prepare_data.py", "--dataset", "digits", "--out", f"{root}/data/digits", "--shard-size", "600"],
        ["python", "jobs/train.py", "--config", str(config), "--data", f"{root}/data/digits",
         "--storage", f"{root}/runs", "--name", "e2e", "--steps", "4", "--checkpoint-every", "2"],
        ["python", "jobs/generate.py", "--checkpoint", f"{root}/runs/e2e", "--n", str(N_SAMPLES),
         "--out", f"{root}/samples/e2e", "--shard-size", "10", "--num-actors", "1"],
        ["python", "jobs/evaluate.py", "--samples", f"{root}/samples/e2e", "--reference", f"{root}/data/digits",
         "--metrics", "fid,isc,kid", "--inception-weights", str(inception_weights_file),
         "--reference-limit", "48"],
    ]
    with local_ray_head(num_cpus=2, object_store_memory=200_000_000, tmp_path=tmp_path, env=dict(FAKE_AWS_ENV)) as head:
        assert unauthenticated_status(head) in (401, 403)
        for argv in steps:
            result = submit_job(head, argv, working_dir=str(REPO), env=job_env, timeout=480)
            output = job_output(result)
            assert job_succeeded(result), f"{' '.join(argv[:2])} failed:\n{output[-4000:]}"
            assert FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"] not in output
            if argv[1] != "jobs/prepare_data.py":  # the Ray jobs ran on this cluster, not an embedded one
                assert "[ray] attached to the cluster" in output and "started a local Ray instance" not in output

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    data = read_objects(client, bucket, "data/digits/")
    manifest = json.loads(data["data/digits/_manifest.json"])
    assert (manifest["num_rows"], manifest["height"], manifest["width"], manifest["channels"]) == (1797, 8, 8, 1)
    assert {f"data/digits/{s['path']}" for s in manifest["shards"]} <= set(data)
    rows = _parquet_rows(data)
    assert sorted(r["id"] for r in rows) == list(range(1797))
    assert _png(rows[0]["image"]).shape == (8, 8)

    runs = read_objects(client, bucket, "runs/e2e/")
    assert {"runs/e2e/checkpoint_00000002/checkpoint.pt", "runs/e2e/checkpoint_00000004/checkpoint.pt"} <= set(runs)
    import torch

    payload = torch.load(io.BytesIO(runs["runs/e2e/checkpoint_00000004/checkpoint.pt"]), weights_only=True)
    assert payload["step"] == 4 and payload["config"]["model"]["ngf"] == 4
    assert "runs/e2e/metrics.jsonl" in runs and "runs/e2e/loss.png" in runs
    assert any(k.startswith("runs/e2e/samples/") for k in runs)
    for blob in runs.values():
        assert FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"].encode() not in blob

    samples = read_objects(client, bucket, "samples/e2e/")
    sample_manifest = json.loads(samples["samples/e2e/_manifest.json"])
    sample_rows = _parquet_rows(samples)
    seeds = [r["seed"] for r in sample_rows]
    assert len(seeds) == N_SAMPLES and sorted(seeds) == list(range(N_SAMPLES))
    assert all(_png(r["image"]).shape == (8, 8) for r in sample_rows)
    assert sample_manifest["count"] == N_SAMPLES and sum(s["num_rows"] for s in sample_manifest["shards"]) == N_SAMPLES
    assert "samples/e2e/_grid.png" in samples

    scores = json.loads(samples["samples/e2e/_scores.json"])
    assert (scores["num_samples"], scores["num_reference"]) == (N_SAMPLES, 48)
    for metric in ("frechet_inception_distance", "inception_score_mean", "kernel_inception_distance_mean"):
        value = scores["metrics"].get(metric)
        assert value is not None and math.isfinite(value), f"{metric}: {value!r} in {scores['metrics']}"
    assert scores["metrics"]["frechet_inception_distance"] > 0
