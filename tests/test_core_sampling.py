"""Samplers on targets whose answer is known (exact analytic scores)."""

import pytest
import torch

from ncsn_core import (
    GeneratorNoise,
    PerSampleNoise,
    annealed_langevin,
    annealed_langevin_inpaint,
    geometric_sigmas,
    initial_samples,
    langevin,
    make_mask,
)
from ncsn_core.sampling import annealed_step_sizes
from ncsn_core.toy import GaussianMixture, lower_left_fraction

MEAN, STD = 0.3, 0.5


def gaussian_score(sigmas):
    """Exact score of N(MEAN, STD^2 I) perturbed by sigmas[level]."""

    def score(x, level):
        var = STD**2 + sigmas[level] ** 2
        return -(x - MEAN) / var.view(-1, *([1] * (x.ndim - 1)))

    return score


def test_step_sizes_follow_algorithm_1():
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    alphas = annealed_step_sizes(sigmas, 2e-5)
    assert alphas[-1] == pytest.approx(2e-5)
    assert alphas[0] == pytest.approx(2e-5 * 1e4)
    for a, s in zip(alphas, sigmas.tolist()):
        assert a / s**2 == pytest.approx(2e-5 / 0.01**2)


def test_annealed_langevin_reproduces_a_gaussian_mean_and_variance():
    sigmas = geometric_sigmas(2.0, 0.05, 8)
    g = torch.Generator().manual_seed(0)
    x0 = initial_samples((4000, 4), generator=g)
    x = annealed_langevin(gaussian_score(sigmas), x0, sigmas, steps_per_level=100, eps=0.01, generator=g)
    target_var = STD**2 + 0.05**2
    assert x.mean().item() == pytest.approx(MEAN, abs=0.02)
    assert x.var().item() == pytest.approx(target_var, rel=0.06)


def test_plain_langevin_converges_on_a_gaussian():
    sigmas = torch.tensor([0.05])
    g = torch.Generator().manual_seed(1)
    x0 = initial_samples((4000, 2), low=-3, high=3, generator=g)
    x = langevin(gaussian_score(sigmas), x0, sigmas, steps=400, step_size=0.02, generator=g)
    assert x.mean().item() == pytest.approx(MEAN, abs=0.02)
    assert x.var().item() == pytest.approx(STD**2 + 0.05**2, rel=0.06)


def test_final_denoising_removes_the_last_noise_level():
    sigmas = geometric_sigmas(2.0, 0.3, 6)
    g = torch.Generator().manual_seed(2)
    x0 = initial_samples((4000, 4), generator=g)
    common = dict(steps_per_level=80, eps=0.05)
    plain = annealed_langevin(gaussian_score(sigmas), x0, sigmas, generator=torch.Generator().manual_seed(3), **common)
    denoised = annealed_langevin(
        gaussian_score(sigmas), x0, sigmas, generator=torch.Generator().manual_seed(3), final_denoise=True, **common
    )
    # Tweedie on N(m, s^2 + sl^2) shrinks towards m by s^2 / (s^2 + sl^2): variance s^4 / (s^2 + sl^2).
    v = STD**2 + 0.3**2
    assert plain.var().item() == pytest.approx(v, rel=0.07)
    assert denoised.var().item() == pytest.approx(STD**4 / v, rel=0.07)


def test_annealed_langevin_recovers_the_toy_mode_weights_where_plain_langevin_fails():
    mixture = GaussianMixture()
    sigmas = geometric_sigmas(10.0, 0.1, 10)
    g = torch.Generator().manual_seed(0)
    x0 = initial_samples((3000, 2), low=-8, high=8, generator=g)
    annealed = annealed_langevin(
        lambda x, lvl: mixture.score(x, sigmas[lvl]), x0, sigmas, steps_per_level=100, eps=0.002, generator=g
    )
    plain = langevin(lambda x, lvl: mixture.score(x), x0, sigmas, steps=1000, step_size=0.1, generator=g)
    assert lower_left_fraction(annealed) == pytest.approx(0.2, abs=0.04)
    assert abs(lower_left_fraction(plain) - 0.2) > 0.15


