"""Evaluation across the cluster (ncsn_ray.evaluate.distributed): features on a Ray Data
actor pool streaming the shards from S3 (moto on loopback), scores equal to torch-fidelity's
own single-process ``calculate_metrics`` on the same images; published statistics files.

As in test_evaluate.py, the InceptionV3 weights are torch-fidelity's architecture with random
weights (the real ones cannot be downloaded here): the tests prove the plumbing and the
numerics against torch-fidelity, not the scores' meaning.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ncsn_ray.evaluate.cache import CACHE_DIR
from ncsn_ray.evaluate.fidelity import UInt8ImageDataset
from ncsn_ray.evaluate.job import evaluate_on_ray
from ncsn_ray.evaluate.reference_stats import ReferenceStatsError, load_reference_stats
from ncsn_ray.io.storage import Storage
from support.console import DEAD_PROXY, quiet
from support.data import digits_uint8, write_dataset, write_sample_set

REPO = Path(__file__).resolve().parents[1]
N_SAMPLES, N_REFERENCE, BATCH = 24, 32, 8

pytestmark = [pytest.mark.ray]

# Ray Data starts a pool's actors asynchronously and hands shards to whichever is up: with a
# few tiny shards the first actor can read them all before the second has started, so "two
# actors shared the work" would depend on the machine's speed. Ray's own knob makes the pool
# start its work once every actor is up; the tests assert the spread under it.
WAIT_FOR_ACTORS_S = 120


@pytest.fixture
def pool_starts_when_full():
    from ray.data import DataContext

    context = DataContext.get_current()
    before = context.wait_for_min_actors_s
    context.wait_for_min_actors_s = WAIT_FOR_ACTORS_S
    yield
    context.wait_for_min_actors_s = before


@pytest.fixture(scope="module")
def sets(module_bucket):
    """A reference dataset and a sample set on S3: digits 0-31, and 24 noisy digits from 40-63."""
    name, endpoint = module_bucket
    reference = digits_uint8(N_REFERENCE)
    rng = np.random.default_rng(0)
    noisy = digits_uint8(64)[40:64].astype(np.int16) + rng.integers(-40, 40, size=(N_SAMPLES, 8, 8, 1))
    samples = np.clip(noisy, 0, 255).astype(np.uint8)
    reference_uri, samples_uri = f"s3://{name}/data/digits", f"s3://{name}/samples/noisy"
    write_dataset(Storage.from_uri(reference_uri, endpoint_url=endpoint), reference, shard_size=10)
    write_sample_set(Storage.from_uri(samples_uri, endpoint_url=endpoint), samples, shard_size=6)
    return {"endpoint": endpoint, "reference_uri": reference_uri, "samples_uri": samples_uri,
            "reference": reference, "samples": samples}


def _torch_fidelity_scores(samples: np.ndarray, reference: np.ndarray, weights: Path) -> dict[str, float]:
    """The oracle: torch-fidelity's calculate_metrics on the same images, in this process."""
    import torch_fidelity

    from ncsn_ray.evaluate.scores import metric_kwargs

    scores = torch_fidelity.calculate_metrics(
        input1=UInt8ImageDataset(lambda: samples, len(samples)),
        input2=UInt8ImageDataset(lambda: reference, len(reference)),
        cuda=False, batch_size=5, fid=True, isc=True, kid=True, prc=True, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights), **metric_kwargs(len(samples), len(reference), 1000))
    return {k: float(v) for k, v in scores.items()}


