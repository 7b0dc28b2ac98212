"""Consistency models (ncsn_core.consistency): the boundary condition exactly, the discretisation,
the teacher's ODE step, the distillation loss, multistep sampling's cost and determinism."""

from __future__ import annotations

import math

import pytest
import torch

from ncsn_core import PerSampleNoise, PreconditionedMLP, PreconditionedUNet, geometric_sigmas
from ncsn_core.consistency import (ConsistencyDistillationLoss, ConsistencyFunction, consistency_sampling,
                                   default_huber_c, distillation_sigmas, pseudo_huber, teacher_denoiser,
                                   teacher_step)
from ncsn_core.model import NCSN, NCSNv2
from ncsn_core.schedules import edm_schedule

LADDER = geometric_sigmas(4.81, 0.08, 14)


def unet() -> PreconditionedUNet:
    torch.manual_seed(0)
    return PreconditionedUNet((1, 8, 8), LADDER, width=4, hidden=16, groups=2, sigma_data=0.37)


@pytest.mark.parametrize("make", [unet, lambda: PreconditionedMLP((1, 8, 8), LADDER, width=16, depth=2, sigma_data=0.37),
                                  lambda: NCSNv2(1, LADDER, ngf=4)], ids=["unet", "mlp", "ncsnv2"])
def test_the_boundary_condition_holds_exactly(make):
    """f(x, sigma_min) = x bit for bit, whatever the network says (c_skip = 1, c_out = 0 there),
    and away from the boundary f is not x."""
    student = ConsistencyFunction(make(), sigma_min=0.002, sigma_data=0.37).eval()
    x = torch.rand(5, 1, 8, 8) * 3 - 1
    with torch.no_grad():
        assert torch.equal(student(x, torch.full((5,), 0.002)), x)
        assert not torch.allclose(student(x, torch.full((5,), 0.5)), x)


def test_a_ladder_conditioned_network_is_refused_by_name():
    with pytest.raises(ValueError, match="index of its trained noise levels"):
        ConsistencyFunction(NCSN(1, 14, ngf=4), sigma_min=0.002, sigma_data=0.5)
    with pytest.raises(ValueError, match="below the network's smallest level"):
        ConsistencyFunction(unet(), sigma_min=0.1, sigma_data=0.37)


def test_the_student_starts_as_the_teachers_denoiser_away_from_the_boundary():
    """F is the teacher's raw network, so for sigma >> sigma_min the student's f is the
    teacher's D up to c_skip/c_out's shift by sigma_min (small at large sigma)."""
    teacher = unet().eval()
    student = ConsistencyFunction(unet(), sigma_min=0.002, sigma_data=0.37).eval()
    student.network.load_state_dict(teacher.state_dict())
    x = torch.rand(4, 1, 8, 8)
    sigma = torch.full((4,), 3.0)
    with torch.no_grad():
        torch.testing.assert_close(student(x, sigma), teacher.denoise(x, sigma), rtol=2e-3, atol=2e-3)
    ncsnv2 = NCSNv2(1, LADDER, ngf=4).eval()
    d = teacher_denoiser(ncsnv2)
    with torch.no_grad():  # NCSNv2: D = x + sigma^2 s(x, sigma) with s = s(x, 0) sigma_0 / sigma
        expected = x + 3.0**2 * ncsnv2(x, torch.zeros(4, dtype=torch.long)) * (float(LADDER[0]) / 3.0)
        torch.testing.assert_close(d(x, sigma), expected)


def test_the_discretisation_is_the_teachers_schedule_below_a_boundary():
    grid = distillation_sigmas(18, 0.08, 4.81, 0.002, rho=7)
    assert grid.shape == (19,) and float(grid[0]) == 0.002
    assert bool((grid[1:] > grid[:-1]).all())
    torch.testing.assert_close(grid[1:].flip(0), edm_schedule(18, 0.08, 4.81, rho=7, dtype=torch.float64))
    with pytest.raises(ValueError):
        distillation_sigmas(18, 0.08, 4.81, 0.1)


