"""Batch generation and inpainting with Ray Data (ncsn_ray.sample.generate, ncsn_ray.sample.inpaint, ncsn_ray.sample.sample_set,
jobs/generate.py) against real components: a tiny checkpoint trained here with
``ncsn_core.dsm_loss``, a real local Ray instance shared by the module, a real S3 API on
loopback (moto), prepared datasets written with ``ncsn_ray.data.format``, the CLI in
subprocesses, and ``ray job submit`` to a token-authenticated ``ray start --head``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ncsn_ray.evaluate import digits as dq
from ncsn_ray.sample import generate
from ncsn_ray.sample import inpaint
from ncsn_ray.train.checkpoints import load_checkpoint_uri
from ncsn_ray.errors import UserError
from ncsn_ray.io.figures import decode_png
from ncsn_ray.sample.generate import GenerateOptions, default_shard_size
from ncsn_ray.sample.inpaint import InpaintOptions
from ncsn_ray.sample.pipeline import ActorPlan
from ncsn_ray.sample.sampler import Sampler, SamplerSettings, image_mask, override_sampling
from ncsn_ray.sample.sample_set import INPAINT_SCHEMA, SampleSetError, iter_sample_images, plan_units, read_sample_manifest
from ncsn_ray.io.storage import Storage
from ncsn_ray.testing import faults
from support.console import quiet
from support.data import digits_uint8, make_tiny_run, write_dataset
from support.jobs import load_job

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "jobs" / "generate.py"


def load_cli():
    return load_job("generate")


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO
    )


def seeds_and_pngs(storage: Storage) -> dict[int, bytes]:
    manifest = read_sample_manifest(storage)
    out: dict[int, bytes] = {}
    for shard in manifest["shards"]:
        table = storage.read_table(shard["path"])
        for seed, png in zip(table.column("seed").to_pylist(), table.column("image").to_pylist()):
            assert seed not in out, f"duplicate seed {seed}"
            out[seed] = png
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tiny") / "run"
    make_tiny_run(run)
    return run


@pytest.fixture(scope="module")
def s3_samples(ray_local, tiny_run, module_bucket):
    """24 samples (seeds 0..23) in shards of 10, batches of 4, one actor, written to S3."""
    name, endpoint = module_bucket
    uri = f"s3://{name}/samples/tiny"
    lines: list[str] = []
    summary = generate.run(
        GenerateOptions(n=24, checkpoint=str(tiny_run), out=uri, shard_size=10, batch_size=4,
                        actors=ActorPlan(num_actors=1), endpoint_url=endpoint),
        log=lines.append,
    )
    return uri, endpoint, summary, lines


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_generate_to_s3_writes_exactly_n_seeds_and_manifest(s3_samples, tiny_run):
    uri, endpoint, summary, lines = s3_samples
    assert summary["status"] == "complete" and summary["computed"] == 24
    storage = Storage.from_uri(uri, endpoint_url=endpoint)
    manifest = read_sample_manifest(storage)
    assert manifest["count"] == 24
    assert (manifest["channels"], manifest["height"], manifest["width"]) == (1, 8, 8)
    assert [s["path"] for s in manifest["shards"]] == [
        "samples-000000-000009.parquet", "samples-000010-000019.parquet", "samples-000020-000023.parquet"
    ]
    assert manifest["checkpoint"]["step"] == 3
    assert manifest["checkpoint"]["uri"] == str(tiny_run / "checkpoint_000001" / "checkpoint.pt")
    assert len(manifest["checkpoint"]["sha256"]) == 64
    assert manifest["sampler"]["steps_per_level"] == 2 and manifest["sampler"]["eps"] == pytest.approx(4e-5)
    identity = manifest["job"]["identity"]
    assert (identity["n"], identity["seed"], identity["batch_size"], identity["shard_size"]) == (24, 0, 4, 10)
    seeds, images = zip(*iter_sample_images(storage, manifest))
    seeds, images = np.concatenate(seeds), np.concatenate(images)
    assert sorted(seeds.tolist()) == list(range(24))
    assert images.shape == (24, 8, 8, 1) and images.dtype == np.uint8
    assert len({img.tobytes() for img in images}) == 24, "every seed gives its own image"
    with Image.open(io.BytesIO(storage.read_bytes("_grid.png"))) as grid:
        assert grid.width > 8 and grid.height > 8
    assert storage.exists("_job.json")
    progress = [line for line in lines if "samples (" in line]
    assert progress and progress[-1].startswith("[generate] 24/24 samples (100.0%)")
    assert "samples/s" in progress[-1] and "left" in progress[-1]


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_rerunning_a_finished_job_does_nothing(s3_samples, tiny_run):
    import boto3

    uri, endpoint, _, _ = s3_samples
    bucket, prefix = uri[len("s3://"):].split("/", 1)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def listing():
        objects = client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        return {o["Key"]: (o["ETag"], o["LastModified"]) for o in objects}

    before = listing()
    lines: list[str] = []
    summary = generate.run(
        GenerateOptions(n=24, checkpoint=str(tiny_run), out=uri, shard_size=10, batch_size=4, endpoint_url=endpoint),
        log=lines.append,
    )
    assert summary["status"] == "already complete" and summary["computed"] == 0
    assert any("nothing to do" in line for line in lines)
    assert listing() == before


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_same_seeds_on_two_actors_give_byte_identical_images(s3_samples, tiny_run, tmp_path):
    uri, endpoint, _, _ = s3_samples
    local = tmp_path / "two-actors"
    generate.run(
        GenerateOptions(n=24, checkpoint=str(tiny_run), out=str(local), shard_size=10, batch_size=4,
                        actors=ActorPlan(num_actors=2)),
        log=quiet,
    )
    one_actor = seeds_and_pngs(Storage.from_uri(uri, endpoint_url=endpoint))
    two_actors = seeds_and_pngs(Storage.from_uri(str(local)))
    assert sorted(two_actors) == list(range(24))
    assert one_actor == two_actors


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_one_shard_and_no_cluster_is_computed_in_the_job_process_with_an_actors_bytes(s3_samples, tiny_run, tmp_path):
    """The first look's case: nothing to fan out, so no Ray start; the shard is the one the
    actor pool wrote (same code, same thread count), and the job's output says where it ran."""
    uri, endpoint, _, _ = s3_samples  # seeds 0..23 in shards of 10, batches of 4, on one actor
    out = tmp_path / "in-process"
    result = run_cli(["--checkpoint", str(tiny_run), "--n", "10", "--shard-size", "10", "--batch-size", "4",
                      "--out", str(out)])
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    assert "1 shard: computed in this process" in text and "10/10 samples (100.0%)" in text
    assert "[ray]" not in text and "Ray instance" not in text, text[-3000:]
    here = seeds_and_pngs(Storage.from_uri(str(out)))
    pool = seeds_and_pngs(Storage.from_uri(uri, endpoint_url=endpoint))
    assert sorted(here) == list(range(10))
    assert here == {seed: pool[seed] for seed in range(10)}


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_shard_size_made_of_whole_batches_does_not_change_the_bytes(ray_local, tiny_run, tmp_path):
    results = []
    for shard_size, actors in ((4, 1), (8, 2)):
        out = tmp_path / f"shards-{shard_size}"
        generate.run(GenerateOptions(n=12, checkpoint=str(tiny_run), out=str(out), shard_size=shard_size, batch_size=4,
                                     actors=ActorPlan(num_actors=actors)), log=quiet)
        results.append(seeds_and_pngs(Storage.from_uri(str(out))))
    assert sorted(results[0]) == list(range(12)) and results[0] == results[1]


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_annealing_strip_shows_the_samples_forming_and_ends_on_them(ray_local, tiny_run, tmp_path):
    out = tmp_path / "strip"
    generate.run(GenerateOptions(n=6, checkpoint=str(tiny_run), out=str(out), batch_size=3, trajectory=5,
                                 actors=ActorPlan(num_actors=1)), log=quiet)
    manifest = read_sample_manifest(Storage.from_uri(str(out)))
    assert manifest["annealing"] == "_annealing.png"
    with Image.open(out / "_annealing.png") as strip:
        pixels = np.asarray(strip.convert("L"))
    scale = 48 // 8  # 8x8 tiles, 1 px gaps, nearest-neighbour upscaled
    assert pixels.shape == ((3 * 9 + 1) * scale, (5 * 9 + 1) * scale), "3 seeds (the first batch) x 5 frames"

    def tile(row: int, col: int) -> np.ndarray:
        top, left = (1 + row * 9) * scale, (1 + col * 9) * scale
        return pixels[top : top + 8 * scale : scale, left : left + 8 * scale : scale]

    stored = seeds_and_pngs(Storage.from_uri(str(out)))
    for seed in range(3):
        assert np.array_equal(tile(seed, 4), decode_png(stored[seed], 1)[..., 0]), "the last frame is the sample"
        assert not np.array_equal(tile(seed, 0), tile(seed, 4)), "the first frame is the initial noise"