@pytest.mark.timeout(600)
def test_actor_pool_scores_equal_torch_fidelity_and_stream_the_shards(ray_local, sets, inception_weights_file,
                                                                       pool_starts_when_full):
    lines: list[str] = []
    result = evaluate_on_ray(sets["samples_uri"], sets["reference_uri"], metrics="fid,isc,kid,prc",
                             inception_weights=str(inception_weights_file), endpoint_url=sets["endpoint"],
                             batch_size=BATCH, num_actors=2, cpus_per_actor=1, log=lines.append)
    expected = _torch_fidelity_scores(sets["samples"], sets["reference"], inception_weights_file)
    assert set(result["metrics"]) == set(expected) == {
        "frechet_inception_distance", "inception_score_mean", "inception_score_std", "kernel_inception_distance_mean",
        "kernel_inception_distance_std", "precision", "recall", "f_score"}
    for key, value in expected.items():
        assert result["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert result["metrics"]["frechet_inception_distance"] > 1e-3, "distinct sets: the comparison would mean nothing"

    # The images never met in one process: each actor call read one shard (6 rows), and two
    # actors shared the work.
    extraction = result["feature_extraction"]
    assert extraction["largest_shard_rows"] == 6 < N_SAMPLES
    assert extraction["actors"] == 2
    assert result["reference_cache"] == "computed" and result["num_reference"] == N_REFERENCE
    assert result["reported"]["fid@24"] == result["metrics"]["frechet_inception_distance"]
    assert not result["comparable_with_published"]
    assert any("fid@24" in line and "not comparable" in line for line in lines)

    cache = Storage.from_uri(sets["reference_uri"], endpoint_url=sets["endpoint"]).child(CACHE_DIR)
    names = cache.list()
    assert any(n.endswith("features-2048.pt") for n in names) and all(
        f"{n}.sha256" in names for n in names if n.endswith(".pt"))
    again = evaluate_on_ray(sets["samples_uri"], sets["reference_uri"], metrics="fid,kid",
                            inception_weights=str(inception_weights_file), endpoint_url=sets["endpoint"],
                            batch_size=BATCH, num_actors=1, log=quiet)
    assert again["reference_cache"] == "hit"
    assert again["metrics"]["frechet_inception_distance"] == pytest.approx(
        result["metrics"]["frechet_inception_distance"], rel=1e-6)


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.timeout(600)
def test_fid_against_published_statistics_equals_fid_against_the_dataset(ray_local, sets, inception_weights_file,
                                                                         tmp_path):
    from torch_fidelity.metric_fid import fid_features_to_statistics

    against_data = evaluate_on_ray(sets["samples_uri"], sets["reference_uri"], metrics="fid",
                                   inception_weights=str(inception_weights_file), endpoint_url=sets["endpoint"],
                                   batch_size=BATCH, num_actors=1, log=quiet)
    cache = Storage.from_uri(sets["reference_uri"], endpoint_url=sets["endpoint"]).child(CACHE_DIR)
    (feature_file,) = [n for n in cache.list() if n.endswith("features-2048.pt")]
    features = torch.load(io.BytesIO(cache.read_bytes(feature_file)), weights_only=True)
    stats = fid_features_to_statistics(features)
    published = Storage.from_uri(f"s3://{sets['reference_uri'].split('/')[2]}/stats", endpoint_url=sets["endpoint"])
    published.write_bytes("mu_sigma.npz", _npz(mu=stats["mu"].astype(np.float64), sigma=stats["sigma"]))
    published.write_bytes("pool_3.npz", _npz(pool_3=features.numpy()))
    for name in ("mu_sigma.npz", "pool_3.npz"):  # pytorch-fid's layout, and score_sde's activations
        result = evaluate_on_ray(sets["samples_uri"], None, metrics="fid,isc", reference_stats=published.uri_of(name),
                                 inception_weights=str(inception_weights_file), endpoint_url=sets["endpoint"],
                                 batch_size=BATCH, num_actors=1, log=quiet)
        assert result["metrics"]["frechet_inception_distance"] == pytest.approx(
            against_data["metrics"]["frechet_inception_distance"], rel=1e-4), name
        assert result["reference_stats"]["uri"] == published.uri_of(name) and "reference" not in result

    # Wrong files are refused naming the problem: shapes, layout, a pickle.
    bad = {"small.npz": _npz(mu=np.zeros(64), sigma=np.eye(64)), "keys.npz": _npz(mean=np.zeros(2048)),
           "edm.pkl": b"\x80\x04\x95" + b"\x00" * 32}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ReferenceStatsError, match=r"mu is \(64,\) and sigma \(64, 64\)"):
        load_reference_stats(str(tmp_path / "small.npz"))
    with pytest.raises(ReferenceStatsError, match="holds \\['mean'\\]; expected mu and sigma"):
        load_reference_stats(str(tmp_path / "keys.npz"))
    with pytest.raises(ReferenceStatsError, match="a pickle"):
        load_reference_stats(str(tmp_path / "edm.pkl"))
    samples = tmp_path / "samples"
    write_sample_set(Storage.from_uri(str(samples)), sets["samples"][:4], shard_size=4)
    cli = subprocess.run([sys.executable, str(REPO / "jobs" / "evaluate.py"), "--samples", str(samples),
                          "--metrics", "fid", "--reference-stats", str(tmp_path / "small.npz"), "--inception-weights",
                          str(inception_weights_file)], capture_output=True, text=True, timeout=240)
    assert cli.returncode == 2 and "mu is (64,)" in cli.stderr and "Traceback" not in cli.stderr
    assert not (samples / "_scores.json").exists()


