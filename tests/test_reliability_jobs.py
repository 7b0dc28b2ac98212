"""The object store goes away in the middle of a job (a real S3 API on loopback, stopped and
started again on the same port; its contents survive, as a real store's would).

Every job run through its command line ends the same way: exit code 1, "re-run the same
command to resume", no traceback, nothing published; re-running completes it. Generation's
re-run gives bytes identical to a run the outage never touched; training's resumes from
the last complete checkpoint with its step counter; dataset preparation keeps the shards
already written; evaluation keeps the cached reference features.
"""

from __future__ import annotations

import threading
import time
import uuid

import boto3
import pytest

from ncsn_core import load_checkpoint
from ncsn_ray.sample import generate
from ncsn_ray.train.checkpoints import list_checkpoints
from ncsn_ray.errors import EXIT_FAILED
from ncsn_ray.sample.generate import GenerateOptions
from ncsn_ray.data.format import read_manifest
from ncsn_ray.sample.pipeline import ActorPlan
from ncsn_ray.sample.sample_set import read_sample_manifest
from ncsn_ray.io.storage import Storage
from ncsn_ray.testing.stores import RestartableS3
from support.data import digits_uint8, make_tiny_run, write_dataset, write_sample_set
from support.jobs import load_job
from support.s3 import list_keys, read_objects
from support.train_helpers import write_tiny_config

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def store(s3_server):  # s3_server: its fixture sets the fake credentials in the environment
    s3 = RestartableS3()
    s3.start()
    yield s3
    s3.stop()


