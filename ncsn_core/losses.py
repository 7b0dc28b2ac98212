"""Score-matching losses for a noise-conditional score network (paper Section 4.2).

Both losses take the same arguments and return a :class:`LossOutput`:

    loss_fn(model, x, sigmas, *, anneal_power=2.0, generator=None) -> LossOutput

* ``model(x_noisy, level) -> score`` with ``level`` ``(B,)`` int64 indices into ``sigmas``.
* ``x``: a batch of clean data ``(B, ...)``.
* One random level per example (uniform over the L levels), as the paper trains; or, for a
  network conditioned on sigma's value (``model.kind`` mlp, unet), ``levels`` given as a float
  ``(B,)`` tensor of sigmas (EDM's log-normal draw, ``training.sigma_draw: lognormal``): the
  model then gets the sigmas themselves, and the output's ``levels`` are the nearest ladder
  levels, for logging the loss per level.
* Each example's loss is weighted by ``lambda(sigma) = sigma ** anneal_power``; the paper
  uses ``anneal_power = 2`` so that every level contributes on the same scale. With
  ``sigma_data`` given instead, by EDM's weighting (Karras et al. 2022) expressed on the
  score: ``lambda(sigma) = sigma^2 (sigma^2 + sigma_data^2) / sigma_data^2``, which is
  ``1 / c_out(sigma)^2`` on the denoiser ``D = x + sigma^2 s`` (see
  :class:`ncsn_core.model.PreconditionedMLP`).

:func:`loss_options` gives the keyword arguments a config asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["LossOutput", "dsm_loss", "ssm_loss", "LOSSES", "loss_options", "loss_weight", "per_level_means",
           "nearest_levels"]

ScoreModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class LossOutput:
    """``loss``: scalar to minimise (mean over the batch of weighted per-example losses).

    ``per_example``: ``(B,)`` weighted per-example losses (detached); ``levels``: ``(B,)``
    the level each example used. Use :func:`per_level_means` for loss-per-sigma logging.
    """

    loss: torch.Tensor
    per_example: torch.Tensor
    levels: torch.Tensor


def per_level_means(per_example: torch.Tensor, levels: torch.Tensor, num_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of per-example losses at each level: two ``(L,)`` tensors.

    Returning sums and counts (not means) lets callers accumulate over steps and all-reduce
    across workers before dividing.
    """
    sums = torch.zeros(num_levels, dtype=per_example.dtype, device=per_example.device)
    counts = torch.zeros(num_levels, dtype=per_example.dtype, device=per_example.device)
    sums.index_add_(0, levels, per_example.detach())
    counts.index_add_(0, levels, torch.ones_like(per_example))
    return sums, counts


