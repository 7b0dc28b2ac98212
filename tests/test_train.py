"""The training job on a real embedded Ray instance (one per module), real Parquet, real S3 (moto).

Runs ``jobs/train.py``'s ``main`` in-process so the module pays for one Ray start-up; the
CLI's exit codes are checked through subprocesses in the bad-input tests.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import boto3
import pytest
import torch

from ncsn_core import load_checkpoint
from ncsn_ray.train.checkpoints import list_checkpoints
from ncsn_ray.data.prepare import prepare_dataset
from ncsn_ray.io.storage import Storage
from ncsn_ray.testing import faults
from ncsn_ray.train.tracking import read_events
from support.jobs import load_job
from support.train_helpers import REPO, metrics, training_state_digests, write_tiny_config

train_main = load_job("train").main

pytestmark = [pytest.mark.ray]


@pytest.mark.slow  # CI covers S3 data and checkpoints in test_pipeline_e2e.py and S3 resumption in test_reliability_jobs.py; run with -m slow
@pytest.mark.timeout(400)
def test_prepare_on_s3_train_with_s3_checkpoints_and_resume(ray_local, s3_bucket, tmp_path, capsys):
    bucket, endpoint = s3_bucket
    data_uri, storage_uri = f"s3://{bucket}/data/digits", f"s3://{bucket}/runs"
    prepare_dataset("digits", data_uri, endpoint_url=endpoint, log=lambda *a: None)
    config = write_tiny_config(tmp_path)
    common = ["--config", str(config), "--data", data_uri, "--storage", storage_uri, "--name", "s3run",
              "--s3-endpoint", endpoint, "--max-failures", "0"]
    assert train_main(common + ["--steps", "4", "--checkpoint-every", "2"]) == 0
    run = Storage.from_uri(f"{storage_uri}/s3run", endpoint_url=endpoint)
    assert [step for step, _ in list_checkpoints(run)] == [2, 4]

    capsys.readouterr()
    assert train_main(common + ["--steps", "6", "--checkpoint-every", "2"]) == 0
    out = capsys.readouterr().out
    assert "found checkpoint at step 4" in out
    steps = [step for step, _ in list_checkpoints(run)]
    assert steps == [4, 6]  # keep_checkpoints = 2
    newest = load_checkpoint(run.read_bytes(f"{list_checkpoints(run)[-1][1]}/checkpoint.pt"))
    assert newest.step == 6
    # The optimiser was restored, not restarted: Adam has taken 6 steps in total.
    assert int(newest.optimizer_state["state"][0]["step"]) == 6
    logged = [json.loads(line)["step"] for line in run.read_bytes("metrics.jsonl").decode().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == 6
    objects = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket, Prefix="runs/s3run/samples/")
    assert any(o["Key"].endswith(".png") for o in objects.get("Contents", []))

    # Re-running with the same number of steps does nothing.
    capsys.readouterr()
    assert train_main(common + ["--steps", "6"]) == 0
    assert "nothing to do" in capsys.readouterr().out


@pytest.fixture(scope="module")
def straight_run(ray_local, digits_local, tmp_path_factory):
    """The tiny config trained 8 steps without interruption (checkpoints at 4 and 8)."""
    folder = tmp_path_factory.mktemp("straight")
    config = write_tiny_config(folder)
    storage = folder / "runs"
    assert train_main(["--config", str(config), "--data", str(digits_local), "--storage", str(storage),
                       "--steps", "8", "--checkpoint-every", "4", "--max-failures", "0", "--no-preview"]) == 0
    return storage / "tiny"


@pytest.mark.timeout(400)
def test_a_resumed_or_restarted_run_ends_bit_identical_to_an_uninterrupted_one(straight_run, digits_local, tmp_path,
                                                                                 monkeypatch):
    config = write_tiny_config(tmp_path)
    common = ["--config", str(config), "--data", str(digits_local), "--storage", str(tmp_path / "runs"),
              "--checkpoint-every", "4", "--no-preview"]
    # Interrupted at the step-4 checkpoint, then re-run to the end.
    assert train_main([*common, "--name", "resumed", "--steps", "4", "--max-failures", "0"]) == 0
    assert train_main([*common, "--name", "resumed", "--steps", "8", "--max-failures", "0"]) == 0
    # A worker killed after a random step past the first checkpoint; Ray Train replaces it and
    # it resumes from step 4 (the step is printed so that a failure can be replayed).
    kill_at = random.Random(os.environ.get("PYTEST_SEED", "29")).randint(5, 8)
    print(f"killing the worker after step {kill_at}")
    monkeypatch.setenv(faults.ENV, f"train.kill_worker_at_step={kill_at}")
    assert train_main([*common, "--name", "killed", "--steps", "8", "--max-failures", "2"]) == 0
    killed = tmp_path / "runs" / "killed"
    assert (killed / ".injected-failure-done").exists(), "the failure was not injected"
    assert [m["step"] for m in metrics(killed)] == [1, 2, 3, 4, 5, 6, 7, 8]

    expected = training_state_digests(straight_run / "checkpoint_00000008" / "checkpoint.pt")
    for name in ("resumed", "killed"):
        got = training_state_digests(tmp_path / "runs" / name / "checkpoint_00000008" / "checkpoint.pt")
        assert got == expected, f"{name}: weights, EMA or Adam state differ from the uninterrupted run"
    final = load_checkpoint(killed / "checkpoint_00000008" / "checkpoint.pt")
    assert final.step == 8 and int(final.optimizer_state["state"][0]["step"]) == 8

    # TensorBoard shows every step once (each attempt's event file purges what an earlier
    # attempt logged past its checkpoint), with the uninterrupted run's curves.
    straight_curves = read_events(Storage.from_uri(str(straight_run / "tensorboard")))
    learned = [t for t in straight_curves if t == "loss" or t.startswith("loss_per_sigma/")]
    assert sorted(straight_curves["loss"]) == list(range(1, 9)) and len(learned) == 1 + 3
    assert list(straight_curves["learning_rate"].values()) == [pytest.approx(1e-3)] * 8
    for name in ("resumed", "killed"):
        folder = tmp_path / "runs" / name / "tensorboard"
        assert len(list(folder.glob("events.out.tfevents*"))) >= 2, name
        curves = read_events(Storage.from_uri(str(folder)))
        for tag in learned:
            assert curves[tag] == straight_curves[tag], (name, tag)


@pytest.mark.slow  # CI covers a changed worker count in test_elastic.py (2, 3, then 2 workers end as a fixed run); run with -m slow
@pytest.mark.timeout(400)
def test_resuming_with_two_workers_trains_on_the_same_global_batches(straight_run, digits_local, tmp_path, monkeypatch):
    config = write_tiny_config(tmp_path)
    common = ["--config", str(config), "--data", str(digits_local), "--storage", str(tmp_path / "runs"),
              "--checkpoint-every", "4", "--no-preview", "--max-failures", "0"]
    assert train_main([*common, "--steps", "4"]) == 0
    monkeypatch.setenv(faults.ENV, "train.rank_digests")
    assert train_main([*common, "--steps", "8", "--num-workers", "2"]) == 0
    run = tmp_path / "runs" / "tiny"
    ranks = [json.loads((run / "rank_digests" / f"step_00000008_rank_{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"] and ranks[0]["ema_digest"] == ranks[1]["ema_digest"]

    straight = load_checkpoint(straight_run / "checkpoint_00000008" / "checkpoint.pt")
    elastic = load_checkpoint(run / "checkpoint_00000008" / "checkpoint.pt")
    # Two workers sum the same gradients in another order: equal to float tolerance. Adam
    # divides by sqrt(v), so per-weight differences of a few 1e-7 relative become ~1e-6.
    for name, tensor in straight.model_state.items():
        difference = (elastic.model_state[name] - tensor).abs().max().item()
        assert difference < 1e-5, f"{name} differs by {difference:.2e} from the one-worker run"
    # ... a tolerance far below how much steps 5 to 8 moved the weights.
    at_4 = load_checkpoint(run / "checkpoint_00000004" / "checkpoint.pt")
    assert max((straight.model_state[n] - t).abs().max().item() for n, t in at_4.model_state.items()) > 1e-3


@pytest.mark.timeout(400)
def test_two_workers_accumulating_micro_batches_train_as_one_worker_on_the_whole_batch(straight_run, digits_local,
                                                                                       tmp_path):
    config = write_tiny_config(tmp_path)
    common = ["--config", str(config), "--data", str(digits_local), "--storage", str(tmp_path / "runs"),
              "--checkpoint-every", "4", "--no-preview", "--max-failures", "0", "--tracking", "none"]
    # Global batch 32 over 2 workers, 8 at a time: each worker accumulates 2 micro-batches.
    assert train_main([*common, "--steps", "8", "--num-workers", "2", "--batch-per-worker", "8"]) == 0
    straight = load_checkpoint(straight_run / "checkpoint_00000008" / "checkpoint.pt")
    accumulated = load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint_00000008" / "checkpoint.pt")
    for name, tensor in straight.model_state.items():
        difference = (accumulated.model_state[name] - tensor).abs().max().item()
        assert difference < 1e-5, f"{name} differs by {difference:.2e} from one worker on the whole batch"

    # Shares and parts that do not divide: 32 over 3 workers is 10, 11, 11, each accumulated in
    # parts of at most 5 (4+3+3, 4+4+3, ...), each part's loss weighted by its size: the same step.
    uneven = [*common[:5], str(tmp_path / "uneven"), *common[6:], "--cpus-per-worker", "0.5"]
    assert train_main([*uneven, "--steps", "8", "--num-workers", "3", "--batch-per-worker", "5"]) == 0
    shared = load_checkpoint(tmp_path / "uneven" / "tiny" / "checkpoint_00000008" / "checkpoint.pt")
    for name, tensor in straight.model_state.items():
        difference = (shared.model_state[name] - tensor).abs().max().item()
        assert difference < 1e-5, f"{name} differs by {difference:.2e} with uneven shares and parts"
    # What cannot be shared is refused before anything starts.
    assert train_main([*uneven, "--steps", "8", "--num-workers", "33"]) == 2  # 33 workers, 32 examples


@pytest.mark.timeout(400)
def test_a_bf16_run_trains_and_its_checkpoints_hold_float32_weights(ray_local, digits_local, tmp_path, capsys):
    config = write_tiny_config(tmp_path, training={"precision": "bf16"})
    assert train_main(["--config", str(config), "--data", str(digits_local), "--storage", str(tmp_path / "runs"),
                       "--steps", "4", "--checkpoint-every", "4", "--no-preview", "--max-failures", "0"]) == 0
    assert ", bf16, data" in capsys.readouterr().out
    saved = load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint_00000004" / "checkpoint.pt")
    assert saved.config.training.precision == "bf16"
    floats = [t for t in (*saved.model_state.values(), *saved.ema_state.values()) if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 for t in floats)
    moments = [t for s in saved.optimizer_state["state"].values() for k, t in s.items() if k != "step"]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    assert all(m["loss"] == m["loss"] for m in metrics(tmp_path / "runs" / "tiny") if "loss" in m)


@pytest.mark.timeout(400)
def test_mlflow_tracking_keeps_one_run_across_resumption_and_restarts(ray_local, digits_local, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    tracking_uri = f"file:{tmp_path / 'mlruns'}"
    config = write_tiny_config(tmp_path)
    common = ["--config", str(config), "--data", str(digits_local), "--storage", str(tmp_path / "runs"),
              "--checkpoint-every", "2", "--max-failures", "0", "--tracking", "tensorboard,mlflow"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert train_main([*common, "--steps", "4"]) == 2  # no server named: refused before any work
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@127.0.0.1:9/")
    assert train_main([*common, "--steps", "4"]) == 2  # a password in the URI is refused

    # MLflow's file store stands in for a tracking server (a real MLflow backend, read back
    # through MLflow's own client); it is opt-in since MLflow 3.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ncsn-test")
    assert train_main([*common, "--steps", "4"]) == 0
    # Resumed from step 4, and the worker killed after step 5: Ray Train restarts it from the
    # step-4 checkpoint, and the new rank 0 continues the same MLflow run.
    monkeypatch.setenv(faults.ENV, "train.kill_worker_at_step=5")
    assert train_main([*common, "--steps", "6", "--max-failures", "1"]) == 0
    assert (tmp_path / "runs" / "tiny" / ".injected-failure-done").exists(), "the failure was not injected"
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("ncsn-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "the resumed run must continue the same MLflow run"
    run = runs[0]
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.data.params["training.batch_size"] == "32" and run.data.params["model.kind"] == "ncsn"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == [1, 2, 3, 4, 5, 6]  # log_every 1, each step once
    logged = {m["step"]: m["loss"] for m in metrics(tmp_path / "runs" / "tiny") if "loss" in m}
    assert all(abs(m.value - logged[m.step]) < 1e-5 for m in losses), "MLflow and metrics.jsonl disagree"
    assert {m.key for m in client.get_metric_history(run.info.run_id, "images_per_s")} == {"images_per_s"}
    assert any(k.startswith("loss_per_sigma/L00_sigma") for k in run.data.metrics)
    images = [f.path for f in client.list_artifacts(run.info.run_id, "images")]
    assert sum(p.endswith(".png") and "samples+step+" in p for p in images) == 3  # checkpoints 2, 4, 6
    assert "secret" not in (tmp_path / "runs" / "tiny" / "mlflow.json").read_text()
    events = read_events(Storage.from_uri(str(tmp_path / "runs" / "tiny" / "tensorboard")))
    assert sorted(events["loss"]) == [1, 2, 3, 4, 5, 6]  # both trackers at once


@pytest.mark.timeout(500)
def test_quality_is_scored_during_training_and_generate_picks_the_best_checkpoint(ray_local, digits_local, tmp_path,
                                                                                  capsys):
    from ncsn_ray.train.evaluation import read_best, read_evaluations

    config = write_tiny_config(tmp_path)
    common = ["--config", str(config), "--data", str(digits_local), "--storage", str(tmp_path / "runs"),
              "--max-failures", "0", "--no-preview"]
    with pytest.raises(SystemExit) as usage:  # off is --no-eval; 0 is a mistake
        train_main([*common, "--eval-every", "0"])
    assert usage.value.code == 2 and "--eval-every must be at least 1" in capsys.readouterr().err
    assert train_main([*common, "--steps", "8", "--checkpoint-every", "2", "--eval-every", "1", "--eval-n", "16"]) == 0
    out = capsys.readouterr().out
    run = Storage.from_uri(str(tmp_path / "runs" / "tiny"))
    evaluations = read_evaluations(run)
    assert [e["step"] for e in evaluations] == [2, 4, 6, 8]
    assert all(e["metric"] == "digits_fd" and e["n"] == 16 and e["score"] > 0 for e in evaluations)
    assert "quality at step 8: digits_fd" in out
    logged = [m for m in metrics(tmp_path / "runs" / "tiny") if "eval" in m]
    assert sorted(m["step"] for m in logged) == [2, 4, 6, 8]
    assert {m["step"]: m["eval"]["score"] for m in logged} == {e["step"]: e["score"] for e in evaluations}
    events = read_events(run.child("tensorboard"))
    assert sorted(events["eval/digits_fd"]) == [2, 4, 6, 8]

    best = read_best(run)
    expected = min(evaluations, key=lambda e: e["score"])
    assert (best["step"], best["score"]) == (expected["step"], expected["score"])
    kept = load_checkpoint(run.read_bytes("best/checkpoint.pt"))
    assert kept.step == expected["step"], "best/ holds the checkpoint of the best score, whatever was rotated out"

    generate_main = load_job("generate").main
    samples = tmp_path / "samples"
    assert generate_main(["--checkpoint", str(run.uri), "--pick", "best", "--n", "4", "--out", str(samples)]) == 0
    manifest = json.loads((samples / "_manifest.json").read_text())
    assert manifest["picked"] == {"by": "digits_fd", "score": expected["score"], "step": expected["step"]}
    assert manifest["checkpoint"]["step"] == expected["step"] and manifest["checkpoint"]["uri"].endswith("best/checkpoint.pt")
    empty = tmp_path / "runs-plain"
    assert train_main(["--config", str(config), "--data", str(digits_local), "--storage", str(empty), "--steps", "2",
                       "--checkpoint-every", "2", "--no-preview", "--no-eval", "--tracking", "none"]) == 0
    assert generate_main(["--checkpoint", str(empty / "tiny"), "--pick", "best", "--n", "4"]) == 2


@pytest.mark.timeout(500)
def test_evaluations_lost_with_a_failed_worker_are_made_again_and_end_as_in_an_uninterrupted_run(
        ray_local, digits_local, tmp_path, monkeypatch, capsys):
    from ncsn_ray.train.evaluation import read_best, read_evaluations

    config = write_tiny_config(tmp_path)
    common = ["--config", str(config), "--data", str(digits_local), "--storage", str(tmp_path / "runs"),
              "--steps", "8", "--checkpoint-every", "2", "--eval-every", "1", "--eval-n", "16", "--no-preview",
              "--tracking", "none"]
    assert train_main([*common, "--name", "straight", "--max-failures", "0"]) == 0
    # Killed after step 5: the evaluator dies with the worker, with the evaluations of the
    # step-2 and step-4 checkpoints still queued (its start alone outlasts steps 1-5).
    monkeypatch.setenv(faults.ENV, "train.kill_worker_at_step=5")
    capsys.readouterr()
    assert train_main([*common, "--name", "killed", "--max-failures", "1"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "runs" / "killed" / ".injected-failure-done").exists(), "the failure was not injected"
    assert "evaluating again the checkpoints of step(s)" in out, out[-3000:]

    def scores(name: str) -> dict[int, float]:
        return {e["step"]: e["score"] for e in read_evaluations(Storage.from_uri(str(tmp_path / "runs" / name)))}

    expected = scores("straight")
    assert sorted(expected) == [2, 4, 6, 8]
    assert scores("killed") == expected, "every due checkpoint is scored, with the uninterrupted run's scores"
    logged = [m for m in metrics(tmp_path / "runs" / "killed") if "eval" in m]
    assert sorted(m["step"] for m in logged) == [2, 4, 6, 8], "metrics.jsonl holds each evaluation once"
    assert {m["step"]: m["eval"]["score"] for m in logged} == expected
    straight_best = read_best(Storage.from_uri(str(tmp_path / "runs" / "straight")))
    killed_best = read_best(Storage.from_uri(str(tmp_path / "runs" / "killed")))
    assert (killed_best["step"], killed_best["score"]) == (straight_best["step"], straight_best["score"])
    assert training_state_digests(tmp_path / "runs" / "killed" / "best" / "checkpoint.pt") == \
        training_state_digests(tmp_path / "runs" / "straight" / "best" / "checkpoint.pt")


@pytest.mark.timeout(600)
def test_fid_during_training_scores_each_checkpoint_against_the_training_data(ray_local, tmp_path,
                                                                              inception_weights_file):
    """--eval-metric fid: torch-fidelity's Inception (random weights here: the real ones cannot be
    downloaded) on each checkpoint's samples against the run's own training data."""
    import math

    from ncsn_ray.train.evaluation import read_best, read_evaluations
    from support.data import digits_uint8, write_dataset

    data = tmp_path / "data"
    write_dataset(Storage.from_uri(str(data)), digits_uint8(40), shard_size=20)  # a small reference: CPU Inception
    config = write_tiny_config(tmp_path)
    common = ["--config", str(config), "--data", str(data), "--storage", str(tmp_path / "runs"), "--steps", "4",
              "--checkpoint-every", "2", "--eval-every", "1", "--eval-n", "16", "--eval-metric", "fid",
              "--no-preview", "--tracking", "none", "--max-failures", "0"]
    assert train_main([*common, "--name", "missing", "--inception-weights", str(tmp_path / "none.pth")]) == 2
    assert not (tmp_path / "runs" / "missing").exists(), "a refused run leaves no run folder"
    assert train_main([*common, "--inception-weights", str(inception_weights_file)]) == 0
    run = Storage.from_uri(str(tmp_path / "runs" / "tiny"))
    evaluations = read_evaluations(run)
    assert [e["step"] for e in evaluations] == [2, 4]
    assert all(e["metric"] == "fid@16" and e["n"] == 16 and math.isfinite(e["score"]) and e["score"] > 0
               for e in evaluations), evaluations
    best = read_best(run)
    assert best["score"] == min(e["score"] for e in evaluations)
    logged = [m for m in metrics(tmp_path / "runs" / "tiny") if "eval" in m]
    assert {m["step"]: m["eval"]["score"] for m in logged} == {e["step"]: e["score"] for e in evaluations}


@pytest.mark.timeout(400)
def test_a_non_finite_loss_stops_training_at_once_naming_step_and_level(ray_local, digits_local, tmp_path, capfd):
    config = write_tiny_config(tmp_path, training={"lr": 1.0e12, "log_every": 1})
    storage = tmp_path / "runs"
    # The default --max-failures (3) is in force: a non-finite loss must not be retried.
    code = train_main(["--config", str(config), "--data", str(digits_local), "--storage", str(storage),
                       "--steps", "40", "--checkpoint-every", "20", "--no-preview"])
    out, err = capfd.readouterr()
    assert code == 1
    assert "non-finite loss at step" in err and "noise level" in err and "Traceback" not in out + err
    assert (out + err).count("[train] first step: 1 of 40") == 1, "the run was retried"
    assert list_checkpoints(Storage.from_uri(str(storage / "tiny"))) == [], "no checkpoint may follow a non-finite loss"


@pytest.mark.timeout(400)
def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
        ray_local, digits_local, tmp_path, capsys):
    config = write_tiny_config(tmp_path)
    storage = tmp_path / "runs"
    common = ["--config", str(config), "--data", str(digits_local), "--storage", str(storage), "--no-preview",
              "--checkpoint-every", "2", "--max-failures", "0"]
    assert train_main([*common, "--steps", "4"]) == 0
    run = storage / "tiny"
    newest = run / "checkpoint_00000004" / "checkpoint.pt"
    truncated = newest.read_bytes()[: len(newest.read_bytes()) // 2]  # a truncated upload
    newest.write_bytes(truncated)
    capsys.readouterr()
    assert train_main([*common, "--steps", "6"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint_00000004 is corrupt" in out and "found checkpoint at step 2" in out
    assert (run / "corrupt-checkpoint_00000004" / "checkpoint.pt").read_bytes() == truncated, "kept for inspection"
    final = load_checkpoint(run / "checkpoint_00000006" / "checkpoint.pt")
    assert final.step == 6 and int(final.optimizer_state["state"][0]["step"]) == 6
    assert [m["step"] for m in metrics(run) if "loss" in m] == [1, 2, 3, 4, 5, 6]


@pytest.mark.timeout(400)
def test_resuming_with_other_learning_settings_needs_consent_and_is_recorded(ray_local, digits_local, tmp_path, capsys):
    config = write_tiny_config(tmp_path)
    storage = tmp_path / "runs"
    common = ["--config", str(config), "--data", str(digits_local), "--storage", str(storage), "--no-preview",
              "--checkpoint-every", "2", "--max-failures", "0"]
    assert train_main([*common, "--steps", "2"]) == 0
    capsys.readouterr()
    assert train_main([*common, "--steps", "4", "--set", "training.lr=0.0005"]) == 2
    err = capsys.readouterr().err
    assert "training.lr: 0.001 -> 0.0005" in err and "--allow-config-change" in err
    assert train_main([*common, "--steps", "4", "--set", "training.lr=0.0005", "--allow-config-change"]) == 0
    run = storage / "tiny"
    changes = [m for m in metrics(run) if "config_change" in m]
    assert changes == [{"step": 2, "config_change": {"training.lr": [0.001, 0.0005]}}]
    final = load_checkpoint(run / "checkpoint_00000004" / "checkpoint.pt")
    assert final.optimizer_state["param_groups"][0]["lr"] == 0.0005 and final.config.training.lr == 0.0005


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


@pytest.mark.timeout(300)
def test_bad_inputs_fail_before_training_with_a_clear_error(digits_local, tmp_path):
    config = write_tiny_config(tmp_path)
    storage = str(tmp_path / "runs")

    missing = _cli("--config", str(config), "--data", str(tmp_path / "nowhere"), "--storage", storage)
    assert missing.returncode == 2 and "not a prepared dataset" in missing.stderr and "does not exist" in missing.stderr

    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "shard-00000.parquet").write_bytes((digits_local / "shard-00000.parquet").read_bytes())
    half = _cli("--config", str(config), "--data", str(incomplete), "--storage", storage)
    assert half.returncode == 2 and "incomplete" in half.stderr

    shape = _cli("--config", str(config), "--data", str(digits_local), "--storage", storage, "--set", "data.image_size=16")
    assert shape.returncode == 2 and "8x8x1 images but the config expects 16x16x1" in shape.stderr

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for item in digits_local.iterdir():
        (damaged / item.name).write_bytes(item.read_bytes())
    (damaged / "shard-00000.parquet").write_bytes(b"PAR1 not really")
    corrupt = _cli("--config", str(config), "--data", str(damaged), "--storage", storage)
    assert corrupt.returncode == 2 and "shard shard-00000.parquet is missing or unreadable" in corrupt.stderr
    (damaged / "shard-00000.parquet").unlink()
    gone = _cli("--config", str(config), "--data", str(damaged), "--storage", storage)
    assert gone.returncode == 2 and "shard shard-00000.parquet is missing" in gone.stderr

    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("model:\n  ngf: 4\n  widht: 3\n")
    unknown = _cli("--config", str(bad_config), "--data", str(digits_local), "--storage", storage)
    assert unknown.returncode == 2 and "unknown key model.widht" in unknown.stderr and str(bad_config) in unknown.stderr

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    unwritable = _cli("--config", str(config), "--data", str(digits_local), "--storage", str(blocker / "runs"))
    assert unwritable.returncode == 2 and "not writable" in unwritable.stderr

    for result in (missing, half, corrupt, gone, shape, unknown, unwritable):
        assert "Traceback" not in result.stderr
        assert "[ray] started" not in result.stdout, "the job started Ray before validating its inputs"
    assert not (tmp_path / "runs" / "tiny").exists() or not any((tmp_path / "runs" / "tiny").glob("checkpoint_*"))


@pytest.mark.timeout(120)
def test_an_unwritable_s3_location_is_a_clear_error(s3_server, digits_local, tmp_path):
    config = write_tiny_config(tmp_path)
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), "--config", str(config), "--data", str(digits_local),
         "--storage", "s3://no-such-bucket/runs", "--s3-endpoint", s3_server["endpoint"]],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**__import__("os").environ, **s3_server["env"]},
    )
    assert result.returncode == 2 and "s3://no-such-bucket/runs" in result.stderr and "not writable" in result.stderr
    assert "testing-secret" not in result.stdout + result.stderr



