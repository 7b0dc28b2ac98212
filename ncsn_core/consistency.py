"""Consistency models distilled from a score model (Song, Dhariwal, Chen & Sutskever, ICML 2023):
one network evaluation per sample, a few more to refine it.

The teacher is a score network of this project that takes any sigma (NCSNv2, or a network with
EDM's preconditioning: ``model.kind`` ncsnv2, mlp, unet). Its probability-flow ODE
``dx/dsigma = (x - D(x, sigma)) / sigma`` (:mod:`ncsn_core.fast_sampling`) carries a noisy
point ``x_sigma`` to its origin. The student, a *consistency function* ``f(x, sigma)``, maps
every point of a trajectory to that origin, in EDM's VE parametrisation (the CM paper's
Appendix C) with the boundary ``epsilon`` = ``sigma_min``::

    c_skip(sigma) = sd^2 / ((sigma - eps)^2 + sd^2)        c_out(sigma) = (sigma - eps) sd / sqrt(sigma^2 + sd^2)
    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma)

so ``c_skip(eps) = 1`` and ``c_out(eps) = 0``: ``f(x, eps) = x`` exactly, in floating point too.
``F`` is the teacher architecture's output in EDM's parametrisation (for a network with EDM's
preconditioning, its raw network; for NCSNv2, ``(D - c_skip^EDM x) / c_out^EDM`` with
``D = x + sigma^2 s``), initialised from the teacher, so the student starts as the teacher's
denoiser with a boundary.

Discretisation (:func:`distillation_sigmas`): ``eps`` below the teacher's smallest level, then
``N`` sigmas of EDM's rho-schedule over the teacher's range ``[sigma_L, sigma_1]``, ascending:
``s_0 = eps < s_1 = sigma_L < ... < s_N = sigma_1``. With N = 18 and rho = 7 the N sigmas are
exactly those of the digits default's own sampler. One teacher step per interval
(:func:`teacher_step`): Heun (EDM Algorithm 1) from ``s_{n+1}`` to ``s_n``, except the last
interval, ``s_1 -> eps``, an Euler step: the teacher's own final Tweedie denoise, which the
sampler takes from ``sigma_L``.

Consistency distillation (CM Algorithm 2; :class:`ConsistencyDistillationLoss`): draw x, an
interval n (uniform over 0..N-1) and z; ``x_hi = x + s_{n+1} z``; ``x_lo`` = the teacher's step
from ``x_hi`` down to ``s_n``; minimise ``lambda(n) d(f_theta(x_hi, s_{n+1}), f_target(x_lo, s_n))``.
The target is the *stop-gradient student* (``f_target = f_theta`` without gradient), as improved
consistency training does (Song & Dhariwal 2023, Section 3.2: an EMA target biases the
gradient of the consistency-matching objective, and with the distance below the EMA is not
needed; it also leaves the checkpoint nothing extra to carry, so resumption stays exact). The
student's own EMA (``training.ema_decay``) is kept for sampling, as for a score model.
``d``: iCT's pseudo-Huber ``sqrt(|a - b|^2 + c^2) - c`` (LPIPS cannot be downloaded everywhere),
``c = 0.00027 sqrt(D)``: iCT's ``0.00054 sqrt(D)`` for pixels in [-1, 1], halved for pixels in
[0, 1]; or the squared distance. ``lambda``: iCT's ``1 / (s_{n+1} - s_n)``, or 1.

Sampling (CM Algorithm 1, :func:`consistency_sampling`): ``x = f(x_K, sigma_K)`` from the prior
at the first sigma; for each next sigma: ``x = f(x + sqrt(sigma^2 - eps^2) z, sigma)``. Network
evaluations per sample = the number of sigmas.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn

from .losses import LossOutput
from .noise import validate_sigmas
from .noise_sources import NoiseSource, noise_source_for
from .schedules import edm_schedule
from .wrappers import unwrap_model

__all__ = ["ConsistencyFunction", "teacher_denoiser", "distillation_sigmas", "teacher_step", "pseudo_huber",
           "default_huber_c", "ConsistencyDistillationLoss", "consistency_sampling", "DISTANCES", "WEIGHTINGS"]

DISTANCES = ("pseudo_huber", "l2")
WEIGHTINGS = ("ict", "uniform")
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B, ...), sigma (B,)) -> (B, ...)


def _column(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` sigmas shaped to broadcast over ``x`` ``(B, ...)``."""
    return sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


