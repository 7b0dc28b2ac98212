"""Fast samplers (probability-flow ODE, EDM, predictor-corrector) on exact analytic scores."""

import math

import pytest
import torch

from ncsn_core import PerSampleNoise, geometric_sigmas, initial_samples
from ncsn_core.fast_sampling import (
    FAST_SAMPLERS,
    churn_gamma,
    edm_stochastic,
    euler,
    heun,
    nfe_per_sample,
    predictor_corrector,
)
from ncsn_core.inpainting import KnownPixels, make_mask
from ncsn_core.model import NCSNv2
from ncsn_core.schedules import edm_schedule, ladder_schedule, make_schedule
from ncsn_core.sigma_score import LadderScore, OffLadderSigmaError, continuous_score, supports_any_sigma
from ncsn_core.toy import GaussianMixture, lower_left_fraction

MEAN, STD = 0.3, 0.5
SIGMA_MAX, SIGMA_MIN = 10.0, 0.02


def gaussian_score(x, sigma):
    """Exact score of N(MEAN, STD^2 I) perturbed by N(0, sigma^2 I); ``sigma`` ``(B,)``."""
    return -(x - MEAN) / (STD**2 + sigma.view(-1, *([1] * (x.ndim - 1))) ** 2)


def ode_error(sampler, steps):
    """Largest error of ``sampler`` against the exact probability-flow ODE solution of the Gaussian:
    ``x(sigma) - MEAN`` scales with ``sqrt(STD^2 + sigma^2)``."""
    g = torch.Generator().manual_seed(0)
    x0 = MEAN + math.sqrt(STD**2 + SIGMA_MAX**2) * torch.randn(500, 3, generator=g, dtype=torch.float64)
    exact = MEAN + (x0 - MEAN) * math.sqrt(STD**2 + SIGMA_MIN**2) / math.sqrt(STD**2 + SIGMA_MAX**2)
    schedule = edm_schedule(steps, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    return (sampler(gaussian_score, x0, schedule, final_denoise=False) - exact).abs().max().item()


@pytest.mark.parametrize("sampler, order", [(euler, 1), (heun, 2)])
def test_ode_error_falls_at_the_samplers_order(sampler, order):
    errors = [ode_error(sampler, n) for n in (20, 40, 80)]
    rates = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(rate == pytest.approx(order, abs=0.35) for rate in rates), (errors, rates)
    assert errors[-1] < (0.04 if order == 1 else 0.002)


def test_heun_ends_on_the_gaussian_with_the_final_denoise():
    g = torch.Generator().manual_seed(1)
    x0 = initial_samples((4000, 4), kind="gaussian", sigma_max=SIGMA_MAX, low=2 * MEAN - 1, high=1,
                         generator=g).double()
    x = heun(gaussian_score, x0, edm_schedule(18, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64))
    # Tweedie at sigma_min shrinks the variance to STD^4 / (STD^2 + sigma_min^2), a hair under STD^2.
    assert x.mean().item() == pytest.approx(MEAN, abs=0.03)
    assert x.var().item() == pytest.approx(STD**4 / (STD**2 + SIGMA_MIN**2), rel=0.06)


@pytest.mark.parametrize("method", sorted(FAST_SAMPLERS))
def test_samplers_are_deterministic_per_seed_whatever_the_batch(method):
    """A sample depends only on its seed: the same seed alone or inside another batch gives
    the same sample (per-sample noise, no batch statistics)."""
    schedule = edm_schedule(8, SIGMA_MIN, SIGMA_MAX)
    sampler = FAST_SAMPLERS[method]

    def run(seeds):
        noise = PerSampleNoise(seeds, (5,))
        x0 = initial_samples((len(seeds), 5), kind="gaussian", sigma_max=SIGMA_MAX, noise=noise)
        return sampler(gaussian_score, x0, schedule, noise=noise)

    both = run([3, 11])
    assert torch.equal(run([11, 3]), both.flip(0))
    torch.testing.assert_close(run([11])[0], both[1], rtol=1e-6, atol=1e-6)
    assert torch.equal(run([3, 11]), both)


def test_nfe_counts_every_network_evaluation():
    schedule = edm_schedule(6, SIGMA_MIN, SIGMA_MAX)
    cases = [("euler", {}), ("heun", {}), ("edm", {"churn": 5.0}), ("pc", {"corrector_steps": 2}),
             ("pc", {"corrector_steps": 1, "predictor": "heun"}), ("pc", {"corrector_steps": 0, "predictor": "euler"})]
    for method, settings in cases:
        for final_denoise in (True, False):
            calls = []

            def counting(x, sigma):
                calls.append(1)
                return gaussian_score(x, sigma)

            FAST_SAMPLERS[method](counting, torch.zeros(2, 3), schedule, final_denoise=final_denoise,
                                  generator=torch.Generator().manual_seed(0), **settings)
            expected = nfe_per_sample(method, 6, final_denoise=final_denoise,
                                      corrector_steps=settings.get("corrector_steps", 0),
                                      predictor=settings.get("predictor", "reverse_diffusion"))
            assert len(calls) == expected, (method, final_denoise)
    assert nfe_per_sample("heun", 18, final_denoise=True) == 35  # EDM's CIFAR-10 budget
    assert nfe_per_sample("pc", 11, final_denoise=True, corrector_steps=1, predictor="heun") == 31


def toy_start(n, sigma_max, g):
    """Draws from the toy mixture perturbed at ``sigma_max`` (the prior the samplers assume)."""
    mix = GaussianMixture()
    return mix.sample(n, generator=g).double() + sigma_max * torch.randn(n, 2, generator=g, dtype=torch.float64)


def toy_score(x, sigma):
    return GaussianMixture().score(x, sigma)


def test_predictor_corrector_recovers_the_toy_mode_weights():
    """The paper's toy (1/5 N((-5,-5), I) + 4/5 N((5,5), I)), the original code's ladder 20 -> 1 with
    30 levels: the predictor-corrector puts 1/5 of the samples in the lower-left mode."""
    g = torch.Generator().manual_seed(2)
    sigmas = geometric_sigmas(20.0, 1.0, 30, dtype=torch.float64)
    x = predictor_corrector(toy_score, toy_start(6000, 20.0, g), sigmas, corrector_steps=1, snr=0.16, generator=g)
    assert lower_left_fraction(x) == pytest.approx(0.2, abs=0.03)


@pytest.mark.parametrize("method", ["heun", "edm"])
def test_edm_samplers_recover_the_toy_mode_weights_in_35_evaluations(method):
    g = torch.Generator().manual_seed(3)
    schedule = edm_schedule(18, 0.05, 20.0, dtype=torch.float64)
    settings = {"churn": 10.0, "generator": g} if method == "edm" else {}
    x = FAST_SAMPLERS[method](toy_score, toy_start(6000, 20.0, g), schedule, **settings)
    assert lower_left_fraction(x) == pytest.approx(0.2, abs=0.03)


def test_churn_follows_edm():
    assert churn_gamma(1.0, 10, 0.0) == 0.0
    assert churn_gamma(1.0, 10, 2.0) == pytest.approx(0.2)
    assert churn_gamma(1.0, 10, 80.0) == pytest.approx(math.sqrt(2) - 1)
    assert churn_gamma(1.0, 10, 2.0, churn_min=2.0) == 0.0
    assert churn_gamma(1.0, 10, 2.0, churn_max=0.5) == 0.0


def test_schedules():
    ladder = geometric_sigmas(4.81, 0.08, 11)
    assert torch.equal(ladder_schedule(ladder), ladder)
    sub = ladder_schedule(ladder, 6)
    assert sub.tolist() == ladder[[0, 2, 4, 6, 8, 10]].tolist()
    assert ladder_schedule(ladder, 1).tolist() == [ladder[-1].item()]
    edm = edm_schedule(18, 0.002, 80.0, dtype=torch.float64)
    assert edm[0].item() == pytest.approx(80.0) and edm[-1].item() == pytest.approx(0.002)
    assert torch.all(edm[:-1] > edm[1:])
    assert make_schedule("edm", ladder, 5).shape == (5,)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("cosine", ladder)


def test_a_ladder_network_is_evaluated_only_on_its_ladder():
    ladder = geometric_sigmas(4.0, 0.1, 5)
    seen = []

    def level_score(x, level):
        seen.append(int(level[0]))
        return torch.zeros_like(x)

    score = LadderScore(level_score, ladder)
    assert not supports_any_sigma(score)
    heun(score, torch.zeros(2, 3), ladder_schedule(ladder, 3))
    assert set(seen) <= {0, 2, 4}
    with pytest.raises(OffLadderSigmaError, match="not one of the 5 noise levels"):
        heun(score, torch.zeros(2, 3), edm_schedule(4, 0.1, 4.0))
    with pytest.raises(ValueError, match="churn"):
        edm_stochastic(score, torch.zeros(2, 3), ladder, churn=5.0)


def test_ncsnv2_has_a_score_at_any_sigma():
    """NCSNv2's s(x, sigma) = s(x) / sigma: on the ladder the continuous score equals the network's,
    and off it the score scales with 1 / sigma."""
    torch.manual_seed(0)
    ladder = geometric_sigmas(3.0, 0.1, 6)
    model = NCSNv2(1, ladder, ngf=4).eval()
    score = continuous_score(model, ladder)
    assert supports_any_sigma(score)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        for level in (0, 3, 5):
            on_ladder = model(x, torch.full((2,), level))
            torch.testing.assert_close(score(x, ladder[level].repeat(2)), on_ladder, rtol=1e-5, atol=1e-6)
        half = score(x, torch.full((2,), 0.5))
        torch.testing.assert_close(score(x, torch.full((2,), 0.25)), 2 * half, rtol=1e-5, atol=1e-6)


def test_pc_with_an_ode_predictor_and_no_corrector_is_that_ode_sampler():
    schedule = edm_schedule(7, SIGMA_MIN, SIGMA_MAX)
    x0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(4)) * SIGMA_MAX
    for predictor, sampler in (("heun", heun), ("euler", euler)):
        pc = predictor_corrector(gaussian_score, x0, schedule, corrector_steps=0, predictor=predictor,
                                 generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(pc, sampler(gaussian_score, x0, schedule), rtol=1e-6, atol=1e-6)


INPAINT_CASES = [("euler", {}), ("heun", {}), ("edm", {"churn": 5.0}), ("pc", {"corrector_steps": 2}),
                 ("pc", {"corrector_steps": 1, "predictor": "heun"})]


@pytest.mark.parametrize("method, settings", INPAINT_CASES)
@pytest.mark.parametrize("final_denoise", [True, False])
def test_inpainting_holds_the_known_pixels_at_generations_cost(method, settings, final_denoise):
    """With ``constrain=KnownPixels(...)`` every fast sampler ends on the known pixels exactly,
    makes as many network evaluations as generating, and sees known + sigma z at every sigma."""
    schedule = edm_schedule(6, SIGMA_MIN, SIGMA_MAX)
    g = torch.Generator().manual_seed(2)
    known = torch.rand(3, 1, 4, 4, generator=g)
    mask = make_mask("half", known.shape)
    seen = []

    def counting(x, sigma):
        seen.append((float(sigma[0]), x[mask].clone()))
        return gaussian_score(x, sigma)

    noise = PerSampleNoise([5, 6, 7], (1, 4, 4))
    x0 = initial_samples(known.shape, kind="gaussian", sigma_max=SIGMA_MAX, noise=noise)
    out = FAST_SAMPLERS[method](counting, x0, schedule, final_denoise=final_denoise, noise=noise,
                                constrain=KnownPixels(known, mask), **settings)
    assert torch.equal(out[mask], known[mask])
    assert not torch.equal(out[~mask], x0[~mask])
    assert len(seen) == nfe_per_sample(method, 6, final_denoise=final_denoise,
                                       corrector_steps=settings.get("corrector_steps", 0),
                                       predictor=settings.get("predictor", "reverse_diffusion"))
    # Evaluated on schedule points (not Heun's inner Euler point, not EDM's raised sigma), the
    # known pixels hold known + sigma z: their spread around `known` follows sigma.
    for sigma, pixels in seen:
        if any(abs(sigma - float(s)) < 1e-6 * sigma for s in schedule) and sigma > 1:
            spread = ((pixels - known[mask]) / sigma).std().item()
            assert 0.5 < spread < 1.6, (sigma, spread)


@pytest.mark.parametrize("method, settings", INPAINT_CASES)
def test_inpainting_depends_on_the_seed_only_and_generation_draws_as_before(method, settings):
    """An inpainting is the same alone or inside another batch (its draws come from its own
    seed's stream), and sampling without ``constrain`` draws exactly what it drew before the
    hook existed: the constrained run's extra draws come after every draw of the step."""
    schedule = edm_schedule(6, SIGMA_MIN, SIGMA_MAX)
    known = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    mask = make_mask("center", known.shape)

    def run(seeds, rows, constrain=True):
        noise = PerSampleNoise(seeds, (1, 4, 4))
        x0 = initial_samples((len(seeds), 1, 4, 4), kind="gaussian", sigma_max=SIGMA_MAX, noise=noise)
        hook = KnownPixels(known[rows], mask[rows]) if constrain else None
        return FAST_SAMPLERS[method](gaussian_score, x0, schedule, noise=noise, constrain=hook, **settings)

    both = run([4, 9], [0, 2])
    torch.testing.assert_close(run([9], [2])[0], both[1], rtol=1e-6, atol=1e-6)
    assert torch.equal(run([9, 4], [2, 0]), both.flip(0))
    # Generation: a hook-free run equals one whose only draws are the step's own (a recorded source).
    plain = run([4, 9], [0, 2], constrain=False)
    drawn = []

    class Recording(PerSampleNoise):
        def normal(self, steps):
            drawn.append(steps)
            return super().normal(steps)

    noise = Recording([4, 9], (1, 4, 4))
    x0 = initial_samples((2, 1, 4, 4), kind="gaussian", sigma_max=SIGMA_MAX, noise=noise)
    again = FAST_SAMPLERS[method](gaussian_score, x0, schedule, noise=noise, **settings)
    assert torch.equal(plain, again)
    expected_blocks = {"euler": 0, "heun": 0, "edm": 5, "pc": 5}[method]  # churn / predictor-corrector blocks
    assert len(drawn) == 1 + expected_blocks, "the initial draw and the step's own blocks, nothing for a hook"


def test_known_pixels_check_the_mask():
    with pytest.raises(TypeError, match="bool"):
        KnownPixels(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    hook = KnownPixels(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="differ in shape"):
        hook(torch.zeros(2, 1, 2, 2), 0.0, None)


def test_inpainting_by_replacement_needs_correctors_to_reach_the_conditional():
    """Two pixels, correlation 0.8: knowing the first, the second is N(mu + 0.8 (a - mu), 0.36 STD^2).
    With exact scores, replacement plus Langevin correctors lands there; the deterministic
    Heun sampler with the same replacement stops about half-way (the unknown pixel stops moving
    while the known one is still noisy), which is why the stochastic samplers inpaint better."""
    rho = 0.8
    cov = STD**2 * torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)

    def score(x, sigma):
        inverse = torch.linalg.inv(cov + sigma[0] ** 2 * torch.eye(2, dtype=torch.float64))
        return -(x - MEAN) @ inverse

    n, a = 4000, MEAN + 0.4
    known = torch.full((n, 2), a, dtype=torch.float64)
    mask = torch.tensor([True, False]).expand(n, 2)
    schedule = edm_schedule(30, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    target = MEAN + rho * (a - MEAN)

    def inpaint(sampler, **settings):
        g = torch.Generator().manual_seed(5)
        x0 = MEAN + SIGMA_MAX * torch.randn(n, 2, generator=g, dtype=torch.float64)
        out = sampler(score, x0, schedule, generator=g, constrain=KnownPixels(known, mask), **settings)
        assert torch.equal(out[:, 0], known[:, 0])
        return out[:, 1]

    filled = inpaint(predictor_corrector, corrector_steps=10, snr=0.5)
    assert filled.mean().item() == pytest.approx(target, abs=0.03)
    assert filled.var().item() == pytest.approx((1 - rho**2) * STD**2, rel=0.15)
    ode = inpaint(heun).mean().item()
    assert MEAN < ode < target - 0.1, ode
