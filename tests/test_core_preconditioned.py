"""The networks with EDM's preconditioning: the digits default's small U-Net and the MLP before
it; their loss weighting, training on any sigma (EDM's log-normal draw), and the samplers'
access to their score at any sigma."""

import math

import pytest
import torch

from ncsn_core import (Config, ConfigError, PreconditionedMLP, PreconditionedUNet, build_model, dsm_loss,
                       geometric_sigmas, loss_options, make_optimizer)
from ncsn_core.config import config_from_dict
from ncsn_core.losses import nearest_levels
from ncsn_core.fast_sampling import edm_stochastic
from ncsn_core.model import NCSN
from ncsn_core.schedules import edm_schedule
from ncsn_core.sigma_score import LadderScore, sigma_score_fn, supports_any_sigma
from ncsn_ray import configs
from ncsn_core import load_config

SIGMA_DATA = 0.37


def tiny_mlp(**kwargs) -> PreconditionedMLP:
    torch.manual_seed(0)
    return PreconditionedMLP((1, 8, 8), geometric_sigmas(4.0, 0.08, 6), width=32, depth=2, sigma_data=SIGMA_DATA,
                             **kwargs).eval()


def tiny_unet(**kwargs) -> PreconditionedUNet:
    torch.manual_seed(0)
    return PreconditionedUNet((1, 8, 8), geometric_sigmas(4.0, 0.08, 6), width=4, hidden=16, groups=2,
                              sigma_data=SIGMA_DATA, **kwargs).eval()