def test_same_generator_seed_gives_identical_samples_and_different_seeds_do_not():
    sigmas = geometric_sigmas(1.0, 0.1, 3)
    score = gaussian_score(sigmas)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return annealed_langevin(score, initial_samples((8, 1, 4, 4), generator=g), sigmas, steps_per_level=5, generator=g)

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_per_sample_noise_makes_each_sample_depend_only_on_its_seed():
    sigmas = geometric_sigmas(1.0, 0.1, 3)
    score = gaussian_score(sigmas)
    shape = (1, 4, 4)

    def run(seeds):
        noise = PerSampleNoise(seeds, shape)
        x0 = initial_samples((len(seeds), *shape), noise=noise)
        return annealed_langevin(score, x0, sigmas, steps_per_level=5, noise=noise)

    batch_a = run([3, 10, 11, 12])
    batch_b = run([11, 3])
    assert torch.equal(batch_a[0], batch_b[1])
    assert torch.equal(batch_a[2], batch_b[0])
    assert not torch.equal(batch_a[0], batch_a[1])


def test_sampler_does_not_modify_its_input_and_clamps_when_asked():
    sigmas = geometric_sigmas(1.0, 0.1, 3)
    x0 = torch.rand(16, 3)
    before = x0.clone()
    x = annealed_langevin(gaussian_score(sigmas), x0, sigmas, steps_per_level=20, eps=0.5, clamp=(0.0, 1.0),
                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(x0, before)
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_callback_sees_every_step_of_every_level():
    sigmas = geometric_sigmas(1.0, 0.1, 4)
    seen = []
    annealed_langevin(gaussian_score(sigmas), torch.rand(2, 3), sigmas, steps_per_level=3,
                      callback=lambda info: seen.append((info["level"], info["step"], info["x"].shape)))
    assert [(lvl, step) for lvl, step, _ in seen] == [(l, s) for l in range(4) for s in range(3)]
    assert all(shape == (2, 3) for _, _, shape in seen)


def test_gaussian_initial_samples_and_bad_kind():
    x = initial_samples((20000, 1), kind="gaussian", sigma_max=2.0, generator=torch.Generator().manual_seed(0))
    assert x.mean().item() == pytest.approx(0.5, abs=0.05) and x.std().item() == pytest.approx(2.0, rel=0.03)
    with pytest.raises(ValueError, match="initial sample kind"):
        initial_samples((2, 2), kind="laplace")


def test_noise_source_shape_must_match_the_samples():
    sigmas = geometric_sigmas(1.0, 0.1, 2)
    with pytest.raises(ValueError, match="noise source shape"):
        annealed_langevin(gaussian_score(sigmas), torch.rand(4, 2), sigmas, noise=GeneratorNoise((3, 2)))


@pytest.mark.parametrize("kind", ["half", "center", "random"])
def test_inpainting_returns_known_pixels_exactly(kind):
    sigmas = geometric_sigmas(1.0, 0.01, 5)
    g = torch.Generator().manual_seed(0)
    known = torch.rand(6, 3, 8, 8, generator=g)
    mask = make_mask(kind, known.shape, generator=g)
    assert mask.dtype == torch.bool and mask.any() and (~mask).any()
    x0 = initial_samples(known.shape, generator=g)
    out = annealed_langevin_inpaint(gaussian_score(sigmas), x0, sigmas, known=known, mask=mask,
                                    steps_per_level=10, eps=1e-3, generator=g)
    assert torch.equal(out[mask], known[mask])
    assert not torch.equal(out[~mask], known[~mask])
    assert not torch.equal(out[~mask], x0[~mask])


def test_inpainting_fills_unknown_pixels_from_the_target_distribution():
    sigmas = geometric_sigmas(2.0, 0.05, 8)
    g = torch.Generator().manual_seed(4)
    known = torch.zeros(2000, 1, 2, 2)
    mask = make_mask("half", known.shape)
    out = annealed_langevin_inpaint(gaussian_score(sigmas), initial_samples(known.shape, generator=g), sigmas,
                                    known=known, mask=mask, steps_per_level=100, eps=0.01, generator=g)
    filled = out[~mask]
    assert filled.mean().item() == pytest.approx(MEAN, abs=0.03)
    assert filled.var().item() == pytest.approx(STD**2 + 0.05**2, rel=0.08)


def test_inpainting_checks_its_mask():
    sigmas = geometric_sigmas(1.0, 0.1, 2)
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(TypeError, match="bool"):
        annealed_langevin_inpaint(gaussian_score(sigmas), x, sigmas, known=x, mask=torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="mask kind"):
        make_mask("star", (1, 1, 4, 4))
