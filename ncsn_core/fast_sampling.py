"""Fast samplers for variance-exploding score models: tens of network evaluations, not hundreds.

NCSN's noise ladder is a discretised variance-exploding (VE) process (score_sde's SMLD):
``x_sigma = x_0 + sigma z``. Its probability-flow ODE (score_sde eq. 13; EDM eq. 1 with
s(t) = 1, sigma(t) = t) is::

    dx/dsigma = -sigma * s(x, sigma) = (x - D(x; sigma)) / sigma,   D(x; sigma) = x + sigma^2 s(x, sigma)

with ``D`` the denoiser (Tweedie's formula). Every sampler here has the signature::

    sampler(score_fn, x, sigmas, *, final_denoise=True, <settings>, generator=None, noise=None, callback=None,
            constrain=None) -> x

* ``score_fn(x, sigma) -> score`` with ``sigma`` a ``(B,)`` float tensor
  (:mod:`ncsn_core.sigma_score`: a ladder network through :class:`~ncsn_core.sigma_score.LadderScore`,
  NCSNv2 through :func:`~ncsn_core.sigma_score.continuous_score`, or an analytic score).
* ``x``: the initial samples ``(B, ...)``, drawn at ``sigmas[0]`` (e.g.
  ``initial_samples(kind="gaussian", sigma_max=sigmas[0])``); never modified.
* ``sigmas``: the schedule ``(N,)``, positive and strictly descending (:mod:`ncsn_core.schedules`).
* ``final_denoise``: end with a step from ``sigmas[-1]`` to sigma = 0, which for every
  sampler here is the Tweedie denoise ``x + sigma_N^2 s(x, sigma_N)`` (one evaluation).
  Without it the samples keep noise of ``sigmas[-1]``.
* ``generator`` / ``noise``: where randomness comes from (:mod:`ncsn_core.noise_sources`),
  drawn one step at a time in a fixed order, so a sample depends only on its own seed.
* ``callback(info)``: after every step, ``info`` holds ``x`` (do not modify it), ``step``
  (0-based index into ``sigmas``), ``sigma`` (the level just left) and ``nfe`` (network
  evaluations so far, per sample).
* ``constrain(x, sigma, noise)`` (a :data:`Constrain`, e.g. inpainting's
  :class:`ncsn_core.inpainting.KnownPixels`): called whenever the state reaches a noise
  level, to hold part of it to data: on the initial samples with ``sigmas[0]``, after every
  update that ends on a schedule point with that sigma (each Euler or Heun step; the
  predictor and each corrector step of ``pc``), and once at the very end with ``sigma = 0``
  (after the final denoise, if any). It changes ``x`` in place and may draw from ``noise``,
  the sampler's own noise source, after the step's own draws, so a sample still depends only
  on its seed. Two intermediate states are not constrained: the point EDM's churn raises to
  ``sigma_hat`` (the churn noise already brings constrained pixels to ``sigma_hat``'s level)
  and the Euler point inside a Heun step (it only supplies the second slope). Without
  ``constrain`` nothing extra is drawn: the samples are the ones the sampler always made.
  A new sampler takes it the same way: multistep consistency sampling, ``x = f(x +
  sqrt(sigma^2 - smin^2) z, sigma)``, calls ``constrain(state, sigma, noise)`` on each noised
  state (the first one ``smax z``) just before evaluating ``f`` at sigma, and
  ``constrain(x, 0.0, noise)`` on the result. The hook evaluates no network, so inpainting
  costs the NFE below.

Network evaluations per sample (NFE) for a schedule of N sigmas, ``fd`` = 1 with
``final_denoise`` else 0 (:func:`nfe_per_sample` computes them):

=================================  ==============================
``euler``                          ``N - 1 + fd``
``heun`` / ``edm`` (EDM Alg. 1/2)  ``2 (N - 1) + fd``
``pc`` (C corrector steps)         ``(N - 1) (p + C) + fd``, p = 2 (heun predictor) or 1
=================================  ==============================
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .noise import validate_sigmas
from .noise_sources import NoiseSource, noise_source_for
from .sigma_score import SigmaScoreFn, supports_any_sigma

__all__ = ["FAST_SAMPLERS", "PREDICTORS", "Constrain", "euler", "heun", "edm_stochastic", "predictor_corrector",
           "nfe_per_sample", "churn_gamma"]

Callback = Callable[[dict[str, Any]], None]
# constrain(x (B, ...), sigma the state is at (0 at the end), the sampler's noise source): changes x in place
Constrain = Callable[[torch.Tensor, float, NoiseSource], None]


def _sigma_vector(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)


def _slope(score_fn: SigmaScoreFn, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``dx/dsigma = -sigma * s(x, sigma)`` of the probability-flow ODE (one evaluation)."""
    return score_fn(x, _sigma_vector(x, sigma)).mul(-sigma)


