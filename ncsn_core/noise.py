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

__all__ = ["geometric_sigmas", "suggest_sigma_max", "validate_sigmas"]


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