def test_default_shard_size_gives_each_planned_actor_several_whole_batches():
    assert default_shard_size(64, 32, actors=2) == 32  # both cores busy, one batch each
    assert default_shard_size(512, 32, actors=2) == 64  # 8 shards: 4 per actor
    assert default_shard_size(50_000, 500, actors=8) == 1000  # capped at 1000 seeds
    assert default_shard_size(5, 100, actors=2) == 100  # never less than one batch
    for n, batch, actors in ((1000, 30, 3), (7, 2, 5), (50_000, 300, 16)):
        size = default_shard_size(n, batch, actors)
        assert size % batch == 0 and batch <= size <= max(batch, 1000)


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_interrupted_job_resumes_without_touching_finished_shards(ray_local, tiny_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "interrupted"
    options = dict(n=10, checkpoint=str(tiny_run), out=str(out), shard_size=3, batch_size=2, actors=ActorPlan(num_actors=1))
    # The CLI (in-process, on the module's Ray): an actor raises after its first shard.
    args = ["--checkpoint", str(tiny_run), "--n", "10", "--out", str(out), "--shard-size", "3", "--batch-size", "2",
            "--num-actors", "1"]
    monkeypatch.setenv(faults.ENV, "sample.fail_after_shards=1")
    assert load_cli().main(args) == 1
    monkeypatch.delenv(faults.ENV)
    err = capsys.readouterr().err
    assert "injected failure" in err and "re-run the same command to resume" in err
    assert not (out / "_manifest.json").exists() and not list(out.glob(".*tmp*"))
    with pytest.raises(SampleSetError, match="did not finish"):
        read_sample_manifest(Storage.from_uri(str(out)))
    finished = sorted(p.name for p in out.glob("samples-*.parquet"))
    assert finished == ["samples-000000-000002.parquet"], "one actor wrote its first shard, then failed"
    stats = {name: (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns) for name in finished}

    lines: list[str] = []
    summary = generate.run(GenerateOptions(**options), log=lines.append)
    assert summary["status"] == "complete"
    assert summary["computed"] == 10 - sum(u.count for u in plan_units("generate", 10, 3) if u.name in finished)
    assert any("resuming" in line for line in lines)
    assert {name: (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns) for name in finished} == stats
    assert sorted(seeds_and_pngs(Storage.from_uri(str(out)))) == list(range(10))
    assert sorted(p.name for p in out.glob("samples-*.parquet")) == [u.name for u in plan_units("generate", 10, 3)]


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_inpainting_keeps_known_pixels(ray_local, tiny_run, module_bucket, tmp_path):
    name, endpoint = module_bucket
    data_uri = f"s3://{name}/data/digits"
    originals = digits_uint8(7)
    write_dataset(Storage.from_uri(data_uri, endpoint_url=endpoint), originals, shard_size=3, first_id=100)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :3] = 255
    mask[0, :] = 255  # an arbitrary shape: left columns and the top row are known
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask).save(mask_path)
    out_uri = f"s3://{name}/inpaint/tiny"
    summary = inpaint.run(
        InpaintOptions(data=data_uri, checkpoint=str(tiny_run), out=out_uri, mask=str(mask_path), samples_per_image=2,
                       limit=5, shard_size=3, batch_size=4, actors=ActorPlan(num_actors=1), endpoint_url=endpoint,
                       overrides=["sampling.final_denoise=true"]),
        log=quiet,
    )
    assert summary["status"] == "complete" and summary["images"] == 5
    out = Storage.from_uri(out_uri, endpoint_url=endpoint)
    manifest = read_sample_manifest(out, kind="inpaint")
    # annealed Langevin (the tiny run's sampler) inpaints in L x T = 3 x 2 evaluations: the final
    # denoise is generation's, inpainting does not take it
    assert "method" not in manifest["sampler"] and manifest["nfe_per_sample"] == 6  # AL's settings omit the key
    assert manifest["inpaint_quality"]["inpaint_known_change"] == 0 and out.exists("_scores.json")
    assert manifest["count"] == 5 and [s["path"] for s in manifest["shards"]] == [
        "inpaint-000000-000002.parquet", "inpaint-000003-000004.parquet"
    ]
    known = mask.astype(bool)
    rows = []
    for shard in manifest["shards"]:
        rows += out.read_table(shard["path"], schema=INPAINT_SCHEMA).to_pylist()
    assert [r["id"] for r in rows] == [100, 101, 102, 103, 104]
    all_seeds = [s for r in rows for s in r["seeds"]]
    assert len(all_seeds) == len(set(all_seeds)) == 10
    for position, row in enumerate(rows):
        original = decode_png(row["original"], 1)[..., 0]
        occluded = decode_png(row["occluded"], 1)[..., 0]
        assert np.array_equal(original, originals[position, ..., 0])
        assert np.array_equal(decode_png(row["mask"], 1)[..., 0] > 0, known)
        assert np.array_equal(occluded[known], original[known])
        assert (occluded[~known] == 128).all()
        assert len(row["inpaintings"]) == 2
        for png in row["inpaintings"]:
            filled = decode_png(png, 1)[..., 0]
            assert filled.shape == (8, 8)
            assert np.array_equal(filled[known], original[known])
    with Image.open(io.BytesIO(out.read_bytes("_figure.png"))) as figure:
        # 4 columns (occluded | 2 inpaintings | original) x 5 rows of 8x8 tiles, 1 px gaps, scaled 6x
        assert figure.size == ((4 * 9 + 1) * 6, (5 * 9 + 1) * 6)


