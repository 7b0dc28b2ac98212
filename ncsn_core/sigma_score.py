"""Score functions of the noise level's *value*, for the fast samplers.

The Langevin samplers call ``score_fn(x, level)`` with an index into the trained ladder. The
fast samplers (:mod:`ncsn_core.fast_sampling`) walk a sigma schedule instead and call

    sigma_score_fn(x, sigma) -> score,   x (B, ...), sigma (B,) float, score (B, ...)

Which sigmas a network can take depends on how it is conditioned:

* NCSN is conditioned on the ladder *index*: only the trained sigmas exist for it.
  :class:`LadderScore` looks each sigma up in the ladder and refuses any other with
  :class:`OffLadderSigmaError`.
* NCSNv2 divides an unconditional output by sigma (``s(x, sigma) = s(x) / sigma``), so it
  has a score at every sigma: :func:`continuous_score` evaluates it so.
* :class:`~ncsn_core.model.PreconditionedMLP` is conditioned on sigma's value and takes
  float sigmas where the ladder index would go: :func:`value_score` passes them through.
* An analytic score (e.g. :meth:`ncsn_core.toy.GaussianMixture.score`) is already one.

:func:`sigma_score_fn` picks the right one from the network's ``any_sigma`` attribute.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["SigmaScoreFn", "OffLadderSigmaError", "LadderScore", "continuous_score", "value_score",
           "sigma_score_fn", "supports_any_sigma"]

SigmaScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class OffLadderSigmaError(ValueError):
    """A sampler asked a ladder-conditioned network (NCSN) for a sigma it was not trained on."""


class LadderScore:
    """``score_fn(x, level)`` of a ladder-conditioned network as a function of sigma.

    Args:
        level_score_fn: ``(x, level (B,) int64) -> score``.
        ladder: the trained ladder ``(L,)``, descending, as the network's config or checkpoint
            holds it (made and checked there; not checked again here).
        rtol: relative tolerance of the look-up (schedules are computed in float32).
    """

    any_sigma = False

    def __init__(self, level_score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ladder: torch.Tensor,
                 *, rtol: float = 1e-4):
        self.level_score_fn = level_score_fn
        self.ladder = ladder
        self._values = [float(v) for v in self.ladder.tolist()]
        self.rtol = rtol

    def level_of(self, sigma: float) -> int:
        """The ladder index of ``sigma``; :class:`OffLadderSigmaError` if it is not a level."""
        for index, value in enumerate(self._values):
            if abs(sigma - value) <= self.rtol * value:
                return index
        raise OffLadderSigmaError(
            f"sigma {sigma:.6g} is not one of the {len(self._values)} noise levels this network was trained on "
            f"({self._values[0]:.4g} .. {self._values[-1]:.4g}); an NCSN network is conditioned on the level index, "
            "so its samplers must step along its ladder (schedule 'ladder', no churn)")

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        first = float(sigma[0])
        if sigma.numel() > 1 and not bool((sigma == sigma[0]).all()):
            raise ValueError("LadderScore needs one sigma for the whole batch")
        level = torch.full((x.shape[0],), self.level_of(first), dtype=torch.long, device=x.device)
        return self.level_score_fn(x, level)


def continuous_score(level_score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     ladder: torch.Tensor) -> SigmaScoreFn:
    """NCSNv2's score at any sigma from its ``score_fn(x, level)``: the network's
    unconditional output is ``score(x, level) * sigma_level``, so
    ``s(x, sigma) = score(x, 0) * sigma_0 / sigma`` (any level gives the same output; level 0
    is used)."""
    sigma_0 = float(ladder[0])

    def score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        level = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        scale = (sigma_0 / sigma.to(x.dtype)).view(-1, *([1] * (x.ndim - 1)))
        return level_score_fn(x, level) * scale

    score.any_sigma = True  # type: ignore[attr-defined]
    return score


def value_score(level_score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                ladder: torch.Tensor) -> SigmaScoreFn:
    """The score of a network conditioned on sigma's value (``any_sigma = "value"``): its
    ``score_fn(x, level)`` takes a float ``(B,)`` tensor of sigmas in place of the indices (the
    ladder is not needed; the argument keeps the three functions' signatures alike)."""

    def score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return level_score_fn(x, sigma.to(x.dtype))

    score.any_sigma = True  # type: ignore[attr-defined]
    return score


def sigma_score_fn(network: torch.nn.Module, level_score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   ladder: torch.Tensor) -> SigmaScoreFn:
    """``score(x, sigma)`` for ``network`` (unwrapped) through its ``level_score_fn``:
    :func:`continuous_score` for ``any_sigma = "scaled"`` (NCSNv2), :func:`value_score` for
    ``"value"``, else :class:`LadderScore` (the trained levels only)."""
    kind = getattr(network, "any_sigma", None)
    if kind == "scaled":
        return continuous_score(level_score_fn, ladder)
    if kind == "value":
        return value_score(level_score_fn, ladder)
    return LadderScore(level_score_fn, ladder)


def supports_any_sigma(score_fn: SigmaScoreFn) -> bool:
    """Whether ``score_fn`` can be evaluated off the trained ladder (False for :class:`LadderScore`;
    True for :func:`continuous_score` and for plain functions such as analytic scores)."""
    return bool(getattr(score_fn, "any_sigma", True))
