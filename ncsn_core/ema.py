"""Exponential moving average of model weights."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .wrappers import unwrap_model

__all__ = ["EMA"]


class EMA:
    """Keeps ``shadow = decay * shadow + (1 - decay) * param`` after every :meth:`update`.

    Buffers are copied as they are. The shadow is a full module (``ema.module``) that can
    be used for sampling directly; it lives on the same device as the model.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        model = unwrap_model(model)
        ema_params = list(self.module.parameters())
        params = list(model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - self.decay)
        for ema_buf, buf in zip(self.module.buffers(), model.buffers()):
            ema_buf.copy_(buf)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)

