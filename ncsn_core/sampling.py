"""Langevin samplers (paper Section 2.2 and Algorithm 1).

Every sampler is a pure function with the same shape of signature::

    sampler(score_fn, x, sigmas, *, <settings>, generator=None, noise=None, callback=None) -> x

* ``score_fn(x, level) -> score``: any score function, a trained network or an analytic
  score, with ``level`` a ``(B,)`` int64 tensor of indices into ``sigmas``.
* ``x``: the initial samples ``(B, ...)`` (see :func:`initial_samples`); never modified.
* ``sigmas``: the noise ladder ``(L,)``, descending (:mod:`ncsn_core.noise`).
* ``generator`` / ``noise``: where randomness comes from (:mod:`ncsn_core.noise_sources`);
  ``noise`` wins when both are given.
* ``callback(info)``: called after every step with a dict holding ``x`` (do not modify it),
  ``level``, ``step`` and ``sigma``; use it to draw intermediate samples (paper Fig. 4).

Step convention (the paper's, Algorithm 1). One Langevin step with step size alpha is::

    x <- x + alpha / 2 * s(x) + sqrt(alpha) * z,        z ~ N(0, I)

and annealed Langevin uses ``alpha_i = eps * sigma_i**2 / sigma_L**2`` at level i. The
original NCSN code writes ``x + a * s + sqrt(2a) * z`` with ``a = 2e-5 * (sigma_i/sigma_L)**2``,
which is this convention with ``eps = 4e-5``: the default here and in the paper configs, so
that samples match the published ones (the paper's text says 2e-5, half the step the code
took).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .noise import validate_sigmas
from .noise_sources import GeneratorNoise, NoiseSource, noise_source_for

__all__ = [
    "ScoreFn",
    "initial_samples",
    "langevin",
    "annealed_langevin",
    "annealed_step_sizes",
    "clamp_",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def initial_samples(
    shape: tuple[int, ...],
    *,
    kind: str = "uniform",
    sigma_max: float = 1.0,
    low: float = 0.0,
    high: float = 1.0,
    generator: torch.Generator | None = None,
    noise: NoiseSource | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Initial samples for the samplers.

    ``kind="uniform"`` (the paper's choice): U[low, high]. ``kind="gaussian"``:
    N((low + high) / 2, sigma_max^2), i.e. a draw from (nearly) the noisiest level's prior.
    """
    if noise is None:
        noise = GeneratorNoise(shape, generator, device=device)
    if kind == "uniform":
        return low + (high - low) * noise.uniform()
    if kind == "gaussian":
        return (low + high) / 2 + sigma_max * noise.normal(1)[0]
    raise ValueError(f"unknown initial sample kind {kind!r} (expected 'uniform' or 'gaussian')")


def annealed_step_sizes(sigmas: torch.Tensor, eps: float) -> list[float]:
    """``alpha_i = eps * sigma_i^2 / sigma_L^2`` for every level (Python floats)."""
    s = [float(v) for v in validate_sigmas(sigmas).tolist()]
    return [eps * (si / s[-1]) ** 2 for si in s]


def clamp_(x: torch.Tensor, clamp: tuple[float, float] | None) -> None:
    """Clamp ``x`` in place to ``clamp = (lo, hi)``; do nothing when ``clamp`` is None."""
    if clamp is not None:
        x.clamp_(clamp[0], clamp[1])


@torch.inference_mode()
def langevin(
    score_fn: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    steps: int = 1000,
    step_size: float = 0.1,
    level: int = -1,
    clamp: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    noise_chunk: int = 100,
) -> torch.Tensor:
    """Plain (non-annealed) Langevin dynamics at one noise level.

    ``steps`` updates ``x <- x + step_size/2 * s(x, level) + sqrt(step_size) * z`` (the
    paper's convention) at ``sigmas[level]`` (default: the smallest level). Noise is drawn
    ``noise_chunk`` steps at a time.
    """
    sigmas = validate_sigmas(sigmas)
    level = level % sigmas.numel()
    source = noise_source_for(x, generator, noise)
    x = x.clone()
    labels = torch.full((x.shape[0],), level, dtype=torch.long, device=x.device)
    drift, diffusion = step_size / 2, math.sqrt(step_size)
    sigma = float(sigmas[level])
    done = 0
    while done < steps:
        block = source.normal(min(noise_chunk, steps - done))
        for z in block:
            x.add_(score_fn(x, labels), alpha=drift).add_(z, alpha=diffusion)
            clamp_(x, clamp)
            if callback is not None:
                callback({"x": x, "level": level, "step": done, "sigma": sigma})
            done += 1
    return x


@torch.inference_mode()
def annealed_langevin(
    score_fn: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    steps_per_level: int = 100,
    eps: float = 4e-5,
    final_denoise: bool = False,
    clamp: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Annealed Langevin dynamics (Algorithm 1).

    For each level i = 1..L (largest sigma first), ``steps_per_level`` steps of
    ``x <- x + alpha_i/2 * s(x, i) + sqrt(alpha_i) * z`` with
    ``alpha_i = eps * sigma_i^2 / sigma_L^2``. With ``final_denoise`` a last Tweedie step
    ``x <- x + sigma_L^2 * s(x, L)`` removes the remaining sigma_L noise (NCSNv2; off in the
    original NCSN). ``clamp=(lo, hi)`` clamps after every step.

    Returns:
        Samples with the shape, dtype and device of ``x``.
    """
    if steps_per_level < 1:
        raise ValueError(f"steps_per_level must be >= 1, got {steps_per_level}")
    alphas = annealed_step_sizes(sigmas, eps)
    source = noise_source_for(x, generator, noise)
    x = x.clone()
    batch = x.shape[0]
    all_labels = torch.arange(len(alphas), device=x.device).repeat_interleave(batch).view(len(alphas), batch)
    sigma_values = [float(s) for s in sigmas.tolist()]  # one host read, not one per step
    for level, alpha in enumerate(alphas):
        labels = all_labels[level]
        drift, diffusion = alpha / 2, math.sqrt(alpha)
        block = source.normal(steps_per_level)
        for step in range(steps_per_level):
            x.add_(score_fn(x, labels), alpha=drift).add_(block[step], alpha=diffusion)
            clamp_(x, clamp)
            if callback is not None:
                callback({"x": x, "level": level, "step": step, "sigma": sigma_values[level]})
    if final_denoise:
        sigma_min = sigma_values[-1]
        x.add_(score_fn(x, all_labels[-1]), alpha=sigma_min**2)
        clamp_(x, clamp)
    return x