def _tweedie_(score_fn: SigmaScoreFn, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x <- x + sigma^2 s(x, sigma)`` in place: the step from ``sigma`` to 0 (one evaluation)."""
    return x.add_(score_fn(x, _sigma_vector(x, sigma)), alpha=sigma**2)


def _levels(sigmas: torch.Tensor) -> list[float]:
    return [float(s) for s in validate_sigmas(sigmas).tolist()]


def _ode(score_fn: SigmaScoreFn, x: torch.Tensor, sigmas: torch.Tensor, *, second_order: bool,
         final_denoise: bool, churn: float, churn_min: float, churn_max: float, churn_noise: float,
         generator: torch.Generator | None, noise: NoiseSource | None, callback: Callback | None,
         constrain: Constrain | None) -> torch.Tensor:
    """EDM's Algorithm 2 (Algorithm 1 when ``churn`` is 0), Euler or Heun steps."""
    levels = _levels(sigmas)
    gammas = [churn_gamma(s, len(levels), churn, churn_min, churn_max) for s in levels]
    if any(g > 0 for g in gammas[:-1]) and not supports_any_sigma(score_fn):
        raise ValueError("churn raises sigma between the trained levels, which a ladder-conditioned (NCSN) network "
                         "cannot evaluate: use churn 0, or the pc sampler for a stochastic one")
    source = noise_source_for(x, generator, noise) if churn > 0 or constrain is not None else None
    x = x.clone()
    if constrain is not None:
        constrain(x, levels[0], source)
    nfe = 0
    for i, (sigma, nxt) in enumerate(zip(levels[:-1], levels[1:])):
        if gammas[i] > 0:
            sigma_hat = sigma * (1 + gammas[i])
            x.add_(source.normal(1)[0], alpha=churn_noise * math.sqrt(sigma_hat**2 - sigma**2))
        else:
            sigma_hat = sigma
        nfe += _ode_step_(score_fn, x, sigma_hat, nxt, second_order=second_order)
        if constrain is not None:
            constrain(x, nxt, source)
        if callback is not None:
            callback({"x": x, "step": i, "sigma": sigma, "nfe": nfe})
    return _finish(score_fn, x, levels, final_denoise=final_denoise, nfe=nfe, callback=callback, constrain=constrain,
                   source=source)


def _ode_step_(score_fn: SigmaScoreFn, x: torch.Tensor, sigma: float, nxt: float, *, second_order: bool) -> int:
    """One Euler (or Heun, ``second_order``) step of the probability-flow ODE from ``sigma`` to
    ``nxt > 0``, in place; returns its network evaluations."""
    slope = _slope(score_fn, x, sigma)
    if not second_order:
        x.add_(slope, alpha=nxt - sigma)
        return 1
    slope_next = _slope(score_fn, x + (nxt - sigma) * slope, nxt)
    x.add_(slope.add_(slope_next), alpha=(nxt - sigma) / 2)
    return 2


def _finish(score_fn: SigmaScoreFn, x: torch.Tensor, levels: list[float], *, final_denoise: bool, nfe: int,
            callback: Callback | None, constrain: Constrain | None, source: NoiseSource | None) -> torch.Tensor:
    """The step from the last sigma to 0 (the Tweedie denoise) when asked for, then the
    constraint at sigma = 0; returns ``x``."""
    if final_denoise:
        _tweedie_(score_fn, x, levels[-1])
    if constrain is not None:
        constrain(x, 0.0, source)
    if final_denoise and callback is not None:
        callback({"x": x, "step": len(levels) - 1, "sigma": levels[-1], "nfe": nfe + 1})
    return x


def churn_gamma(sigma: float, steps: int, churn: float, churn_min: float = 0.0,
                churn_max: float = float("inf")) -> float:
    """EDM's ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` where ``S_tmin <= sigma_i <= S_tmax``, else 0."""
    if churn <= 0 or not churn_min <= sigma <= churn_max:
        return 0.0
    return min(churn / steps, math.sqrt(2) - 1)


@torch.inference_mode()
def euler(score_fn: SigmaScoreFn, x: torch.Tensor, sigmas: torch.Tensor, *, final_denoise: bool = True,
          generator: torch.Generator | None = None, noise: NoiseSource | None = None,
          callback: Callback | None = None, constrain: Constrain | None = None) -> torch.Tensor:
    """Euler steps of the probability-flow ODE along ``sigmas`` (deterministic):
    ``x <- x + (sigma_{i+1} - sigma_i) * (-sigma_i s(x, sigma_i))``. NFE ``N - 1 + fd``."""
    return _ode(score_fn, x, sigmas, second_order=False, final_denoise=final_denoise, churn=0.0, churn_min=0.0,
                churn_max=math.inf, churn_noise=1.0, generator=generator, noise=noise, callback=callback,
                constrain=constrain)


@torch.inference_mode()
def heun(score_fn: SigmaScoreFn, x: torch.Tensor, sigmas: torch.Tensor, *, final_denoise: bool = True,
         generator: torch.Generator | None = None, noise: NoiseSource | None = None,
         callback: Callback | None = None, constrain: Constrain | None = None) -> torch.Tensor:
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1): an Euler step from
    ``sigma_i`` to ``sigma_{i+1}``, then the trapezoidal (Heun) correction with the slope at the
    Euler point. Second order; NFE ``2 (N - 1) + fd`` (the final step to 0 is the Tweedie
    denoise, which is exact for an Euler step there)."""
    return _ode(score_fn, x, sigmas, second_order=True, final_denoise=final_denoise, churn=0.0, churn_min=0.0,
                churn_max=math.inf, churn_noise=1.0, generator=generator, noise=noise, callback=callback,
                constrain=constrain)


@torch.inference_mode()
def edm_stochastic(score_fn: SigmaScoreFn, x: torch.Tensor, sigmas: torch.Tensor, *, final_denoise: bool = True,
                   churn: float = 10.0, churn_min: float = 0.0, churn_max: float = float("inf"),
                   churn_noise: float = 1.0, generator: torch.Generator | None = None,
                   noise: NoiseSource | None = None, callback: Callback | None = None,
                   constrain: Constrain | None = None) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2). At each step, where
    ``churn_min <= sigma_i <= churn_max`` (EDM's S_tmin, S_tmax), noise is added back to raise
    sigma to ``sigma_hat = sigma_i (1 + gamma)``, ``gamma = min(churn / N, sqrt(2) - 1)``
    (S_churn), ``x <- x + sqrt(sigma_hat^2 - sigma_i^2) * churn_noise * z`` (S_noise); then a
    Heun step from ``sigma_hat`` to ``sigma_{i+1}``. NFE ``2 (N - 1) + fd``. Needs a score at any
    sigma (NCSNv2, analytic): a ladder-conditioned NCSN network is refused."""
    return _ode(score_fn, x, sigmas, second_order=True, final_denoise=final_denoise, churn=churn,
                churn_min=churn_min, churn_max=churn_max, churn_noise=churn_noise, generator=generator,
                noise=noise, callback=callback, constrain=constrain)