@pytest.mark.timeout(120)
def test_per_level_estimates_follow_the_ladder_and_end_on_the_samples(tiny_run):
    checkpoint, _ = load_checkpoint_uri(str(tiny_run))
    config = override_sampling(checkpoint.config, ["sampling.final_denoise=true"])
    sampler = Sampler.from_checkpoint(checkpoint, SamplerSettings.from_config(config))
    levels = sampler.denoised_per_level([3, 5, 7])
    assert [sigma for sigma, _ in levels] == pytest.approx(checkpoint.sigmas.tolist())
    assert all(images.shape == (3, 8, 8, 1) and images.dtype == np.uint8 for _, images in levels)
    assert np.array_equal(levels[-1][1], sampler.sample([3, 5, 7])), "the last estimate is the Tweedie-denoised sample"
    assert not np.array_equal(levels[0][1], levels[-1][1]), "the chain moves between the first level and the last"
    classes, confidence = dq.classify(levels[-1][1])
    assert classes.shape == confidence.shape == (3,) and set(classes) <= set(range(10))
    assert ((0.1 <= confidence) & (confidence <= 1)).all(), "the top class of ten has probability at least 0.1"


@pytest.mark.timeout(120)
def test_random_masks_depend_only_on_seed_and_id():
    a = image_mask("random", (1, 8, 8), seed=0, source_id=5, file_mask=None)
    assert a.shape == (1, 8, 8) and a.dtype == torch.bool
    assert torch.equal(a, image_mask("random", (1, 8, 8), seed=0, source_id=5, file_mask=None))
    assert not torch.equal(a, image_mask("random", (1, 8, 8), seed=0, source_id=6, file_mask=None))