@pytest.mark.timeout(300)
def test_fd_dinov2_without_its_hub_files_is_a_clear_error(tmp_path):
    samples, reference = tmp_path / "samples", tmp_path / "reference"
    write_sample_set(Storage.from_uri(str(samples)), digits_uint8(4), shard_size=4)
    write_dataset(Storage.from_uri(str(reference)), digits_uint8(4), shard_size=4)
    env = {**os.environ, **DEAD_PROXY, "TORCH_HOME": str(tmp_path / "torch-home")}
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "evaluate.py"), "--samples", str(samples),
                             "--reference", str(reference), "--metrics", "fd-dinov2", "--json"],
                            capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "facebookresearch_dinov2" in result.stderr and "dinov2_vitb14_pretrain.pth" in result.stderr
    assert "Traceback" not in result.stderr and not (samples / "_scores.json").exists()


STAND_IN_HUBCONF = """
dependencies = ["torch"]
import torch


class StandIn(torch.nn.Module):
    # 768-d features of 224x224 inputs, patch 14 like ViT-B/14: a stand-in for DINOv2's network
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patches = torch.nn.Conv2d(3, 768, 14, stride=14)

    def forward(self, x):
        return torch.tanh(self.patches(x)).mean((2, 3))


def dinov2_vitb14(pretrained=True, **kwargs):
    return StandIn()
"""


@pytest.mark.timeout(300)
def test_fd_dinov2_runs_offline_from_the_torch_hub_cache(tmp_path):
    """The whole fd-dinov2 path (the driver's check, torch-fidelity's DINOv2 extractor loading
    through torch hub, the actors, the Frechet distance) with a stand-in network in the hub
    cache's facebookresearch_dinov2_main folder: DINOv2's code cannot be fetched here."""
    hub = tmp_path / "torch-home" / "hub" / "facebookresearch_dinov2_main"
    hub.mkdir(parents=True)
    (hub / "hubconf.py").write_text(STAND_IN_HUBCONF)
    samples, same, other = tmp_path / "samples", tmp_path / "same", tmp_path / "other"
    write_sample_set(Storage.from_uri(str(samples)), digits_uint8(12), shard_size=4)
    write_dataset(Storage.from_uri(str(same)), digits_uint8(12), shard_size=4)
    write_dataset(Storage.from_uri(str(other)), 255 - digits_uint8(12), shard_size=4)
    env = {**os.environ, **DEAD_PROXY, "TORCH_HOME": str(tmp_path / "torch-home"),
           "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": str(WAIT_FOR_ACTORS_S)}
    scores = {}
    # The actor pool against identical images, this process (--no-ray) against other ones.
    for name, reference, path in (("same", same, ["--num-actors", "2"]), ("other", other, ["--no-ray"])):
        result = subprocess.run([sys.executable, str(REPO / "jobs" / "evaluate.py"), "--samples", str(samples),
                                 "--reference", str(reference), "--metrics", "fd-dinov2", "--json", *path],
                                capture_output=True, text=True, timeout=280, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        scores[name] = json.loads(result.stdout.strip().splitlines()[-1])
        (samples / "_scores.json").unlink()
    assert abs(scores["same"]["metrics"]["fd_dinov2"]) < 1e-3, "identical sets: FD ~ 0"
    assert scores["other"]["metrics"]["fd_dinov2"] > 1e-2
    assert scores["same"]["reported"] == {"fd_dinov2@12": scores["same"]["metrics"]["fd_dinov2"]}
    assert scores["same"]["feature_extraction"]["actors"] == 2
