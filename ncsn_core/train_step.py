"""One optimisation step of score matching, shared by every trainer (Ray Train, benchmarks, toy).

    out = train_step(model, optimizer, loss_fn, x, sigmas, ema=ema, grad_clip=1.0, anneal_power=2.0)

``model`` is what the loss calls (a DDP wrapper is fine); ``ema`` (optional) tracks the
plain module behind it. The step is: loss, ``zero_grad``, backward, optional global-norm
gradient clipping, ``optimizer.step()``, EMA update. It returns the loss function's
:class:`~ncsn_core.losses.LossOutput` (scalar loss, per-example losses and levels), so the
caller can log the loss per noise level with :func:`~ncsn_core.losses.per_level_means`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from .ema import EMA
from .losses import LossOutput
from .model import unwrap_model

__all__ = ["train_step", "make_optimizer"]


def make_optimizer(parameters, *, lr: float, beta1: float = 0.9, weight_decay: float = 0.0) -> torch.optim.Adam:
    """The paper's optimiser: Adam with ``betas = (beta1, 0.999)``, on every device with the
    multi-tensor (``foreach``) update. PyTorch picks it by default only on CUDA; on the CPU
    its per-tensor loop costs a Python round trip per parameter tensor per step."""
    return torch.optim.Adam(parameters, lr=lr, betas=(beta1, 0.999), weight_decay=weight_decay, foreach=True)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[..., LossOutput],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    ema: EMA | None = None,
    grad_clip: float | None = None,
    **loss_kwargs: Any,
) -> LossOutput:
    """One step on the clean batch ``x`` ``(B, ...)`` with the ladder ``sigmas`` ``(L,)``.

    ``loss_kwargs`` go to ``loss_fn`` (e.g. ``anneal_power``, ``n_projections``,
    ``generator``). ``grad_clip``: maximum global gradient norm, None for no clipping.
    """
    out = loss_fn(model, x, sigmas, **loss_kwargs)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if ema is not None:
        ema.update(unwrap_model(model))
    return out
