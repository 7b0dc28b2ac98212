"""NCSNv2 (Song & Ermon 2020) in the same system: its five techniques against hand-computable
cases and the published numbers, its network, and its digits config through the real jobs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ncsn_core import build_model, config_from_dict, load_config
from ncsn_core.config import resolve_auto
from ncsn_core.model import NCSNv2
from ncsn_core.noise import (
    geometric_sigmas,
    ladder_overlap,
    ladder_ratio,
    stationary_variance_gap,
    suggest_num_levels,
    suggest_step_size,
)
from ncsn_ray.data.format import max_pairwise_distance
from support.train_helpers import REPO


def test_technique_1_largest_distance_between_training_points():
    corners = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 1], [0.5, 0.5, 0.5]], dtype=float)
    assert max_pairwise_distance(corners) == pytest.approx(math.sqrt(3))  # the cube's diagonal
    assert max_pairwise_distance(np.zeros((3, 4))) == 0.0


@pytest.mark.parametrize("sigma_max, levels, dimension", [(50.0, 232, 3 * 32 * 32), (90.0, 500, 3 * 64 * 64)])
def test_technique_2_published_ladders_overlap_by_about_0_567(sigma_max, levels, dimension):
    sigmas = geometric_sigmas(sigma_max, 0.01, levels)
    gamma = float(sigmas[0] / sigmas[1])
    assert ladder_overlap(gamma, dimension) == pytest.approx(0.567, abs=0.002)
    assert ladder_overlap(ladder_ratio(dimension), dimension) == pytest.approx(0.5, abs=1e-6)
    assert suggest_num_levels(sigma_max, 0.01, dimension, target=0.567) in range(levels - 3, levels + 4)


def test_technique_4_step_size_for_the_cifar10_ladder():
    sigmas = geometric_sigmas(50.0, 0.01, 232)
    eps = suggest_step_size(sigmas, 5)
    assert eps / 2 == pytest.approx(6.2e-6, rel=0.01), "the original code's convention: x + e s + sqrt(2e) z"
    gamma = float(sigmas[-2] / sigmas[-1])
    gaps = [stationary_variance_gap(eps / 2 * f, 0.01, gamma, 5) for f in (0.8, 1.0, 1.25)]
    assert gaps[1] == min(gaps) and gaps[1] >= 1.0 - 1e-9, "the minimiser of an expression that stays above 1"


def test_technique_3_output_scales_with_one_over_sigma():
    sigmas = geometric_sigmas(50.0, 0.01, 20)
    network = NCSNv2(1, sigmas, ngf=4).eval()
    x = torch.rand(1, 1, 8, 8).expand(2, 1, 8, 8)
    with torch.no_grad():
        first, last = network(x, torch.tensor([0, 19]))
    assert torch.allclose(last / first, torch.full_like(first, 50.0 / 0.01), rtol=1e-4)


def test_ncsnv2_parameter_count_does_not_depend_on_the_ladder():
    counts = {L: sum(p.numel() for p in NCSNv2(3, geometric_sigmas(50, 0.01, L), ngf=128).parameters())
              for L in (10, 232)}
    assert counts[10] == counts[232] == 29_694_083


def test_auto_values_resolve_from_the_data_for_digits():
    config = load_config(REPO / "ncsn_ray" / "configs" / "digits-v2.yaml")
    assert config.has_auto()
    resolved, chosen = resolve_auto(config, max_distance=4.8137, dimension=64)
    assert chosen["noise.sigma_max"] == pytest.approx(4.8137) and chosen["noise.num_levels"] == 14
    assert chosen["sampling.eps"] == pytest.approx(suggest_step_size(
        geometric_sigmas(4.8137, resolved.noise.sigma_min, 14), resolved.sampling.steps_per_level))
    assert not resolved.has_auto() and build_model(resolved).sigmas.shape == (14,)
    with pytest.raises(Exception, match="largest distance"):
        resolve_auto(config_from_dict({"noise": {"sigma_max": "auto"}}), max_distance=None, dimension=64)


@pytest.mark.parametrize("name", ["cifar10-v2", "celeba-v2"])
def test_published_v2_configs_are_the_papers(name):
    config = load_config(REPO / "ncsn_ray" / "configs" / f"{name}.yaml")
    assert config.model.kind == "ncsnv2" and config.training.lr == 1e-4 and config.training.ema_decay == 0.999
    assert config.sampling.steps_per_level == 5 and config.sampling.final_denoise and config.sampling.ema
    expected = {"cifar10-v2": (50.0, 232, 300_000, 32), "celeba-v2": (90.0, 500, 210_000, 64)}[name]
    assert (config.noise.sigma_max, config.noise.num_levels, config.training.steps, config.data.image_size) == expected


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_digits_v2_trains_and_samples_through_the_jobs(ray_local, digits_local, tmp_path):
    from ncsn_core import load_checkpoint
    from ncsn_ray.sample.sample_set import read_sample_manifest
    from ncsn_ray.io.storage import Storage
    from support.jobs import load_job

    storage = tmp_path / "runs"
    assert load_job("train").main(["--config", str(REPO / "ncsn_ray" / "configs" / "digits-v2.yaml"), "--data",
                                   str(digits_local), "--storage", str(storage), "--steps", "4",
                                   "--checkpoint-every", "2", "--max-failures", "0"]) == 0
    checkpoint = load_checkpoint(storage / "digits-v2" / "checkpoint_00000004" / "checkpoint.pt")
    config = checkpoint.config
    assert config.model.kind == "ncsnv2" and not config.has_auto()
    assert config.noise.sigma_max == pytest.approx(4.8137, abs=1e-3) and config.noise.num_levels == 14
    assert checkpoint.ema_state is not None and "sigmas" in checkpoint.model_state
    out = tmp_path / "samples"
    assert load_job("generate").main(["--checkpoint", str(storage / "digits-v2"), "--n", "6", "--out", str(out),
                                      "--num-actors", "1"]) == 0
    manifest = read_sample_manifest(Storage.from_uri(str(out)))
    assert manifest["count"] == 6 and manifest["checkpoint"]["weights"] == "ema"
    # The config's sampler: EDM's stochastic sampler, 18 sigmas of the rho-schedule, 35 NFE.
    assert (manifest["sampler"]["method"], manifest["sampler"]["steps"], manifest["nfe_per_sample"]) == ("edm", 18, 35)
    assert manifest["sampler"]["eps"] == pytest.approx(config.sampling.eps)  # resolved, for annealed Langevin