def test_the_teachers_step_is_heun_where_asked_and_euler_elsewhere():
    """On the exact denoiser of a Gaussian N(m, s^2 I) (D = (s^2 x + sigma^2 m) / (s^2 + sigma^2)),
    whose probability-flow ODE solution is known, halving the step cuts a Heun step's error
    about 8-fold (third order locally) and an Euler step's about 4-fold (second order)."""
    m, s = 0.5, 0.3

    def denoise(x, sigma):
        sig = sigma.view(-1, 1, 1, 1)
        return (s**2 * x + sig**2 * m) / (s**2 + sig**2)

    x = (torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(0)) * 4).double()

    def errors(h: float) -> tuple[float, float]:
        hi, lo = torch.full((3,), 1.0, dtype=torch.float64), torch.full((3,), 1.0 - h, dtype=torch.float64)
        exact = m + (x - m) * math.sqrt(s**2 + (1.0 - h) ** 2) / math.sqrt(s**2 + 1.0)
        heun = teacher_step(denoise, x, hi, lo, heun=torch.ones(3, dtype=torch.bool))
        euler = teacher_step(denoise, x, hi, lo, heun=torch.zeros(3, dtype=torch.bool))
        mixed = teacher_step(denoise, x, hi, lo, heun=torch.tensor([True, False, True]))
        assert torch.equal(mixed[0], heun[0]) and torch.equal(mixed[1], euler[1])
        return float((heun - exact).abs().max()), float((euler - exact).abs().max())

    (heun_h, euler_h), (heun_half, euler_half) = errors(0.2), errors(0.1)
    assert heun_h / heun_half > 6 and 3 < euler_h / euler_half < 5
    assert heun_half < euler_half


def test_the_loss_is_zero_for_a_student_that_is_consistent_with_its_teacher():
    """For the Gaussian's exact consistency function (its ODE solution at sigma_min, here a
    fixed-point model), the distillation loss is small; the pseudo-Huber distance and its constant."""
    a, b = torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    c = default_huber_c(64)
    assert c == pytest.approx(0.00027 * 8)
    torch.testing.assert_close(pseudo_huber(a, b, c), torch.full((2,), math.sqrt(64 + c**2) - c))
    teacher = unet().eval()
    student = ConsistencyFunction(unet(), 0.002, 0.37)
    student.network.load_state_dict(teacher.state_dict())
    grid = distillation_sigmas(6, 0.08, 4.81, 0.002).float()
    loss = ConsistencyDistillationLoss(teacher, grid)
    x = torch.rand(8, 1, 8, 8)
    out = loss(student, x, levels=torch.arange(8) % 6, noise=torch.randn(8, 1, 8, 8))
    assert out.per_example.shape == (8,) and torch.isfinite(out.loss) and out.loss.requires_grad
    assert out.levels.tolist() == (torch.arange(8) % 6).tolist()
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters()), "the teacher is not trained"
    assert student.network.inp.weight.grad is not None


def test_multistep_sampling_costs_k_evaluations_and_depends_only_on_the_seed():
    student = ConsistencyFunction(unet(), 0.002, 0.37).eval()
    calls = []

    def f(x, sigma):
        calls.append(x.shape[0])
        return student(x, sigma)

    sigmas = torch.tensor([4.81, 0.83, 0.2])
    x0 = 0.5 + 4.81 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = consistency_sampling(f, x0, sigmas, sigma_min=0.002, noise=PerSampleNoise([7, 8, 9, 10], (1, 8, 8)))
    assert len(calls) == 3
    alone = consistency_sampling(student, x0[2:3], sigmas, sigma_min=0.002, noise=PerSampleNoise([9], (1, 8, 8)))
    torch.testing.assert_close(out[2:3], alone, rtol=1e-5, atol=1e-5)
    one = consistency_sampling(student, x0, sigmas[:1], sigma_min=0.002, noise=PerSampleNoise([7, 8, 9, 10], (1, 8, 8)))
    with torch.no_grad():
        torch.testing.assert_close(one, student(x0, torch.full((4,), 4.81)))