# ----------------------------------------------------------------- bad input: clear errors


@pytest.mark.timeout(120)
def test_cli_refuses_missing_and_corrupt_checkpoints(tmp_path):
    out = tmp_path / "out"
    missing = run_cli(["--checkpoint", str(tmp_path / "no-such-run"), "--n", "4", "--out", str(out)])
    assert missing.returncode == 2, missing.stderr
    assert "no checkpoint found" in missing.stderr and "Traceback" not in missing.stderr
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    bad = run_cli(["--checkpoint", str(corrupt), "--n", "4", "--out", str(out)])
    assert bad.returncode == 2, bad.stderr
    assert "not a readable checkpoint" in bad.stderr
    assert not out.exists()


@pytest.mark.timeout(120)
def test_cli_refuses_a_different_job_into_a_finished_sample_set(s3_samples, tiny_run, s3_server):
    uri, endpoint, _, _ = s3_samples
    storage = Storage.from_uri(uri, endpoint_url=endpoint)
    manifest_before = storage.read_bytes("_manifest.json")
    result = run_cli(
        ["--checkpoint", str(tiny_run), "--n", "24", "--out", uri, "--shard-size", "10", "--batch-size", "4",
         "--steps-per-level", "3"],
        env=s3_server["env"],
    )
    assert result.returncode == 2, result.stderr
    assert "holds a different job" in result.stderr and "steps_per_level: was 2, now 3" in result.stderr
    assert storage.read_bytes("_manifest.json") == manifest_before