NETWORKS = {"mlp": tiny_mlp, "unet": tiny_unet}


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_with_a_zero_output_layer_the_network_is_the_exact_score_of_its_gaussian(kind):
    """F = 0 leaves D = c_skip x, whose score (D - x) / sigma^2 = -x / (sigma^2 + sigma_d^2) is the
    exact score of N(0, sigma_d^2 I) perturbed by N(0, sigma^2 I): c_skip and the score conversion
    are right at every sigma, small and large."""
    model = NETWORKS[kind]()
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.zero_()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    model = model.double()
    for sigma in (0.01, 0.08, 0.5, 4.0, 50.0):
        sigmas = torch.full((5,), sigma, dtype=torch.float64)
        torch.testing.assert_close(model(x, sigmas), -x / (sigma**2 + SIGMA_DATA**2), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_ladder_indices_and_sigma_values_give_the_same_score(kind):
    model = NETWORKS[kind]()
    x = torch.rand(6, 1, 8, 8)
    levels = torch.tensor([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        by_index = model(x, levels)
        by_value = model(x, model.sigmas[levels])
    torch.testing.assert_close(by_index, by_value)
    assert not torch.equal(by_index[0], by_index[5])


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_edm_weighting_is_edms_loss_on_the_denoiser(kind):
    """dsm_loss with sigma_data = EDM's 1/2 (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 ||D(x + sigma z) - x||^2,
    computed here from the denoiser directly."""
    model = NETWORKS[kind]().double()
    sigmas = model.sigmas.double()
    x = torch.rand(8, 1, 8, 8, dtype=torch.float64)
    levels = torch.arange(8) % 6
    noise = torch.randn_like(x)
    out = dsm_loss(model, x, sigmas, levels=levels, noise=noise, sigma_data=SIGMA_DATA)
    sigma = sigmas[levels].view(-1, 1, 1, 1)
    denoised = model.denoise(x + sigma * noise, sigmas[levels])
    weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    expected = (0.5 * weight * (denoised - x) ** 2).flatten(1).sum(1)
    torch.testing.assert_close(out.per_example, expected, rtol=1e-9, atol=1e-12)
    # without sigma_data: the paper's sigma^2 weighting, a different loss
    paper = dsm_loss(model, x, sigmas, levels=levels, noise=noise)
    assert not torch.allclose(paper.per_example, out.per_example)


def test_the_unet_sees_neighbourhoods_and_the_whole_image():
    """A pixel's output depends on its neighbours through the convolutions and on a far pixel
    through the dense bottleneck: changing one input pixel changes every output pixel."""
    model = tiny_unet()
    x = torch.rand(1, 1, 8, 8, requires_grad=True)
    model(x, torch.tensor([2]))[0, 0, 7, 7].backward()
    assert bool((x.grad[0, 0] != 0).all())
    with pytest.raises(ValueError, match="even image"):
        PreconditionedUNet((1, 7, 7), geometric_sigmas(4.0, 0.08, 6))


def test_float_sigmas_train_as_the_ladder_levels_they_equal():
    """dsm_loss with the sigmas themselves (EDM's log-normal draw) is the ladder's loss when the
    sigmas are ladder levels, and logs each example under its nearest level."""
    model = tiny_unet().double()
    sigmas = model.sigmas.double()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    levels = torch.tensor([0, 1, 2, 3, 4, 5])
    noise = torch.randn_like(x)
    by_level = dsm_loss(model, x, sigmas, levels=levels, noise=noise, sigma_data=SIGMA_DATA)
    by_value = dsm_loss(model, x, sigmas, levels=sigmas[levels], noise=noise, sigma_data=SIGMA_DATA)
    torch.testing.assert_close(by_value.per_example, by_level.per_example)
    assert torch.equal(by_value.levels, levels)
    between = torch.sqrt(sigmas[:-1] * sigmas[1:]) * torch.tensor([1.01, 0.99, 1.01, 0.99, 1.01], dtype=torch.float64)
    assert nearest_levels(between, sigmas).tolist() == [0, 2, 2, 4, 4]


def test_a_lognormal_draw_needs_a_network_that_takes_any_sigma():
    """NCSN, conditioned on ladder indices, is refused by name; NCSNv2 (sigma only scales its
    output) takes the drawn sigmas, and gives at a ladder sigma what it gives at that level's index."""
    base = load_config(configs.resolve("digits")).to_dict()
    bad = {**base, "model": {**base["model"], "kind": "ncsn"}, "training": {**base["training"], "sigma_draw": "lognormal"}}
    with pytest.raises(ConfigError, match="sigma_draw lognormal"):
        config_from_dict(bad, "test")
    v2 = load_config(configs.resolve("digits-ncsnv2")).to_dict()
    v2 = config_from_dict({**v2, "noise": {**v2["noise"], "sigma_max": 4.0, "num_levels": 6},
                           "sampling": {**v2["sampling"], "eps": 1e-5},
                           "training": {**v2["training"], "sigma_draw": "lognormal"}}, "test")
    torch.manual_seed(0)
    network = build_model(v2)
    x, index = torch.rand(3, 1, 8, 8), torch.tensor([0, 2, 5])
    assert torch.equal(network(x, network.sigmas[index]), network(x, index))
    drawn = torch.tensor([3.3, 0.5, 0.09])
    assert torch.allclose(network(x, drawn) * drawn.view(-1, 1, 1, 1), network(x, index) * network.sigmas[index].view(-1, 1, 1, 1))
    with pytest.raises(ConfigError, match="sigma_std"):
        config_from_dict({**base, "training": {**base["training"], "sigma_draw": "lognormal", "sigma_std": 0}}, "t")


def test_the_samplers_evaluate_it_at_any_sigma_and_it_learns_a_gaussian():
    """sigma_score_fn passes float sigmas through (EDM's churn needs sigmas off the ladder), and a
    few hundred steps on N(1/2, 0.2^2) data move the sampled mean and spread to the data's."""
    torch.manual_seed(0)
    ladder = geometric_sigmas(2.0, 0.02, 8)
    model = PreconditionedMLP((1, 2, 2), ladder, width=64, depth=2, sigma_data=0.2)
    optimizer = make_optimizer(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(600):
        x = 0.5 + 0.2 * torch.randn(256, 1, 2, 2, generator=g)
        loss = dsm_loss(model, x, ladder, generator=g, sigma_data=0.2).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    score = sigma_score_fn(model, model, ladder)
    assert supports_any_sigma(score)
    assert isinstance(sigma_score_fn(NCSN(1, 8, ngf=4), NCSN(1, 8, ngf=4), ladder), LadderScore)
    with torch.no_grad():
        x0 = 0.5 + 2.0 * torch.randn(2000, 1, 2, 2, generator=g)
        samples = edm_stochastic(score, x0, edm_schedule(18, 0.02, 2.0), churn=5.0, final_denoise=True,
                                 generator=torch.Generator().manual_seed(2))
    assert abs(samples.mean().item() - 0.5) < 0.03
    assert math.isclose(samples.std().item(), 0.2, rel_tol=0.15)


def test_the_digits_default_builds_the_unet_with_edm_weighting_and_a_lognormal_draw():
    config = load_config(configs.resolve("digits"))
    assert config.model.kind == "unet" and config.training.loss_weighting == "edm"
    assert config.training.sigma_draw == "lognormal"
    resolved = config_from_dict({**config.to_dict(), "noise": {"sigma_max": 4.81, "sigma_min": 0.08,
                                                               "num_levels": 14}, "sampling": {
        **config.to_dict()["sampling"], "eps": 0.003}}, "test")
    model = build_model(resolved)
    assert isinstance(model, PreconditionedUNet) and model.sigma_data == config.model.sigma_data
    assert loss_options(resolved) == {"anneal_power": 2.0, "sigma_data": config.model.sigma_data}
    assert loss_options(Config()) == {"anneal_power": 2.0}
    mlp = load_config(configs.resolve("digits-mlp"))
    assert isinstance(build_model(config_from_dict({**mlp.to_dict(), **{k: resolved.to_dict()[k] for k in ("noise",)},
                                                    "sampling": resolved.to_dict()["sampling"]}, "t")),
                      PreconditionedMLP)
