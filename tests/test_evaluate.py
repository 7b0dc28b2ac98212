"""FID / IS / KID evaluation (ncsn_ray.evaluate.job, jobs/evaluate.py) with torch-fidelity.

The real InceptionV3 weights cannot be downloaded here, so the full path runs with a weights
file made in the test (``inception_weights_file`` in conftest.py): torch-fidelity's own
``FeatureExtractorInceptionV3`` architecture, randomly initialised and saved in the format
its ``feature_extractor_weights_path`` loads. Scores are therefore not comparable with published ones; the tests check the
plumbing: identical image sets score FID ~ 0, other images score higher, reference features
are cached beside the reference in object storage (a real S3 API on loopback, moto) and
reused, and bad input fails with clear errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ncsn_ray.data.format import DatasetError
from ncsn_ray.evaluate.job import EvaluationError, evaluate, evaluate_on_ray
from ncsn_ray.evaluate.cache import CACHE_DIR
from ncsn_ray.evaluate.fidelity import UInt8ImageDataset
from ncsn_ray.sample.sample_set import SampleSetError
from ncsn_ray.io.storage import Storage
from support.console import DEAD_PROXY, quiet
from support.data import digits_uint8, write_dataset, write_sample_set

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "jobs" / "evaluate.py"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Inception on a busy 2-core machine: extra threads only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inception_weights(inception_weights_file) -> Path:
    """Random InceptionV3 weights (see ``inception_weights_file`` in conftest.py)."""
    return inception_weights_file


@pytest.mark.timeout(120)
def test_grey_images_are_repeated_to_three_uint8_channels():
    images = digits_uint8(3)
    dataset = UInt8ImageDataset(lambda: images, 3)
    item = dataset[1]
    assert item.shape == (3, 8, 8) and item.dtype == torch.uint8
    for channel in range(3):
        assert np.array_equal(item[channel].numpy(), images[1, ..., 0])


@pytest.mark.timeout(300)
def test_scores_from_s3_and_reference_features_cached_beside_the_reference(inception_weights, module_bucket):
    name, endpoint = module_bucket
    reference_uri = f"s3://{name}/data/digits"
    reference = digits_uint8(10)
    write_dataset(Storage.from_uri(reference_uri, endpoint_url=endpoint), reference)
    same_uri, noise_uri = f"s3://{name}/samples/same", f"s3://{name}/samples/noise"
    write_sample_set(Storage.from_uri(same_uri, endpoint_url=endpoint), reference)
    noise = np.random.default_rng(0).integers(0, 256, size=(10, 8, 8, 1), dtype=np.uint8)
    write_sample_set(Storage.from_uri(noise_uri, endpoint_url=endpoint), noise)

    lines: list[str] = []
    same = evaluate(same_uri, reference_uri, inception_weights=str(inception_weights), endpoint_url=endpoint, log=lines.append)
    metrics = same["metrics"]
    assert set(metrics) == {
        "frechet_inception_distance", "inception_score_mean", "inception_score_std",
        "kernel_inception_distance_mean", "kernel_inception_distance_std",
    }
    assert all(np.isfinite(v) for v in metrics.values())
    assert abs(metrics["frechet_inception_distance"]) < 1e-3, "identical image sets: FID ~ 0"
    # IS = exp(E KL(p(y|x) || p(y))): above 1 for images the network tells apart, exactly 1
    # for a set of copies of one image (every p(y|x) equals p(y)).
    assert metrics["inception_score_mean"] > 1.0 + 1e-4
    assert same["reference_cache"] == "computed" and (same["num_samples"], same["num_reference"]) == (10, 10)
    assert same["inception_weights"]["source"] == str(inception_weights)
    assert any("frechet_inception_distance" in line for line in lines)

    cache = Storage.from_uri(reference_uri, endpoint_url=endpoint).child(CACHE_DIR)
    cached = cache.list()
    features = [n for n in cached if n.endswith(".pt")]
    assert features and all(n.startswith("ref-") for n in features)
    assert sorted(cached) == sorted(features + [f"{n}.sha256" for n in features]), "each cached file has its digest"
    written = json.loads(Storage.from_uri(same_uri, endpoint_url=endpoint).read_bytes("_scores.json"))
    assert written["metrics"] == metrics

    copies_uri = f"s3://{name}/samples/copies"
    write_sample_set(Storage.from_uri(copies_uri, endpoint_url=endpoint), np.repeat(reference[:1], 10, axis=0))
    copies = evaluate(copies_uri, reference_uri, inception_weights=str(inception_weights), endpoint_url=endpoint,
                      metrics="isc", log=quiet)
    assert copies["metrics"]["inception_score_mean"] == pytest.approx(1.0, abs=1e-5)

    other = evaluate(noise_uri, reference_uri, inception_weights=str(inception_weights), endpoint_url=endpoint,
                     metrics="fid,kid", log=quiet)
    assert other["reference_cache"] == "hit", "the reference's features come from the cache"
    assert cache.list() == cached
    assert set(other["metrics"]) == {"frechet_inception_distance", "kernel_inception_distance_mean", "kernel_inception_distance_std"}

    # Cached feature files that no longer match their digests are not trusted: recomputed.
    originals = {name: cache.read_bytes(name) for name in features}
    for name, data in originals.items():
        cache.write_bytes(name, data[:-8] + b"\x00" * 8)
    lines: list[str] = []
    again = evaluate(noise_uri, reference_uri, inception_weights=str(inception_weights), endpoint_url=endpoint,
                     metrics="fid", log=lines.append)
    assert any("does not match its digest" in line for line in lines)
    assert again["reference_cache"] == "computed"
    assert again["metrics"]["frechet_inception_distance"] == pytest.approx(other["metrics"]["frechet_inception_distance"])
    restored = [name for name in features if cache.read_bytes(name) == originals[name]]
    assert restored, "the recomputed features replaced the tampered files"
    assert other["metrics"]["frechet_inception_distance"] > 100 * max(metrics["frechet_inception_distance"], 1e-6)
    # KID is an unbiased estimate on random subsets: near 0, not exactly 0, for identical sets.
    assert abs(metrics["kernel_inception_distance_mean"]) < other["metrics"]["kernel_inception_distance_mean"] / 10


@pytest.mark.timeout(120)
def test_incomplete_sample_sets_and_mismatched_references_are_refused(inception_weights, tmp_path):
    reference = tmp_path / "reference"
    write_dataset(Storage.from_uri(str(reference)), digits_uint8(8))
    incomplete = tmp_path / "incomplete"
    write_sample_set(Storage.from_uri(str(incomplete)), digits_uint8(8), complete=False)
    with pytest.raises(SampleSetError, match="the generation job did not finish"):
        evaluate(str(incomplete), str(reference), inception_weights=str(inception_weights), log=quiet)
    with pytest.raises(SampleSetError, match="does not exist"):
        evaluate(str(tmp_path / "nothing"), str(reference), inception_weights=str(inception_weights), log=quiet)

    rgb = tmp_path / "rgb"
    write_sample_set(Storage.from_uri(str(rgb)), np.zeros((4, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(EvaluationError, match=r"samples are 3x8x8 \(CxHxW\) but the reference .* holds 1x8x8"):
        evaluate(str(rgb), str(reference), inception_weights=str(inception_weights), log=quiet)
    big = tmp_path / "big"
    write_sample_set(Storage.from_uri(str(big)), np.zeros((4, 16, 16, 1), dtype=np.uint8))
    with pytest.raises(EvaluationError, match="1x16x16"):
        evaluate(str(big), str(reference), inception_weights=str(inception_weights), log=quiet)
    with pytest.raises(EvaluationError, match="metrics: expected"):
        evaluate(str(big), str(reference), metrics="fid,precision", log=quiet)
    assert not (rgb / "_scores.json").exists() and not (big / "_scores.json").exists()

    grey = tmp_path / "grey"
    write_sample_set(Storage.from_uri(str(grey)), digits_uint8(8), shard_size=4)
    (reference / "shard-00000.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetError, match="shard shard-00000.parquet is missing or unreadable"):
        evaluate(str(grey), str(reference), inception_weights=str(inception_weights), log=quiet)
    first_sample_shard = sorted(grey.glob("*.parquet"))[0]
    first_sample_shard.unlink()
    with pytest.raises(SampleSetError, match=first_sample_shard.name):
        evaluate(str(grey), metrics="digits", log=quiet)


@pytest.mark.timeout(300)
def test_cli_offline_without_weights_says_how_to_provide_them_then_runs_with_them(inception_weights, tmp_path):
    reference, samples = tmp_path / "reference", tmp_path / "samples"
    write_dataset(Storage.from_uri(str(reference)), digits_uint8(8))
    write_sample_set(Storage.from_uri(str(samples)), digits_uint8(16)[8:])
    env = {**os.environ, **DEAD_PROXY, "TORCH_HOME": str(tmp_path / "empty-torch-home"), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    args = [sys.executable, str(SCRIPT), "--samples", str(samples), "--reference", str(reference)]

    # Checked in the driver before Ray starts: fails at once.
    offline = subprocess.run(args, capture_output=True, text=True, env=env, timeout=240)
    assert offline.returncode == 2, offline.stderr
    assert "cannot download the InceptionV3 weights" in offline.stderr
    assert "--inception-weights PATH" in offline.stderr and "weights-inception-2015-12-05-6726825d.pth" in offline.stderr
    assert "Traceback" not in offline.stderr
    assert not (samples / "_scores.json").exists()
    # The same in-process (--no-ray): found before the work begins, so bad input too.
    offline = subprocess.run([*args, "--no-ray"], capture_output=True, text=True, env=env, timeout=240)
    assert offline.returncode == 2 and "cannot download the InceptionV3 weights" in offline.stderr, offline.stderr
    assert "re-run" not in offline.stderr and not (samples / "_scores.json").exists()

    done = subprocess.run([*args, "--inception-weights", str(inception_weights), "--metrics", "fid", "--no-ray", "--json"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["metrics"]) == {"frechet_inception_distance"} and result["metrics"]["frechet_inception_distance"] > 0
    # a small-n FID is named with its n, and said not to compare with published 50k numbers
    assert result["reported"] == {"fid@8": result["metrics"]["frechet_inception_distance"]}
    assert result["comparable_with_published"] is False
    assert "fid@8" in done.stdout and "not comparable with published 50k numbers" in done.stdout
    assert json.loads((samples / "_scores.json").read_text())["metrics"] == result["metrics"]
    assert (reference / CACHE_DIR).is_dir()


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_evaluation_as_a_ray_task(inception_weights, tmp_path, monkeypatch):
    """The default CLI path: one Ray task; bad input found inside the task keeps its type."""
    import ray

    from ncsn_ray.cluster import init_ray

    reference, samples = tmp_path / "reference", tmp_path / "samples"
    write_dataset(Storage.from_uri(str(reference)), digits_uint8(8), shard_size=4)
    write_sample_set(Storage.from_uri(str(samples)), digits_uint8(16)[8:])
    monkeypatch.chdir(tmp_path)  # relative paths work: made absolute before they reach the task
    init_ray(num_cpus=2, object_store_memory=150_000_000, log=quiet)
    try:
        result = evaluate_on_ray("samples", "reference", inception_weights=str(inception_weights),
                                 metrics="fid,kid", log=quiet)
        assert set(result["metrics"]) == {"frechet_inception_distance", "kernel_inception_distance_mean",
                                          "kernel_inception_distance_std"}
        assert json.loads((samples / "_scores.json").read_text())["metrics"] == result["metrics"]

        (reference / "shard-00001.parquet").unlink()  # the manifest now promises a shard that is gone
        (samples / "_scores.json").unlink()
        with pytest.raises(DatasetError, match="shard shard-00001.parquet is missing"):
            evaluate_on_ray("samples", "reference", inception_weights=str(inception_weights),
                            metrics="isc,fid", log=quiet)
        assert not (samples / "_scores.json").exists()
    finally:
        ray.shutdown()


def test_several_sample_sets_are_scored_into_one_report_with_their_spread(tmp_path):
    """``--samples A,B,C``: each set scored as alone (its own _scores.json), then every metric
    as mean ± sample std over the sets; a missing set is found before any set is scored."""
    from ncsn_ray.evaluate.job import EvaluateOptions, run

    images = digits_uint8(90)
    uris = []
    for k in range(3):
        folder = tmp_path / f"set{k}"
        write_sample_set(Storage.from_uri(str(folder)), images[k * 30:(k + 1) * 30])
        uris.append(str(folder))
    alone = [evaluate(uri, metrics="digits", log=quiet)["metrics"] for uri in uris]
    for uri in uris:
        (Path(uri) / "_scores.json").unlink()
    report = run(EvaluateOptions(samples=",".join(uris), metrics="digits", use_ray=False), log=quiet)
    assert report["num_sets"] == 3 and all((Path(uri) / "_scores.json").is_file() for uri in uris)
    recall = report["spread"]["digits_recall"]
    assert recall["values"] == pytest.approx([a["digits_recall"] for a in alone])
    assert recall["mean"] == pytest.approx(np.mean(recall["values"]))
    assert recall["std"] == pytest.approx(np.std(recall["values"], ddof=1))
    assert "digits_fd_over_real" in report["spread"]

    for uri in uris:
        (Path(uri) / "_scores.json").unlink()
    with pytest.raises(SampleSetError, match="no-such-set"):
        run(EvaluateOptions(samples=",".join([*uris, str(tmp_path / "no-such-set")]), metrics="digits",
                            use_ray=False), log=quiet)
    assert not any((Path(uri) / "_scores.json").exists() for uri in uris), "a set was scored before all were checked"
    with pytest.raises(EvaluationError, match="named twice"):
        run(EvaluateOptions(samples=f"{uris[0]},{uris[0]}", metrics="digits", use_ray=False), log=quiet)