PREDICTORS = ("reverse_diffusion", "euler", "heun")


def _predict_(score_fn: SigmaScoreFn, x: torch.Tensor, sigma: float, nxt: float, predictor: str,
              z: torch.Tensor) -> int:
    """One predictor step from ``sigma`` to ``nxt`` in place; returns its network evaluations."""
    if predictor == "reverse_diffusion":
        variance = sigma**2 - nxt**2
        x.add_(score_fn(x, _sigma_vector(x, sigma)), alpha=variance).add_(z, alpha=math.sqrt(variance))
        return 1
    return _ode_step_(score_fn, x, sigma, nxt, second_order=predictor == "heun")


@torch.inference_mode()
def predictor_corrector(score_fn: SigmaScoreFn, x: torch.Tensor, sigmas: torch.Tensor, *,
                        final_denoise: bool = True, corrector_steps: int = 1, snr: float = 0.16,
                        predictor: str = "reverse_diffusion", generator: torch.Generator | None = None,
                        noise: NoiseSource | None = None, callback: Callback | None = None,
                   constrain: Constrain | None = None) -> torch.Tensor:
    """score_sde's predictor-corrector sampler for VE models (Song et al. 2021, Algorithm 2).

    For each step of the schedule, sigma_i to sigma_{i+1}: one predictor step, then
    ``corrector_steps`` Langevin steps at sigma_{i+1}; after the last level ``final_denoise``
    takes the Tweedie step to sigma = 0. Predictors: ``reverse_diffusion`` (score_sde's,
    ``x <- x + (sigma_i^2 - sigma_{i+1}^2) s + sqrt(sigma_i^2 - sigma_{i+1}^2) z``), or a
    probability-flow ODE step, ``euler`` or ``heun`` (as :func:`euler`, :func:`heun`). Correctors:
    Langevin steps in score_sde's convention ``x <- x + e s + sqrt(2 e) z`` (the paper's
    ``alpha = 2 e``). NFE ``(N - 1) (p + C) + fd`` with p = 2 for ``heun``, else 1.

    Two choices differ from score_sde, both measured on the paper's toy mixture or the digits:

    * Order: score_sde corrects *before* each predictor step, i.e. also at sigma_1 on the
      initial (prior) samples and never at sigma_N; here each level is corrected once the
      predictor has reached it, so the last level is corrected and the prior is not (on the
      digits default, correcting the prior samples made them worse).
    * Step: score_sde sets ``e = 2 (snr ||z|| / ||s||)^2`` with both norms averaged over the
      batch, which makes a sample depend on the rest of its batch; per-sample norms instead
      make the step depend on the state (a sample near a mode gets a huge step) and bias the
      toy's mode weights (0.39 for 0.2). Here ``||s||`` takes its value under the perturbation
      kernel, ``sqrt(D) / sigma``, and ``||z|| = sqrt(D)``: ``e = 2 (snr sigma)^2``, the step
      score_sde takes on data near the manifold, fixed per level like annealed Langevin's
      (``eps sigma_i^2 / sigma_L^2 = 4 snr^2 sigma_i^2``).

    Every sigma is a schedule point, so ladder-conditioned networks (NCSN) are supported.
    """
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
    if corrector_steps and not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r} (expected one of {', '.join(PREDICTORS)})")
    levels = _levels(sigmas)
    source = noise_source_for(x, generator, noise)
    x = x.clone()
    if constrain is not None:
        constrain(x, levels[0], source)
    nfe = 0
    for i, (sigma, nxt) in enumerate(zip(levels[:-1], levels[1:])):
        draws = source.normal(corrector_steps + 1)
        nfe += _predict_(score_fn, x, sigma, nxt, predictor, draws[-1])
        if constrain is not None:
            constrain(x, nxt, source)
        step = 2 * (snr * nxt) ** 2
        for k in range(corrector_steps):
            x.add_(score_fn(x, _sigma_vector(x, nxt)), alpha=step).add_(draws[k], alpha=math.sqrt(2 * step))
            nfe += 1
            if constrain is not None:
                constrain(x, nxt, source)
        if callback is not None:
            callback({"x": x, "step": i, "sigma": sigma, "nfe": nfe})
    return _finish(score_fn, x, levels, final_denoise=final_denoise, nfe=nfe, callback=callback, constrain=constrain,
                   source=source)


FAST_SAMPLERS = {"euler": euler, "heun": heun, "edm": edm_stochastic, "pc": predictor_corrector}


def nfe_per_sample(method: str, num_sigmas: int, *, final_denoise: bool, corrector_steps: int = 0,
                   predictor: str = "reverse_diffusion") -> int:
    """Network evaluations per sample of ``method`` over a schedule of ``num_sigmas`` sigmas."""
    fd = int(final_denoise)
    if method == "euler":
        return num_sigmas - 1 + fd
    if method in ("heun", "edm"):
        return 2 * (num_sigmas - 1) + fd
    if method == "pc":
        return (num_sigmas - 1) * ((2 if predictor == "heun" else 1) + corrector_steps) + fd
    raise ValueError(f"unknown fast sampler {method!r} (expected one of {', '.join(FAST_SAMPLERS)})")