def _sample_levels(x: torch.Tensor, num_levels: int, generator: torch.Generator | None) -> torch.Tensor:
    if generator is not None and generator.device != x.device:
        return torch.randint(0, num_levels, (x.shape[0],), generator=generator).to(x.device)
    return torch.randint(0, num_levels, (x.shape[0],), generator=generator, device=x.device)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is not None and generator.device != x.device:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _per_level_sigma(x: torch.Tensor, sigmas: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``sigmas[levels]`` reshaped to broadcast over ``x``: ``(B, 1, 1, ...)``."""
    return sigmas.to(x.device, x.dtype)[levels].view(-1, *([1] * (x.ndim - 1)))


def nearest_levels(sigma: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``(B,)`` int64: the ladder level nearest (in log sigma) to each of the ``(B,)`` sigmas."""
    distance = (sigma.float().log().view(-1, 1) - sigmas.to(sigma.device).float().log().view(1, -1)).abs()
    return distance.argmin(dim=1)


def loss_weight(sigma: torch.Tensor, anneal_power: float = 2.0, sigma_data: float | None = None) -> torch.Tensor:
    """``lambda(sigma)`` elementwise: ``sigma ** anneal_power``, or EDM's weighting when
    ``sigma_data`` is given (see the module docstring)."""
    if sigma_data is None:
        return sigma**anneal_power
    return sigma**2 * (sigma**2 + sigma_data**2) / sigma_data**2


def loss_options(config) -> dict:
    """The loss keyword arguments of a :class:`ncsn_core.config.Config`: ``anneal_power``,
    ``sigma_data`` under ``training.loss_weighting: edm``, ``n_projections`` for SSM."""
    tc = config.training
    options: dict = {"anneal_power": tc.anneal_power}
    if tc.loss_weighting == "edm":
        options["sigma_data"] = config.model.sigma_data
    if tc.loss == "ssm":
        options["n_projections"] = tc.n_projections
    return options


def dsm_loss(
    model: ScoreModel,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    anneal_power: float = 2.0,
    generator: torch.Generator | None = None,
    levels: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    sigma_data: float | None = None,
) -> LossOutput:
    """Denoising score matching (paper eq. 5-6).

    ``l(sigma) = 1/2 E || s(x~, sigma) + (x~ - x) / sigma^2 ||^2`` with ``x~ = x + sigma z``,
    summed over dimensions, weighted by :func:`loss_weight` (``sigma ** anneal_power``, or EDM's
    with ``sigma_data``), averaged over the batch.
    ``levels`` ``(B,)`` fixes each example's level (int64 indices into ``sigmas``, or float
    sigmas for a network conditioned on sigma's value) and ``noise`` (shaped like ``x``) its
    ``z``, instead of drawing them from ``generator``.
    """
    if levels is None:
        levels = _sample_levels(x, sigmas.numel(), generator)
    if levels.is_floating_point():  # the sigmas themselves
        sigma = levels.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        logged = nearest_levels(levels, sigmas)
    else:
        sigma = _per_level_sigma(x, sigmas, levels)
        logged = levels
    z = _randn_like(x, generator) if noise is None else noise.to(x.dtype)
    x_noisy = x + sigma * z
    target = -z / sigma  # = -(x~ - x) / sigma^2
    score = model(x_noisy, levels)
    sq = ((score - target) ** 2).flatten(1).sum(1)
    per_example = 0.5 * sq * loss_weight(sigma.flatten(), anneal_power, sigma_data)
    return LossOutput(per_example.mean(), per_example.detach(), logged)


def ssm_loss(
    model: ScoreModel,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    anneal_power: float = 2.0,
    generator: torch.Generator | None = None,
    levels: torch.Tensor | None = None,
    n_projections: int = 1,
    projection: str = "gaussian",
    sigma_data: float | None = None,
) -> LossOutput:
    """Sliced score matching on noise-perturbed data (paper eq. 4, variance-reduced form).

    Per example, on ``x~ = x + sigma z`` and random projections ``v`` (Gaussian or
    Rademacher, ``E[v v^T] = I``)::

        v^T (d s / d x~) v + 1/2 ||s(x~)||^2

    The Jacobian-vector product is one extra backward pass (``create_graph=True``). The
    ``1/2 ||s||^2`` term is computed exactly rather than as ``1/2 (v^T s)^2`` (the "VR"
    variant). Weighted by :func:`loss_weight` like :func:`dsm_loss`.
    """
    if projection not in ("gaussian", "rademacher"):
        raise ValueError(f"projection must be 'gaussian' or 'rademacher', got {projection!r}")
    if levels is None:
        levels = _sample_levels(x, sigmas.numel(), generator)
    sigma = _per_level_sigma(x, sigmas, levels)
    x_noisy = (x + sigma * _randn_like(x, generator)).repeat(n_projections, *([1] * (x.ndim - 1)))
    x_noisy.requires_grad_(True)
    rep_levels = levels.repeat(n_projections)
    v = _randn_like(x_noisy, generator)
    if projection == "rademacher":
        v = v.sign()
    with torch.enable_grad():
        score = model(x_noisy, rep_levels)
        (grad_v,) = torch.autograd.grad((score * v).sum(), x_noisy, create_graph=True)
    trace_term = (grad_v * v).flatten(1).sum(1)
    norm_term = 0.5 * (score**2).flatten(1).sum(1)
    per_example = (trace_term + norm_term).view(n_projections, -1).mean(0) * loss_weight(sigma.flatten(), anneal_power,
                                                                                        sigma_data)
    return LossOutput(per_example.mean(), per_example.detach(), levels)


LOSSES = {"dsm": dsm_loss, "ssm": ssm_loss}
