"""What a training checkpoint holds, as live objects on one worker: model, EMA, optimiser,
noise ladder and step counter (:class:`TrainState`).

The ladder is made here once, from the config (``geometric_sigmas``, valid by construction),
and passed on as a value: to the loss, the preview sampler, the records and the checkpoint.
"""

from __future__ import annotations

import torch

from ncsn_core import EMA, build_model, geometric_sigmas, load_checkpoint, make_optimizer
from ncsn_core.checkpoint import checkpoint_bytes
from ncsn_core.config import Config

__all__ = ["TrainState"]


class TrainState:
    """Model, EMA, optimiser, noise ladder and step counter: what a checkpoint holds."""

    def __init__(self, config: Config):
        tc = config.training
        self.config = config
        self.sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
        self.model = build_model(config)
        self.ema = EMA(self.model, tc.ema_decay)
        self.optimizer = make_optimizer(self.model.parameters(), lr=tc.lr, beta1=tc.beta1,
                                        weight_decay=tc.weight_decay)
        self.step = 0

    def restore(self, data: bytes, name: str) -> None:
        """Weights, EMA, optimiser and step from checkpoint bytes; the optimiser then takes the
        config's learning rate, betas and weight decay (a resumed run may change them)."""
        ckpt = load_checkpoint(data, name=name)
        self.model.load_state_dict(ckpt.model_state)
        if ckpt.ema_state is not None:
            self.ema.load_state_dict(ckpt.ema_state)
        if ckpt.optimizer_state is not None:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
            tc = self.config.training
            for group in self.optimizer.param_groups:
                group.update(lr=tc.lr, betas=(tc.beta1, 0.999), weight_decay=tc.weight_decay, foreach=True)
        self.step = ckpt.step

    def to(self, device: torch.device) -> "TrainState":
        self.model.to(device)
        self.ema.module.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and key != "step":
                    state[key] = value.to(device)
        return self

    def checkpoint_bytes(self) -> bytes:
        return checkpoint_bytes(model=self.model, config=self.config, sigmas=self.sigmas, ema=self.ema.module,
                                optimizer=self.optimizer, step=self.step)