def wait_for(predicate, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition never held")
        time.sleep(0.2)


def _client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def keys(endpoint: str, bucket: str, prefix: str) -> set[str]:
    return {key[len(prefix):] for key in list_keys(_client(endpoint), bucket, prefix)}


def objects(endpoint: str, bucket: str, prefix: str) -> dict[str, bytes]:
    """The objects under ``prefix`` (keys relative to it) and their bytes."""
    return {key[len(prefix):]: data for key, data in read_objects(_client(endpoint), bucket, prefix).items()}


def run_in_thread(body):
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = body()
        except BaseException as err:  # noqa: BLE001 - reported to the test
            outcome["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def _assert_failed_part_way(outcome: dict, capfd) -> None:
    """The job's command line returned 1 and said that re-running resumes, with no traceback."""
    err = capfd.readouterr().err
    assert outcome.get("value") == EXIT_FAILED, (outcome, err)
    assert "re-run the same command to resume" in err and "Traceback" not in err, err


@pytest.mark.timeout(600)
def test_generation_survives_the_store_going_away(ray_local, store, tmp_path, capfd):
    bucket = f"outage-{uuid.uuid4().hex[:8]}"
    _client(store.endpoint).create_bucket(Bucket=bucket)
    run = tmp_path / "run"
    make_tiny_run(run)
    settings = dict(n=10, checkpoint=str(run), shard_size=2, batch_size=2, steps_per_level=40,
                    actors=ActorPlan(num_actors=1), endpoint_url=store.endpoint)
    generate.run(GenerateOptions(out=f"s3://{bucket}/undisturbed", **settings), log=lambda m: None)

    cli = ["--checkpoint", str(run), "--n", "10", "--shard-size", "2", "--batch-size", "2", "--steps-per-level", "40",
           "--num-actors", "1", "--s3-endpoint", store.endpoint, "--out", f"s3://{bucket}/outage"]
    thread, outcome = run_in_thread(lambda: load_job("generate").main(cli))
    wait_for(lambda: any(k.endswith(".parquet") for k in keys(store.endpoint, bucket, "outage/")))
    store.stop()
    thread.join(timeout=400)
    store.start()
    _assert_failed_part_way(outcome, capfd)
    partial = objects(store.endpoint, bucket, "outage/")
    assert "_manifest.json" not in partial and any(k.endswith(".parquet") for k in partial)

    summary = generate.run(GenerateOptions(out=f"s3://{bucket}/outage", **settings), log=lambda m: None)
    assert summary["status"] == "complete" and summary["computed"] < 10
    after, reference = objects(store.endpoint, bucket, "outage/"), objects(store.endpoint, bucket, "undisturbed/")
    shards = sorted(k for k in reference if k.endswith(".parquet"))
    assert sorted(k for k in after if k.endswith(".parquet")) == shards
    assert all(after[k] == reference[k] for k in shards), "bytes differ from the undisturbed run"
    assert read_sample_manifest(Storage.from_uri(f"s3://{bucket}/outage", endpoint_url=store.endpoint))["count"] == 10


@pytest.mark.timeout(600)
def test_training_resumes_from_the_last_complete_checkpoint_after_the_store_went_away(
        ray_local, store, digits_local, tmp_path):
    bucket = f"outage-{uuid.uuid4().hex[:8]}"
    _client(store.endpoint).create_bucket(Bucket=bucket)
    config = write_tiny_config(tmp_path, training={"log_every": 2})
    args = ["--config", str(config), "--data", str(digits_local), "--storage", f"s3://{bucket}/runs",
            "--s3-endpoint", store.endpoint, "--checkpoint-every", "2", "--no-preview", "--max-failures", "0",
            "--set", "training.keep_checkpoints=10"]
    train = load_job("train")
    thread, outcome = run_in_thread(lambda: train.main([*args, "--steps", "40"]))
    wait_for(lambda: "runs/tiny/checkpoint_00000004/step.txt" in keys(store.endpoint, bucket, ""))
    store.stop()
    thread.join(timeout=400)
    store.start()
    assert outcome.get("value") == EXIT_FAILED, outcome
    run = Storage.from_uri(f"s3://{bucket}/runs/tiny", endpoint_url=store.endpoint)
    last = list_checkpoints(run)[-1][0]
    assert 4 <= last < 40

    assert train.main([*args, "--steps", str(last + 4)]) == 0
    final = load_checkpoint(run.read_bytes(f"checkpoint_{last + 4:08d}/checkpoint.pt"))
    assert final.step == last + 4 and int(final.optimizer_state["state"][0]["step"]) == last + 4


@pytest.mark.timeout(300)
def test_preparing_a_dataset_resumes_after_the_store_went_away(store, capfd):
    bucket = f"outage-{uuid.uuid4().hex[:8]}"
    _client(store.endpoint).create_bucket(Bucket=bucket)
    args = ["--dataset", "digits", "--out", f"s3://{bucket}/digits", "--shard-size", "5", "--s3-endpoint", store.endpoint]
    prepare = load_job("prepare_data")
    thread, outcome = run_in_thread(lambda: prepare.main(args))
    wait_for(lambda: "shard-00004.parquet" in keys(store.endpoint, bucket, "digits/"))
    store.stop()
    thread.join(timeout=200)
    store.start()
    _assert_failed_part_way(outcome, capfd)
    written = {k for k in keys(store.endpoint, bucket, "digits/") if k.endswith(".parquet")}
    assert "_manifest.json" not in keys(store.endpoint, bucket, "digits/") and len(written) < 360

    assert prepare.main(args) == 0
    out = capfd.readouterr().out
    assert f"{len(written)} kept)" in out, out  # the shards written before the outage are not rewritten
    manifest = read_manifest(Storage.from_uri(f"s3://{bucket}/digits", endpoint_url=store.endpoint))
    assert manifest.num_rows == 1797 and len(manifest.shards) == 360


@pytest.mark.timeout(300)
def test_evaluation_fails_part_way_and_resumes_after_the_store_went_away(store, inception_weights_file, capfd):
    bucket = f"outage-{uuid.uuid4().hex[:8]}"
    _client(store.endpoint).create_bucket(Bucket=bucket)
    reference = Storage.from_uri(f"s3://{bucket}/reference", endpoint_url=store.endpoint)
    samples = Storage.from_uri(f"s3://{bucket}/samples", endpoint_url=store.endpoint)
    write_dataset(reference, digits_uint8(48))
    write_sample_set(samples, digits_uint8(96)[48:])
    args = ["--samples", samples.uri, "--reference", reference.uri, "--metrics", "fid", "--no-ray",
            "--inception-weights", str(inception_weights_file), "--s3-endpoint", store.endpoint, "--batch-size", "8"]
    evaluate = load_job("evaluate")
    thread, outcome = run_in_thread(lambda: evaluate.main(args))
    # The reference features are cached (written beside the reference) before the samples'
    # features are computed: the store goes away between the two.
    wait_for(lambda: any("fidelity-cache" in k for k in keys(store.endpoint, bucket, "reference/")))
    store.stop()
    thread.join(timeout=200)
    store.start()
    _assert_failed_part_way(outcome, capfd)
    assert "_scores.json" not in keys(store.endpoint, bucket, "samples/")

    assert evaluate.main(args) == 0
    assert "_scores.json" in keys(store.endpoint, bucket, "samples/")


@pytest.mark.timeout(400)
def test_evaluation_on_the_actor_pool_fails_part_way_and_resumes_after_the_store_went_away(
        ray_local, store, inception_weights_file, capsys):
    """The default (actor pool) path: the store goes away once the inputs are checked and the
    work has begun, before any actor reads a shard (the driver's "features of" line)."""
    from ncsn_ray.errors import run_job
    from ncsn_ray.evaluate.job import evaluate_on_ray

    bucket = f"outage-{uuid.uuid4().hex[:8]}"
    _client(store.endpoint).create_bucket(Bucket=bucket)
    reference = Storage.from_uri(f"s3://{bucket}/reference", endpoint_url=store.endpoint)
    samples = Storage.from_uri(f"s3://{bucket}/samples", endpoint_url=store.endpoint)
    write_dataset(reference, digits_uint8(16))
    write_sample_set(samples, digits_uint8(32)[16:])

    stopped = []

    def stop_at_work(line: str) -> None:
        if "features of" in line and not stopped:
            store.stop()
            stopped.append(line)

    def evaluate(log) -> dict:
        return evaluate_on_ray(samples.uri, reference.uri, metrics="fid", inception_weights=str(inception_weights_file),
                               endpoint_url=store.endpoint, batch_size=8, num_actors=1, log=log)

    try:
        code = run_job("evaluate", lambda: evaluate(stop_at_work))
    finally:
        if stopped:
            store.start()
    assert stopped, "the store was never stopped: the driver's progress line changed"
    err = capsys.readouterr().err
    assert code == EXIT_FAILED, err
    assert "re-run the same command to resume" in err and "Traceback" not in err, err
    assert "_scores.json" not in keys(store.endpoint, bucket, "samples/")

    assert run_job("evaluate", lambda: evaluate(lambda _: None)) == 0
    assert "_scores.json" in keys(store.endpoint, bucket, "samples/")
