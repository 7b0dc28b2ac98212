"""Storage faults, injected on real components: the jobs' command lines against a real S3 API
on loopback (moto) with credentials removed, an endpoint nobody listens on, a bucket that
does not exist; two writers racing for one output; manifests that point outside their
folder; a local write that fails half-way. Each must end in one clear line naming the URI
and the cause, exit code 2, nothing published, and never a traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ncsn_ray.data.format import DatasetError, read_manifest
from ncsn_ray.sample.sample_set import SampleSetError, read_sample_manifest
from ncsn_ray.io.storage import Storage, describe_storage_error
from support.data import digits_uint8, write_dataset, write_sample_set

REPO = Path(__file__).resolve().parents[1]
NO_CREDENTIALS = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                  "AWS_EC2_METADATA_DISABLED": "true"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job(name: str, *args: str, env: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in drop and k != "RAY_ADDRESS"}
    full.update(env or {})
    return subprocess.run([sys.executable, str(REPO / "jobs" / f"{name}.py"), *args], capture_output=True, text=True,
                          env=full, timeout=240, cwd=REPO)


def assert_clean_failure(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "[ray] started" not in result.stdout, result.stderr
    for word in words:
        assert word in result.stderr, f"{word!r} not in: {result.stderr}"
    assert "testing-secret" not in result.stdout + result.stderr


@pytest.mark.timeout(400)
def test_no_credentials_is_a_clear_error_for_every_job(s3_bucket, tmp_path):
    bucket, endpoint = s3_bucket
    drop = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    env = {**NO_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    uri = f"s3://{bucket}/data"
    results = {
        "prepare_data": job("prepare_data", "--dataset", "digits", "--out", uri, env=env, drop=drop),
        "train": job("train", "--storage", f"s3://{bucket}/runs", "--steps", "2", env=env, drop=drop),
        "generate": job("generate", "--checkpoint", f"s3://{bucket}/runs/x", "--n", "4", env=env, drop=drop),
        "evaluate": job("evaluate", "--samples", f"s3://{bucket}/samples", "--metrics", "digits", env=env, drop=drop),
    }
    for name, result in results.items():
        assert_clean_failure(result, "no credentials", f"s3://{bucket}/")


@pytest.mark.timeout(300)
def test_unreachable_endpoint_and_missing_bucket_are_clear_errors(s3_server, tmp_path):
    down = job("prepare_data", "--dataset", "digits", "--out", "s3://some-bucket/data",
               "--s3-endpoint", f"http://127.0.0.1:{closed_port()}", env=s3_server["env"])
    assert_clean_failure(down, "s3://some-bucket/data", "cannot reach the storage endpoint")
    missing = job("train", "--storage", "s3://no-such-bucket/runs", "--steps", "2", env=s3_server["env"])
    assert_clean_failure(missing, "s3://no-such-bucket/runs", "the bucket does not exist")


def test_access_denied_and_refused_credentials_are_named():
    from botocore.exceptions import ClientError

    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject")
    refused = ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "nope"}}, "GetObject")
    assert describe_storage_error(denied).startswith("access denied")
    assert describe_storage_error(refused).startswith("the credentials were refused")


@pytest.mark.timeout(300)
def test_two_generation_jobs_with_different_settings_into_one_output(tmp_path):
    """Two `jobs/generate.py` processes start at once into the same --out with different
    settings: one runs, the other is refused before writing anything."""
    from support.data import make_tiny_run

    run = tmp_path / "run"
    make_tiny_run(run)
    out = tmp_path / "samples"
    common = ["--checkpoint", str(run), "--n", "4", "--out", str(out), "--batch-size", "2", "--num-actors", "1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    procs = [subprocess.Popen([sys.executable, str(REPO / "jobs" / "generate.py"), *common, "--steps-per-level", t],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
             for t in ("1", "2")]
    outcomes = [(p.wait(timeout=280), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2], outcomes
    loser = next(err for code, err in outcomes if code == 2)
    assert "holds a different job" in loser and "steps_per_level" in loser and "Traceback" not in loser
    manifest = read_sample_manifest(Storage.from_uri(str(out)))
    winner = 1 + [code for code, _ in outcomes].index(0)
    assert manifest["count"] == 4 and manifest["sampler"]["steps_per_level"] == winner
    assert sorted(p.name for p in out.glob("samples-*.parquet")) == [s["path"] for s in manifest["shards"]]


def test_manifests_may_not_point_outside_their_folder(tmp_path):
    data = Storage.from_uri(str(tmp_path / "data"))
    write_dataset(data, digits_uint8(4), shard_size=2)
    manifest = data.read_json("_manifest.json")
    for evil in ("../elsewhere/shard.parquet", "/etc/passwd", "sub/../../x.parquet", "s3://other/x.parquet"):
        manifest["shards"][0]["path"] = evil
        data.write_json("_manifest.json", manifest)
        with pytest.raises(DatasetError, match="outside the folder"):
            read_manifest(data)
    samples = Storage.from_uri(str(tmp_path / "samples"))
    write_sample_set(samples, digits_uint8(4), shard_size=2)
    sample_manifest = samples.read_json("_manifest.json")
    sample_manifest["shards"][1]["path"] = "../../secret.parquet"
    samples.write_json("_manifest.json", sample_manifest)
    with pytest.raises(SampleSetError, match="outside the folder"):
        read_sample_manifest(samples)