@pytest.mark.timeout(120)
def test_bad_arguments_are_refused_before_anything_is_written(tiny_run, tmp_path, capsys):
    cli = load_cli()
    out = tmp_path / "out"
    for n in ("0", "-3"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--checkpoint", str(tiny_run), "--n", n, "--out", str(out)])
        assert exit_info.value.code == 2 and "--n must be at least 1" in capsys.readouterr().err
    assert cli.main(["--checkpoint", str(tiny_run), "--n", "4", "--out", str(out), "--set", "model.ngf=8"]) == 2
    assert "only sampling.* settings" in capsys.readouterr().err
    assert cli.main(["--checkpoint", str(tiny_run), "--n", "4", "--out", str(out), "--set", "sampling.init=sideways"]) == 2
    assert "sampling.init must be one of" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--checkpoint", str(tiny_run), "--out", str(out)])
    assert exit_info.value.code == 2 and "--n is required" in capsys.readouterr().err

    # A folder that is not a sample set is never written into.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli.main(["--checkpoint", str(tiny_run), "--n", "4", "--out", str(other)]) == 2
    assert "not a sample set" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


@pytest.mark.timeout(120)
def test_inpainting_refuses_incomplete_datasets_and_bad_masks(tiny_run, tmp_path, capsys):
    cli = load_cli()
    incomplete = tmp_path / "incomplete"
    write_dataset(Storage.from_uri(str(incomplete)), digits_uint8(4), shard_size=2, manifest=False)
    out = tmp_path / "out"
    args = ["--mode", "inpaint", "--checkpoint", str(tiny_run), "--out", str(out)]
    assert cli.main([*args, "--data", str(incomplete)]) == 2
    assert "no manifest: it is incomplete" in capsys.readouterr().err

    data = tmp_path / "data"
    write_dataset(Storage.from_uri(str(data)), digits_uint8(4), shard_size=2)
    wrong_size = tmp_path / "mask16.png"
    Image.fromarray(np.full((16, 16), 255, dtype=np.uint8)).save(wrong_size)
    assert cli.main([*args, "--data", str(data), "--mask", str(wrong_size)]) == 2
    assert "the mask is 16x16 (W x H) but the images are 8x8" in capsys.readouterr().err
    assert cli.main([*args, "--data", str(data), "--mask", str(tmp_path / "nope.png")]) == 2
    assert "cannot read the mask file" in capsys.readouterr().err
    rgb = tmp_path / "rgb"
    write_dataset(Storage.from_uri(str(rgb)), np.zeros((2, 8, 8, 3), dtype=np.uint8), shard_size=2)
    assert cli.main([*args, "--data", str(rgb)]) == 2
    assert "images are 3x8x8 (CxHxW) but the checkpoint models 1x8x8" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(UserError, match="samples per image"):
        inpaint.run(InpaintOptions(data=str(data), checkpoint=str(tiny_run), samples_per_image=0), log=quiet)


# ----------------------------------------------------------------- ray job submit


@pytest.mark.ray
@pytest.mark.slow  # CI covers this path in tests/test_pipeline_e2e.py; run with -m slow
@pytest.mark.timeout(420)
def test_ray_job_submit_generates_into_s3(tiny_run, module_bucket, s3_server, tmp_path):
    """``ray job submit -- python jobs/generate.py`` on a token-authenticated local head.

    The checkpoint is uploaded to S3 first: the job reads and writes only object storage.
    Credentials go to the node environment, the endpoint to the job's runtime_env.
    """
    from support.ray_head import local_ray_head
    from support.ray_jobs import job_output, job_succeeded, submit_job

    name, endpoint = module_bucket
    run_uri = f"s3://{name}/runs/tiny"
    ckpt = tiny_run / "checkpoint_000001"
    run_storage = Storage.from_uri(run_uri, endpoint_url=endpoint)
    for item in ("checkpoint.pt", "step.txt"):
        run_storage.write_bytes(f"checkpoint_000001/{item}", (ckpt / item).read_bytes())
    out_uri = f"s3://{name}/job-samples"
    credentials = {k: v for k, v in s3_server["env"].items() if k != "AWS_ENDPOINT_URL"}
    with local_ray_head(tmp_path=tmp_path / "head", num_cpus=2, env=credentials) as head:
        result = submit_job(
            head,
            ["python", "jobs/generate.py", "--checkpoint", run_uri, "--n", "6", "--shard-size", "3", "--out", out_uri, "--json"],
            working_dir=REPO,
            env={"AWS_ENDPOINT_URL": endpoint},
            timeout=360,
        )
    assert job_succeeded(result), job_output(result)
    assert "[generate] 6/6 samples (100.0%)" in result.stdout, job_output(result)
    storage = Storage.from_uri(out_uri, endpoint_url=endpoint)
    manifest = read_sample_manifest(storage)
    assert manifest["count"] == 6
    assert manifest["checkpoint"]["uri"] == f"{run_uri}/checkpoint_000001/checkpoint.pt"
    assert sorted(seeds_and_pngs(storage)) == list(range(6))


# ----------------------------------------------------------------- faults


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_an_actor_process_that_dies_is_replaced_and_the_bytes_are_unchanged(ray_local, tiny_run, tmp_path, monkeypatch):
    settings = dict(n=12, checkpoint=str(tiny_run), shard_size=4, batch_size=4, actors=ActorPlan(num_actors=1))
    undisturbed, killed = tmp_path / "undisturbed", tmp_path / "killed"
    generate.run(GenerateOptions(out=str(undisturbed), **settings), log=quiet)
    monkeypatch.setenv(faults.ENV, "sample.exit_once_after_shards=1")
    summary = generate.run(GenerateOptions(out=str(killed), **settings), log=quiet)
    assert (killed / ".injected-exit-done").exists(), "the actor process was not killed"
    assert summary["status"] == "complete"
    assert seeds_and_pngs(Storage.from_uri(str(killed))) == seeds_and_pngs(Storage.from_uri(str(undisturbed)))
    assert sorted(seeds_and_pngs(Storage.from_uri(str(killed)))) == list(range(12)), "exactly n unique seeds"


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_non_finite_samples_fail_the_job_naming_the_seeds_and_publish_nothing(tiny_run, tmp_path):
    out = tmp_path / "exploded"
    # The network normalises its input (instance norm), so its output stays bounded and a huge
    # step only grows x linearly: the step must push x past float32's range to overflow it.
    result = run_cli(["--checkpoint", str(tiny_run), "--n", "4", "--out", str(out), "--num-actors", "1",
                      "--set", "sampling.eps=1e34"], timeout=200)
    assert result.returncode == 1, result.stderr
    assert "non-finite samples for seed(s) 0, 1, 2, 3" in result.stderr and "lower sampling.eps" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "_manifest.json").exists() and not list(out.glob("*.parquet"))


