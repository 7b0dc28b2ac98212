"""Inpainting: with annealed Langevin dynamics (paper Appendix B.3; NCSNv2's variant), with
any fast sampler (:class:`KnownPixels`), and masks.

Mask convention: a boolean tensor broadcastable to the images ``(B, C, H, W)`` where
``True`` marks a *known* (observed) pixel and ``False`` a pixel to fill in.

Both ways hold the known pixels by replacement: whenever the state is at noise level sigma,
its known pixels are set to ``known + sigma z`` (a sample of the known image's noisy version
at that level), and the unknown ones follow the sampler; at the end the known pixels are
``known`` exactly. Annealed Langevin draws one z per level (or per step); a fast sampler
calls :class:`KnownPixels` after every update (score_sde's ``controllable_generation.py``
does the same for its predictor-corrector sampler), so z is fresh each time.
"""

from __future__ import annotations

import math

import torch

from .noise_sources import NoiseSource, noise_source_for
from .sampling import Callback, ScoreFn, annealed_step_sizes, clamp_

__all__ = ["annealed_langevin_inpaint", "KnownPixels", "make_mask", "MASK_KINDS"]

MASK_KINDS = ("half", "center", "random")


@torch.inference_mode()
def annealed_langevin_inpaint(
    score_fn: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    known: torch.Tensor,
    mask: torch.Tensor,
    steps_per_level: int = 100,
    eps: float = 4e-5,
    renoise: str = "level",
    clamp: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Fill in the unknown pixels of ``known`` with annealed Langevin dynamics.

    The unknown pixels follow annealed Langevin dynamics with the same step convention as
    :func:`ncsn_core.sampling.annealed_langevin`, while the known pixels are held at
    ``known + sigma_i * z``:

    * ``renoise="level"`` (NCSN, paper Appendix B.3): one draw of z per level, re-imposed
      after every step;
    * ``renoise="step"`` (NCSNv2's code): a fresh draw before every step.

    The result holds the known pixels exactly as given.

    Args:
        x: initial samples ``(B, C, H, W)`` (only its unknown pixels matter).
        known: the reference images ``(B, C, H, W)``.
        mask: bool, broadcastable to ``known``; True = known pixel.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if known.shape != x.shape:
        raise ValueError(f"known images {tuple(known.shape)} and samples {tuple(x.shape)} differ in shape")
    if renoise not in ("level", "step"):
        raise ValueError(f"renoise must be 'level' or 'step', got {renoise!r}")
    mask = mask.to(x.device).expand_as(x)
    alphas = annealed_step_sizes(sigmas, eps)
    source = noise_source_for(x, generator, noise)
    x = torch.where(mask, known, x)
    batch = x.shape[0]
    per_step = renoise == "step"
    for level, alpha in enumerate(alphas):
        sigma = float(sigmas[level])
        labels = torch.full((batch,), level, dtype=torch.long, device=x.device)
        # Noise for the level: the known pixels' draw(s), then one draw per Langevin step.
        draws = steps_per_level if per_step else 1
        block = source.normal(draws + steps_per_level)
        corrupted = known + sigma * block[0]
        x = torch.where(mask, corrupted, x)
        drift, diffusion = alpha / 2, math.sqrt(alpha)
        for step in range(steps_per_level):
            if per_step:
                x = torch.where(mask, known + sigma * block[step], x)
            x.add_(score_fn(x, labels), alpha=drift).add_(block[draws + step], alpha=diffusion)
            clamp_(x, clamp)
            if not per_step:
                x = torch.where(mask, corrupted, x)
            if callback is not None:
                callback({"x": x, "level": level, "step": step, "sigma": sigma})
    return torch.where(mask, known, x)


class KnownPixels:
    """Inpainting for the fast samplers: their ``constrain`` argument
    (:data:`ncsn_core.fast_sampling.Constrain`), e.g. ``heun(score_fn, x, sigmas,
    constrain=KnownPixels(known, mask))``.

    Called with the state ``x`` ``(B, C, H, W)`` at noise level ``sigma`` and the sampler's
    noise source: for ``sigma > 0`` it draws one ``z`` ``(B, C, H, W)`` from the source (the
    whole image's shape, so every sample's draws stay in its own stream) and sets
    ``x[mask] = known[mask] + sigma z[mask]``; for ``sigma = 0`` (the end) it sets
    ``x[mask] = known[mask]`` and draws nothing. Network evaluations: none.

    Args:
        known: the reference images ``(B, C, H, W)``, pixels in ``[0, 1]``.
        mask: bool, broadcastable to ``known``; True = known pixel.
    """

    def __init__(self, known: torch.Tensor, mask: torch.Tensor):
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
        self.known = known
        self.mask = mask.to(known.device).expand_as(known)

    def __call__(self, x: torch.Tensor, sigma: float, noise: NoiseSource | None) -> None:
        if x.shape != self.known.shape:
            raise ValueError(f"known images {tuple(self.known.shape)} and samples {tuple(x.shape)} differ in shape")
        target = self.known if sigma == 0 else self.known + sigma * noise.normal(1)[0]
        x.copy_(torch.where(self.mask, target, x))


def make_mask(
    kind: str,
    shape: tuple[int, int, int, int],
    *,
    generator: torch.Generator | None = None,
    keep_fraction: float = 0.5,
) -> torch.Tensor:
    """A boolean known-pixel mask of ``shape = (B, C, H, W)``.

    * ``half``: the left half is known, the right half is filled in (paper Fig. 6).
    * ``center``: a centred square of half the side is unknown.
    * ``random``: each pixel (shared across channels) known with probability ``keep_fraction``.
    """
    b, c, h, w = shape
    if kind == "half":
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[..., : w // 2] = True
        return mask
    if kind == "center":
        mask = torch.ones(shape, dtype=torch.bool)
        top, left = h // 4, w // 4
        mask[..., top : top + (h + 1) // 2, left : left + (w + 1) // 2] = False
        return mask
    if kind == "random":
        pixels = torch.rand((b, 1, h, w), generator=generator) < keep_fraction
        return pixels.expand(shape).clone()
    raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS} or a mask file")
