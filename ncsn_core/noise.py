"""Noise ladders: the sequence of noise levels sigma_1 > sigma_2 > ... > sigma_L.

Conventions used throughout ``ncsn_core``:

* A ladder is a 1-D float tensor of shape ``(L,)``, **descending** (index 0 is the
  largest noise level, sigma_1 in the paper).
* The network is conditioned on the *index* ``i`` into this tensor (0-based), never on
  the value of sigma itself, exactly as the paper's conditional instance normalisation.
* Units are those of the data: for images, pixel values in ``[0, 1]``.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "geometric_sigmas",
    "suggest_sigma_max",
    "validate_sigmas",
    "ladder_overlap",
    "ladder_ratio",
    "suggest_num_levels",
    "stationary_variance_gap",
    "suggest_step_size",
]


def geometric_sigmas(
    sigma_max: float,
    sigma_min: float,
    num_levels: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Geometric ladder ``sigma_max = sigma_1 > ... > sigma_L = sigma_min``.

    The ratio ``sigma_{i+1} / sigma_i`` is constant. The paper's image setting is
    ``geometric_sigmas(1.0, 0.01, 10)``; its toy setting ``geometric_sigmas(10.0, 0.1, 10)``.

    Returns:
        Tensor of shape ``(num_levels,)``, descending.
    """
    if not (isinstance(num_levels, int) and num_levels >= 1):
        raise ValueError(f"num_levels must be a positive integer, got {num_levels!r}")
    if not (sigma_max > 0 and sigma_min > 0):
        raise ValueError(f"sigmas must be positive, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    if num_levels == 1:
        if sigma_max != sigma_min:
            raise ValueError("a single-level ladder needs sigma_max == sigma_min")
        return torch.tensor([float(sigma_max)], dtype=dtype, device=device)
    if not sigma_max > sigma_min:
        raise ValueError(f"sigma_max ({sigma_max}) must exceed sigma_min ({sigma_min})")
    # Computed in float64 then cast, so the endpoints are exact to the target dtype.
    exponents = torch.linspace(math.log(sigma_max), math.log(sigma_min), num_levels, dtype=torch.float64)
    return torch.exp(exponents).to(dtype=dtype, device=device)


def validate_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Check that ``sigmas`` is a non-empty, positive, strictly descending 1-D tensor."""
    if sigmas.ndim != 1 or sigmas.numel() == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D tensor, got shape {tuple(sigmas.shape)}")
    if not torch.all(sigmas > 0):
        raise ValueError("sigmas must be positive")
    if sigmas.numel() > 1 and not torch.all(sigmas[:-1] > sigmas[1:]):
        raise ValueError("sigmas must be strictly descending (sigma_1 is the largest)")
    return sigmas


@torch.no_grad()
def suggest_sigma_max(data: torch.Tensor, *, max_points: int = 4096, generator: torch.Generator | None = None) -> float:
    """Suggest sigma_1 as the largest pairwise Euclidean distance between training points.

    This is the rule of thumb from Song & Ermon's follow-up analysis ("sigma_1 = maximum
    pairwise distance between datapoints"): the largest noise level should be big enough
    for Langevin dynamics to move between any two modes of the data.

    Args:
        data: ``(N, ...)`` training points (images are flattened per point).
        max_points: above this many points a random subset of that size is used, because the
            exact computation is O(N^2).
        generator: RNG for the subset.

    Returns:
        The largest pairwise distance, as a Python float (data units).
    """
    points = data.reshape(data.shape[0], -1).to(torch.float64)
    if points.shape[0] < 2:
        raise ValueError("need at least two data points to suggest sigma_max")
    if points.shape[0] > max_points:
        idx = torch.randperm(points.shape[0], generator=generator)[:max_points]
        points = points[idx]
    largest = 0.0
    for chunk in points.split(1024):
        largest = max(largest, torch.cdist(chunk, points).max().item())
    return largest


# --------------------------------------------------------------------------- NCSNv2's rules
# Song & Ermon, "Improved Techniques for Training Score-Based Generative Models" (NeurIPS
# 2020), techniques 2 and 4. D is the data dimension (e.g. 64 for 8x8 grey images).


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def ladder_overlap(gamma: float, dimension: int) -> float:
    """``Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma)``: how much the
    shells of two neighbouring noise levels overlap for a ratio ``gamma = sigma_{i-1}/sigma_i``
    (technique 2 asks for about 0.5)."""
    root = math.sqrt(2.0 * dimension) * (gamma - 1.0)
    return _normal_cdf(root + 3.0 * gamma) - _normal_cdf(root - 3.0 * gamma)


def ladder_ratio(dimension: int, target: float = 0.5) -> float:
    """The ratio ``gamma > 1`` whose :func:`ladder_overlap` equals ``target`` (bisection)."""
    lo, hi = 1.0 + 1e-9, 10.0
    if ladder_overlap(hi, dimension) > target:
        return hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if ladder_overlap(mid, dimension) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def suggest_num_levels(sigma_max: float, sigma_min: float, dimension: int, target: float = 0.5) -> int:
    """L for a geometric ladder from ``sigma_max`` to ``sigma_min`` whose ratio keeps
    :func:`ladder_overlap` at about ``target`` (rounded to the nearest L, at least 2)."""
    gamma = ladder_ratio(dimension, target)
    return max(2, int(round(1 + math.log(sigma_max / sigma_min) / math.log(gamma))))


def stationary_variance_gap(step: float, sigma_min: float, gamma: float, steps_per_level: int) -> float:
    """Technique 4's expression for a per-step size ``step`` in the *original code's*
    convention (``x + step * s + sqrt(2 step) z`` at the last level)::

        (1 - step/sL^2)^(2T) (gamma^2 - 2 step / (sL^2 - sL^2 (1 - step/sL^2)^2))
            + 2 step / (sL^2 - sL^2 (1 - step/sL^2)^2)

    It is the variance, relative to sigma_L^2, that T steps leave when they start from a
    sample of the previous level; 1 is ideal and the expression stays above 1."""
    s2 = sigma_min**2
    shrink = 1.0 - step / s2
    stationary = 2.0 * step / (s2 - s2 * shrink**2)
    return shrink ** (2 * steps_per_level) * (gamma**2 - stationary) + stationary


def suggest_step_size(sigmas: torch.Tensor | list[float], steps_per_level: int) -> float:
    """Technique 4: the step size that brings :func:`stationary_variance_gap` closest to 1 for
    this ladder and T, **in this project's convention** (Algorithm 1, ``alpha = eps
    sigma_i^2 / sigma_L^2`` with ``x + alpha/2 s + sqrt(alpha) z``), i.e. twice the value in
    the original code's ``x + eps s + sqrt(2 eps) z`` form. The expression decreases towards
    its minimum as the step grows, so the minimiser is found on a fine log grid, refined."""
    values = [float(v) for v in (sigmas.tolist() if torch.is_tensor(sigmas) else sigmas)]
    if len(values) < 2:
        raise ValueError("technique 4 needs a ladder of at least two levels")
    sigma_min, gamma = values[-1], values[-2] / values[-1]
    upper = sigma_min**2 * (1 - 1e-9)
    grid = [upper * 10 ** (-k / 200) for k in range(0, 2400)]
    best = min(grid, key=lambda e: abs(stationary_variance_gap(e, sigma_min, gamma, steps_per_level) - 1.0))
    lo, hi = best / 1.03, min(best * 1.03, upper)
    for _ in range(100):  # golden-section refinement of |gap - 1|
        a, b = lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618
        fa = abs(stationary_variance_gap(a, sigma_min, gamma, steps_per_level) - 1.0)
        fb = abs(stationary_variance_gap(b, sigma_min, gamma, steps_per_level) - 1.0)
        lo, hi = (lo, b) if fa < fb else (a, hi)
    return 2.0 * (lo + hi) / 2