def test_a_zero_shard_size_is_refused(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_cli().main(["--checkpoint", str(tiny_run), "--n", "4", "--out", str(tmp_path / "o"), "--shard-size", "0"])
    assert exit_info.value.code == 2 and "--shard-size must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_an_interrupted_inpainting_run_resumes_without_touching_finished_shards(ray_local, tiny_run, tmp_path,
                                                                                monkeypatch):
    data = tmp_path / "data"
    write_dataset(Storage.from_uri(str(data)), digits_uint8(6), shard_size=3)
    out = tmp_path / "inpaint"
    options = dict(data=str(data), checkpoint=str(tiny_run), out=str(out), mask="center", samples_per_image=2,
                   shard_size=2, batch_size=4, actors=ActorPlan(num_actors=1))
    monkeypatch.setenv(faults.ENV, "sample.fail_after_shards=1")
    with pytest.raises(Exception, match="injected failure"):
        inpaint.run(InpaintOptions(**options), log=quiet)
    monkeypatch.delenv(faults.ENV)
    finished = sorted(p.name for p in out.glob("inpaint-*.parquet"))
    assert finished == ["inpaint-000000-000001.parquet"] and not (out / "_manifest.json").exists()
    before = {name: (out / name).stat().st_mtime_ns for name in finished}
    lines: list[str] = []
    summary = inpaint.run(InpaintOptions(**options), log=lines.append)
    assert summary["status"] == "complete" and summary["computed"] == 4
    assert any("resuming: 1/3 shards already done" in line for line in lines)
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == before
    manifest = read_sample_manifest(Storage.from_uri(str(out)), kind="inpaint")
    assert manifest["count"] == 6 and len(manifest["shards"]) == 3


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_a_fast_sampler_keeps_the_guarantees_of_annealed_langevin(ray_local, tiny_run, tmp_path, capsys):
    """Heun steps along the trained ladder through the actor pool: the bytes depend only on the
    seeds (not on actors or shards), the manifest records the sampler and its NFE, and other
    settings into the same folder are refused."""
    fast = ["sampling.method=heun", "sampling.final_denoise=true"]
    results = []
    for shard_size, actors in ((4, 1), (8, 2)):
        out = tmp_path / f"heun-{shard_size}"
        generate.run(GenerateOptions(n=12, checkpoint=str(tiny_run), out=str(out), shard_size=shard_size, batch_size=4,
                                     overrides=fast, actors=ActorPlan(num_actors=actors)), log=quiet)
        results.append(seeds_and_pngs(Storage.from_uri(str(out))))
    assert sorted(results[0]) == list(range(12)) and results[0] == results[1]
    manifest = read_sample_manifest(Storage.from_uri(str(tmp_path / "heun-4")))
    assert manifest["sampler"]["method"] == "heun" and manifest["sampler"]["init"] == "gaussian"
    assert manifest["nfe_per_sample"] == 2 * (3 - 1) + 1, "3 ladder levels: 2 Heun steps and the final denoise"

    # The same seeds through the Sampler in this process give the same bytes (one sampling code).
    checkpoint, _ = load_checkpoint_uri(str(tiny_run))
    settings = SamplerSettings.from_config(override_sampling(checkpoint.config, fast))
    images = Sampler.from_checkpoint(checkpoint, settings).sample([0, 1, 2, 3])
    for seed in range(4):
        assert np.array_equal(images[seed], decode_png(results[0][seed], 1))

    cli = load_cli()
    out = str(tmp_path / "heun-4")
    assert cli.main(["--checkpoint", str(tiny_run), "--n", "12", "--out", out, "--shard-size", "4",
                     "--batch-size", "4", "--set", "sampling.method=pc"]) == 2
    assert "holds a different job" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_samplers_a_network_cannot_run_are_refused_naming_why(tiny_run, tmp_path, capsys):
    cli = load_cli()
    out = tmp_path / "out"
    base = ["--checkpoint", str(tiny_run), "--n", "4", "--out", str(out)]
    cases = [
        (["--set", "sampling.method=heun", "--set", "sampling.schedule=edm"], "conditioned on the index"),
        (["--set", "sampling.method=edm", "--set", "sampling.churn=10"], "cannot evaluate"),
        (["--set", "sampling.method=rk4"], "sampling.method must be one of"),
        (["--set", "sampling.method=heun", "--set", "sampling.steps=1"], "sampling.steps must be at least 2"),
        (["--set", "sampling.method=pc", "--set", "sampling.snr=-1"], "sampling.snr must be a positive number"),
        (["--set", "sampling.method=heun", "--steps-per-level", "3"], "sampling.steps"),
        (["--mode", "inpaint", "--data", str(tmp_path), "--set", "sampling.method=rk4"], "sampling.method must be one of"),
        (["--mode", "inpaint", "--data", str(tmp_path), "--set", "sampling.method=edm", "--set", "sampling.churn=10"],
         "cannot evaluate"),
        (["--mode", "inpaint", "--data", str(tmp_path), "--set", "sampling.method=heun", "--renoise", "step"],
         "annealed Langevin's"),
    ]
    for extra, message in cases:
        assert cli.main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not out.exists()


