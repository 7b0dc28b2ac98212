"""The paper's toy distribution (Section 3.2): a mixture of isotropic Gaussians in 2-D.

``p = 1/5 N((-5, -5), I) + 4/5 N((5, 5), I)`` by default. Perturbing it with N(0, sigma^2 I)
gives another mixture with component variance ``var + sigma^2``, so its score is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["GaussianMixture", "lower_left_fraction"]


@dataclass(frozen=True)
class GaussianMixture:
    """Mixture of isotropic Gaussians ``sum_k w_k N(mu_k, var I)``."""

    weights: tuple[float, ...] = (0.2, 0.8)
    means: tuple[tuple[float, ...], ...] = ((-5.0, -5.0), (5.0, 5.0))
    var: float = 1.0
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def _tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.tensor(self.weights, dtype=like.dtype, device=like.device)
        mu = torch.tensor(self.means, dtype=like.dtype, device=like.device)
        return w / w.sum(), mu

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples, ``(n, D)``."""
        w, mu = self._tensors(torch.empty(0))
        comp = torch.multinomial(w, n, replacement=True, generator=generator)
        return mu[comp] + self.var**0.5 * torch.randn((n, mu.shape[1]), generator=generator)

    def log_prob(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        """log q_sigma(x) for ``x`` of shape ``(B, D)``; ``sigma`` a float or a ``(B,)`` tensor."""
        w, mu = self._tensors(x)
        var = self.var + torch.as_tensor(sigma, dtype=x.dtype, device=x.device) ** 2
        var = var.reshape(-1, 1) if var.ndim else var
        sq = ((x[:, None, :] - mu[None]) ** 2).sum(-1)  # (B, K)
        d = x.shape[1]
        return torch.logsumexp(torch.log(w) - sq / (2 * var) - d / 2 * torch.log(2 * torch.pi * var), dim=1)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        """grad_x log q_sigma(x), ``(B, D)``: responsibilities times ``-(x - mu_k) / (var + sigma^2)``."""
        w, mu = self._tensors(x)
        var = self.var + torch.as_tensor(sigma, dtype=x.dtype, device=x.device) ** 2
        var = var.reshape(-1, 1) if var.ndim else var
        diff = x[:, None, :] - mu[None]  # (B, K, D)
        logits = torch.log(w) - (diff**2).sum(-1) / (2 * var)
        resp = torch.softmax(logits, dim=1)  # (B, K)
        var3 = var[..., None] if torch.is_tensor(var) and var.ndim else var
        return -(resp[..., None] * diff).sum(1) / (var3 if not torch.is_tensor(var3) or var3.ndim < 2 else var3[:, 0])


def lower_left_fraction(x: torch.Tensor) -> float:
    """Fraction of 2-D points in the lower-left half-plane ``x0 + x1 < 0`` (the weight-1/5 mode)."""
    return float((x.sum(dim=1) < 0).float().mean())
