"""Sigma schedules for the fast samplers: the noise levels a sampler evaluates the score at.

A *schedule* is a 1-D float tensor ``(N,)`` of positive sigmas, strictly descending,
in the units of the data (pixels in ``[0, 1]`` for images), like a noise ladder
(:mod:`ncsn_core.noise`). It is what a sampler walks along; the *ladder* is what a network
was trained on. The samplers end with a step to sigma = 0 (the Tweedie denoise) when asked
to; that 0 is never part of the schedule.

* :func:`ladder_schedule`: the trained ladder, or ``n`` of its levels evenly spaced in
  index (first and last always kept). The only schedules an NCSN network can follow: it
  is conditioned on the ladder index, so only those sigmas exist for it.
* :func:`edm_schedule`: Karras et al. (2022), eq. 5, ``rho = 7``: dense near sigma_min,
  for networks that can be evaluated at any sigma (NCSNv2, analytic scores).
"""

from __future__ import annotations

import torch

from .noise import validate_sigmas

__all__ = ["SCHEDULES", "ladder_schedule", "edm_schedule", "make_schedule"]

SCHEDULES = ("ladder", "edm")


def ladder_schedule(ladder: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """``n`` levels of ``ladder`` ``(L,)`` evenly spaced in index, always including the first
    and the last (``n`` None or ``n >= L``: the whole ladder). Returns ``(min(n, L),)``."""
    return _ladder_subset(validate_sigmas(ladder), n)


def _ladder_subset(ladder: torch.Tensor, n: int | None) -> torch.Tensor:
    """:func:`ladder_schedule` of a ladder already checked."""
    size = ladder.numel()
    if n is None or n >= size:
        return ladder.clone()
    if n < 1:
        raise ValueError(f"a schedule needs at least one sigma, got n={n}")
    if n == 1:
        return ladder[-1:].clone()
    index = torch.round(torch.linspace(0, size - 1, n, dtype=torch.float64)).long()
    return ladder[index.to(ladder.device)].clone()


def edm_schedule(n: int, sigma_min: float, sigma_max: float, *, rho: float = 7.0,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """EDM's schedule ``sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho``,
    i = 0..n-1 (``sigma_0 = sigma_max``, ``sigma_{n-1} = sigma_min``). Returns ``(n,)``."""
    if n < 1:
        raise ValueError(f"a schedule needs at least one sigma, got n={n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho}")
    if n == 1:
        return torch.tensor([float(sigma_min)], dtype=dtype, device=device)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + ramp * (lo - hi)) ** rho).to(dtype=dtype, device=device)


def make_schedule(kind: str, ladder: torch.Tensor, n: int | None = None, *, rho: float = 7.0) -> torch.Tensor:
    """The schedule ``kind`` (``"ladder"`` or ``"edm"``) over the range of ``ladder``, with ``n``
    sigmas (None: as many as the ladder has levels)."""
    ladder = validate_sigmas(ladder)
    if kind == "ladder":
        return _ladder_subset(ladder, n)
    if kind == "edm":
        return edm_schedule(n or ladder.numel(), float(ladder[-1]), float(ladder[0]), rho=rho,
                            dtype=ladder.dtype, device=ladder.device)
    raise ValueError(f"unknown schedule {kind!r} (expected one of {', '.join(SCHEDULES)})")