def _edm_raw(network: nn.Module, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """``F(x, sigma)``: the network's output in EDM's parametrisation (see the module docstring)."""
    if hasattr(network, "raw"):  # EDM's preconditioning: its own raw network
        s = _column(sigma, x)
        return network.raw((s**2 + network.sigma_data**2).rsqrt() * (x - 0.5), sigma.to(x.dtype).log() / 4)
    s = _column(sigma, x)
    var = s**2 + sigma_data**2
    c_skip, c_out = sigma_data**2 / var, s * sigma_data / var.sqrt()
    return (teacher_denoiser(network)(x, sigma) - c_skip * x) / c_out


def teacher_denoiser(network: nn.Module) -> Denoiser:
    """``D(x, sigma)`` of a score network that takes any sigma: its own ``denoise`` (EDM's
    preconditioning), or ``x + sigma^2 s(x, sigma)`` with NCSNv2's ``s(x, sigma) = s(x, 0) sigma_0 / sigma``.
    A network conditioned on ladder indices (NCSN) has no score between its levels: refused."""
    if hasattr(network, "denoise"):
        return network.denoise
    if getattr(network, "any_sigma", None) == "scaled":
        sigma_0 = float(network.sigmas[0])

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            level = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            s = _column(sigma, x)
            return x + s**2 * network(x, level) * (sigma_0 / s)

        return denoise
    raise ValueError(f"{type(network).__name__} is conditioned on the index of its trained noise levels and has no "
                     "score between them; consistency distillation needs a network that takes any sigma "
                     "(model.kind ncsnv2, mlp or unet)")


class ConsistencyFunction(nn.Module):
    """The student: ``f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma)`` around ``network``
    (an architecture of the teacher's kind), with ``f(x, sigma_min) = x`` exactly.

    ``forward(x, level)`` returns ``f``, the estimate of the trajectory's origin, ``(B, C, H, W)``
    pixels in [0, 1] (not a score): ``level`` is a ``(B,)`` float tensor of sigmas, or int64
    indices into the network's ladder. Samplers reach it through :func:`consistency_sampling`.
    """

    any_sigma = "consistency"

    def __init__(self, network: nn.Module, sigma_min: float, sigma_data: float):
        super().__init__()
        teacher_denoiser(network)  # refuses a ladder-conditioned network by name
        if not 0 < sigma_min < float(network.sigmas[-1]):
            raise ValueError(f"sigma_min {sigma_min} must be positive and below the network's smallest level "
                             f"{float(network.sigmas[-1]):.4g}")
        self.network, self.sigma_min, self.sigma_data = network, float(sigma_min), float(sigma_data)

    @property
    def sigmas(self) -> torch.Tensor:
        """The teacher's noise ladder ``(L,)`` (the range the student was distilled over)."""
        return self.network.sigmas

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        sigma = level if level.is_floating_point() else self.network.sigmas[level]
        sigma = sigma.to(x.dtype).reshape(x.shape[0])
        s, eps, sd = _column(sigma, x), self.sigma_min, self.sigma_data
        c_skip = sd**2 / ((s - eps) ** 2 + sd**2)
        c_out = (s - eps) * sd / (s**2 + sd**2).sqrt()
        return c_skip * x + c_out * _edm_raw(self.network, x, sigma, sd)


def distillation_sigmas(levels: int, sigma_min_teacher: float, sigma_max: float, epsilon: float,
                        rho: float = 7.0) -> torch.Tensor:
    """``(levels + 1,)`` float64, ascending: ``epsilon``, then EDM's rho-schedule of ``levels``
    sigmas from ``sigma_min_teacher`` to ``sigma_max`` (see the module docstring)."""
    if levels < 2:
        raise ValueError(f"the discretisation needs at least 2 levels, got {levels}")
    if not 0 < epsilon < sigma_min_teacher < sigma_max:
        raise ValueError(f"need 0 < epsilon < sigma_min < sigma_max, got {epsilon}, {sigma_min_teacher}, {sigma_max}")
    schedule = edm_schedule(levels, sigma_min_teacher, sigma_max, rho=rho, dtype=torch.float64).flip(0)
    return torch.cat([torch.tensor([float(epsilon)], dtype=torch.float64), schedule])


@torch.no_grad()
def teacher_step(denoise: Denoiser, x_hi: torch.Tensor, s_hi: torch.Tensor, s_lo: torch.Tensor,
                 heun: torch.Tensor) -> torch.Tensor:
    """One step of the teacher's probability-flow ODE per example, from ``s_hi`` down to ``s_lo``
    (both ``(B,)``): Euler, and Heun's correction where ``heun`` ``(B,)`` bool is set (two
    network evaluations on the batch; one if no example needs Heun)."""
    hi, lo = _column(s_hi, x_hi), _column(s_lo, x_hi)
    slope = (x_hi - denoise(x_hi, s_hi.to(x_hi.dtype))) / hi
    euler = x_hi + (lo - hi) * slope
    if not bool(heun.any()):
        return euler
    slope_lo = (euler - denoise(euler, s_lo.to(x_hi.dtype))) / lo
    corrected = x_hi + (lo - hi) * (slope + slope_lo) / 2
    return torch.where(heun.view(-1, *([1] * (x_hi.ndim - 1))), corrected, euler)


def default_huber_c(dimension: int) -> float:
    """iCT's pseudo-Huber constant for pixels in [0, 1]: ``0.00054 sqrt(D) / 2``."""
    return 0.00027 * math.sqrt(dimension)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """``(B,)``: ``sqrt(|a - b|^2 + c^2) - c`` per example (summed over every other dimension)."""
    return ((a - b).flatten(1).pow(2).sum(1) + c**2).sqrt() - c


class ConsistencyDistillationLoss:
    """Consistency distillation's loss, called as the score losses are:
    ``loss(student, x, sigmas, *, levels, noise) -> LossOutput``.

    ``x``: clean images ``(B, C, H, W)`` in [0, 1]; ``levels`` ``(B,)`` int64: each example's
    interval n in ``0 .. N-1``; ``noise`` ``(B, C, H, W)``: its z (both drawn from ``generator``
    when not given). ``sigmas`` (the teacher's
    ladder, passed by the training step) is not used: the discretisation is this object's.
    The output's ``levels`` are the intervals, for the loss per interval.

    Args:
        teacher: the teacher network (not trained; its ``any_sigma`` must be kind).
        discretisation: :func:`distillation_sigmas` ``(N + 1,)``.
        distance: ``pseudo_huber`` (with ``huber_c``) or ``l2``; weighting: ``ict`` or ``uniform``.
    """

    def __init__(self, teacher: nn.Module, discretisation: torch.Tensor, *, distance: str = "pseudo_huber",
                 huber_c: float | None = None, weighting: str = "ict"):
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.denoise = teacher_denoiser(self.teacher)
        self.sigmas = discretisation
        self.distance, self.huber_c, self.weighting = distance, huber_c, weighting

    @property
    def intervals(self) -> int:
        """N: the intervals an example's ``levels`` index."""
        return self.sigmas.numel() - 1

    def __call__(self, student: nn.Module, x: torch.Tensor, sigmas: Any = None, *, levels: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 **_: Any) -> LossOutput:
        if levels is None:  # drawn here when the caller does not (the streaming data path)
            levels = torch.randint(0, self.intervals, (x.shape[0],), generator=generator).to(x.device)
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        grid = self.sigmas.to(device=x.device)
        s_lo, s_hi = grid[levels].to(x.dtype), grid[levels + 1].to(x.dtype)
        x_hi = x + _column(s_hi, x) * noise.to(x.dtype)
        x_lo = teacher_step(self.denoise, x_hi, s_hi, s_lo, heun=levels > 0)
        with torch.no_grad():  # the stop-gradient target: the student's own weights
            target = unwrap_model(student)(x_lo, s_lo)
        prediction = student(x_hi, s_hi)
        if self.distance == "l2":
            distance = (prediction - target).flatten(1).pow(2).sum(1)
        else:
            c = self.huber_c if self.huber_c is not None else default_huber_c(x[0].numel())
            distance = pseudo_huber(prediction, target, c)
        weight = 1.0 / (s_hi - s_lo) if self.weighting == "ict" else torch.ones_like(s_hi)
        per_example = weight * distance
        return LossOutput(per_example.mean(), per_example.detach(), levels)


@torch.inference_mode()
def consistency_sampling(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                         sigmas: torch.Tensor, *, sigma_min: float, generator: torch.Generator | None = None,
                         noise: NoiseSource | None = None, callback: Callable[[dict[str, Any]], None] | None = None,
                         constrain: Callable[[torch.Tensor, float, NoiseSource | None], None] | None = None
                         ) -> torch.Tensor:
    """Multistep consistency sampling (CM Algorithm 1): ``x = f(x, sigma_0)`` from ``x`` ``(B, ...)``
    drawn at ``sigmas[0]``, then for each next sigma ``x = f(x + sqrt(sigma^2 - sigma_min^2) z, sigma)``.

    ``f(x, sigma (B,)) -> (B, ...)``: the consistency function. ``sigmas``: ``(K,)`` descending, each
    above ``sigma_min``; K network evaluations. Noise: one ``(B, ...)`` draw per re-noising, from
    ``noise`` or ``generator``, so a sample depends only on its own seed with
    :class:`~ncsn_core.PerSampleNoise`. ``constrain(x, sigma, noise)``, if given, is called in place
    on every state at noise level ``sigma`` before ``f`` sees it, and with sigma 0 on the result
    (inpainting's :class:`~ncsn_core.inpainting.KnownPixels`, as the other fast samplers call it);
    ``callback(info)`` after each evaluation with ``x``, ``step``, ``sigma`` and ``nfe``.
    """
    levels = [float(s) for s in validate_sigmas(sigmas).tolist()]
    if not levels[-1] > sigma_min:
        raise ValueError(f"every sigma must exceed sigma_min {sigma_min}; the schedule ends at {levels[-1]}")
    source = noise_source_for(x, generator, noise) if len(levels) > 1 or constrain is not None else None
    x = x.clone()
    for step, sigma in enumerate(levels):
        if step > 0:
            x = x + math.sqrt(sigma**2 - sigma_min**2) * source.normal(1)[0]
        if constrain is not None:
            constrain(x, sigma, source)
        x = f(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device))
        if callback is not None:
            callback({"x": x, "step": step, "sigma": sigma, "nfe": step + 1})
    if constrain is not None:
        constrain(x, 0.0, source)
    return x
