"""Score-matching losses against values with a known answer.

For data x ~ N(0, I_d) perturbed with sigma, the perturbed density is N(0, (1 + sigma^2) I)
and the optimal score is s*(x~) = -x~ / (1 + sigma^2). Plugging s* into either loss gives,
with the paper's sigma^2 weighting: DSM = d / (2 (1 + sigma^2)) (per dimension
E(s* + z/sigma)^2 = 1 / (sigma^2 (1 + sigma^2))) and SSM = -sigma^2 d / (2 (1 + sigma^2)).
"""

import pytest
import torch

from ncsn_core import ToyScoreMLP, dsm_loss, geometric_sigmas, per_level_means, ssm_loss


def optimal_gaussian_score(sigmas):
    def score(x, level):
        var = 1.0 + sigmas[level] ** 2
        return -x / var.view(-1, *([1] * (x.ndim - 1)))

    return score


def test_dsm_of_a_zero_score_is_half_the_noise_energy():
    sigmas = geometric_sigmas(1.0, 0.1, 3)
    x = torch.rand(5, 1, 4, 4)
    g = torch.Generator().manual_seed(3)
    out = dsm_loss(lambda x, lvl: torch.zeros_like(x), x, sigmas, generator=g)
    # Replay the same draws: levels, then z.
    g.manual_seed(3)
    levels = torch.randint(0, 3, (5,), generator=g)
    z = torch.randn(x.shape, generator=g)
    expected = 0.5 * (z**2).flatten(1).sum(1)  # ||z/sigma||^2 * sigma^2 / 2
    assert torch.equal(out.levels, levels)
    assert torch.allclose(out.per_example, expected, rtol=1e-5)
    assert out.loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    # The same draws given from outside (as the step-addressed training batches do) give the same loss.
    given = dsm_loss(lambda x, lvl: torch.zeros_like(x), x, sigmas, levels=levels, noise=z)
    assert torch.equal(given.per_example, out.per_example)


@pytest.mark.parametrize("loss_fn", [dsm_loss, ssm_loss])
def test_losses_of_the_optimal_gaussian_score_match_the_closed_form(loss_fn):
    d, n = 4, 200_000
    sigmas = torch.tensor([2.0, 0.5])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    for level in (0, 1):
        levels = torch.full((n,), level)
        out = loss_fn(optimal_gaussian_score(sigmas), x, sigmas, generator=g, levels=levels)
        s2 = sigmas[level].item() ** 2
        expected = d / (2 * (1 + s2)) if loss_fn is dsm_loss else -s2 * d / (2 * (1 + s2))
        assert out.loss.item() == pytest.approx(expected, abs=0.02 * d)


@pytest.mark.parametrize("loss_fn", [dsm_loss, ssm_loss])
def test_the_optimal_score_beats_a_wrong_one(loss_fn):
    sigmas = torch.tensor([1.0])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100_000, 3, generator=g)
    best = loss_fn(optimal_gaussian_score(sigmas), x, sigmas, generator=g).loss.item()
    worse = loss_fn(lambda y, lvl: -0.8 * y, x, sigmas, generator=g).loss.item()
    assert best < worse - 0.05


def test_anneal_power_weights_by_sigma():
    sigmas = torch.tensor([2.0])
    x = torch.zeros(4, 3)
    zero = lambda y, lvl: torch.zeros_like(y)  # noqa: E731
    a = dsm_loss(zero, x, sigmas, generator=torch.Generator().manual_seed(0), anneal_power=2.0).loss
    b = dsm_loss(zero, x, sigmas, generator=torch.Generator().manual_seed(0), anneal_power=0.0).loss
    assert a.item() == pytest.approx(4.0 * b.item(), rel=1e-6)


def test_per_level_statistics_sum_and_count():
    per_example = torch.tensor([1.0, 2.0, 3.0, 5.0])
    levels = torch.tensor([0, 2, 2, 0])
    sums, counts = per_level_means(per_example, levels, 3)
    assert sums.tolist() == [6.0, 0.0, 5.0] and counts.tolist() == [2.0, 0.0, 2.0]


@pytest.mark.parametrize("loss_name", ["dsm", "ssm"])
def test_a_small_network_trained_on_gaussian_data_learns_the_optimal_score(loss_name):
    torch.manual_seed(0)
    sigmas = torch.tensor([1.0, 0.5, 0.25])
    model = ToyScoreMLP(dim=2, num_levels=3, hidden=64, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    loss_fn = dsm_loss if loss_name == "dsm" else ssm_loss
    for _ in range(1500):
        x = torch.randn(256, 2, generator=g)
        out = loss_fn(model, x, sigmas, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    probe = torch.randn(500, 2, generator=g)
    with torch.no_grad():
        for level, sigma in enumerate(sigmas.tolist()):
            probe_noisy = probe * (1 + sigma**2) ** 0.5
            est = model(probe_noisy, torch.full((500,), level))
            true = -probe_noisy / (1 + sigma**2)
            rel = (est - true).norm() / true.norm()
            assert rel < 0.2, f"level {level}: relative score error {rel:.3f}"


def test_ssm_rejects_an_unknown_projection():
    with pytest.raises(ValueError, match="projection"):
        ssm_loss(lambda x, l: x, torch.zeros(2, 2), torch.tensor([1.0]), projection="sphere")


def test_ssm_with_rademacher_projections_matches_the_closed_form():
    d, n = 3, 100_000
    sigmas = torch.tensor([1.0])
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, d, generator=g)
    out = ssm_loss(optimal_gaussian_score(sigmas), x, sigmas, generator=g, projection="rademacher", anneal_power=0.0)
    assert out.loss.item() == pytest.approx(-d / 4, abs=0.03)