def inpainted_rows(folder: Path) -> dict[int, tuple[list[int], list[bytes]]]:
    """``{source id: (seeds, inpainting PNGs)}`` of a complete inpainting set."""
    storage = Storage.from_uri(str(folder))
    manifest = read_sample_manifest(storage, kind="inpaint")
    rows = [row for shard in manifest["shards"] for row in storage.read_table(shard["path"], schema=INPAINT_SCHEMA).to_pylist()]
    return {row["id"]: (row["seeds"], row["inpaintings"]) for row in rows}


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_fast_sampler_inpaints_with_bytes_independent_of_actors_shards_and_batches(ray_local, tiny_run, tmp_path):
    """The predictor-corrector sampler inpaints through the actor pool: the same (id, k) gives the
    same bytes on 1 or 2 actors, in shards of 2 or 3 images, in batches of 4 or 3; the known
    pixels are the original's; the manifest records generation's NFE; the job scores the set."""
    data = tmp_path / "data"
    originals = digits_uint8(6)
    write_dataset(Storage.from_uri(str(data)), originals, shard_size=4)
    fast = ["sampling.method=pc", "sampling.final_denoise=true"]
    results = []
    for shard_size, batch_size, actors in ((2, 4, 1), (3, 3, 2)):
        out = tmp_path / f"pc-{shard_size}"
        lines: list[str] = []
        inpaint.run(InpaintOptions(data=str(data), checkpoint=str(tiny_run), out=str(out), mask="random",
                                   samples_per_image=2, shard_size=shard_size, batch_size=batch_size, overrides=fast,
                                   actors=ActorPlan(num_actors=actors)), log=lines.append)
        results.append(inpainted_rows(out))
    assert sorted(results[0]) == list(range(6)) and results[0] == results[1]
    assert any("inpainting quality (6 images x 2, random mask, 5 NFE each)" in line for line in lines), lines

    out = Storage.from_uri(str(tmp_path / "pc-2"))
    manifest = read_sample_manifest(out, kind="inpaint")
    assert manifest["sampler"]["method"] == "pc" and manifest["nfe_per_sample"] == (3 - 1) * (1 + 1) + 1
    scores = out.read_json("_scores.json")
    assert scores["metrics"]["inpaint_known_change"] == 0 and scores["nfe_per_sample"] == 5
    assert 0 <= scores["metrics"]["inpaint_label_agreement"] <= 1 and scores["metrics"]["inpaint_diversity"] > 0
    assert manifest["inpaint_quality"] == scores["metrics"]

    # The same seeds through the Sampler in this process: the same bytes; known pixels held.
    checkpoint, _ = load_checkpoint_uri(str(tiny_run))
    sampler = Sampler.from_checkpoint(checkpoint, SamplerSettings.from_config(override_sampling(checkpoint.config, fast)))
    for source_id in (0, 5):
        seeds, pngs = results[0][source_id]
        mask = image_mask("random", (1, 8, 8), seed=0, source_id=source_id, file_mask=None)
        known = torch.from_numpy(originals[source_id]).permute(2, 0, 1).float()[None] / 255
        images = sampler.inpaint(seeds, known.expand(2, -1, -1, -1), mask[None].expand(2, -1, -1, -1))
        for image, png in zip(images, pngs):
            assert np.array_equal(image, decode_png(png, 1))
            assert np.array_equal(image[..., 0][mask[0].numpy()], originals[source_id, ..., 0][mask[0].numpy()])


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_a_one_shard_inpainting_job_runs_in_its_own_process_with_the_pools_bytes(ray_local, tiny_run, tmp_path):
    data = tmp_path / "data"
    write_dataset(Storage.from_uri(str(data)), digits_uint8(3), shard_size=3)
    common = ["--mode", "inpaint", "--checkpoint", str(tiny_run), "--data", str(data), "--samples-per-image", "2",
              "--batch-size", "6", "--set", "sampling.method=heun"]
    here, pool = tmp_path / "here", tmp_path / "pool"
    result = run_cli([*common, "--out", str(here)])
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    assert "1 shard(s) of 3 images" in text and "1 shard: computed in this process" in text
    assert "[ray]" not in text and "Ray instance" not in text, text[-3000:]
    assert "label agreement" in text and "known-pixel change 0" in text
    inpaint.run(InpaintOptions(data=str(data), checkpoint=str(tiny_run), out=str(pool), samples_per_image=2,
                               batch_size=6, shard_size=1, overrides=["sampling.method=heun"],
                               actors=ActorPlan(num_actors=1)), log=quiet)
    assert inpainted_rows(here) == inpainted_rows(pool)
