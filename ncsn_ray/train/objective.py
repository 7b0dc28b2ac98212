"""What a training run minimises, per worker: a score model's score matching, or a consistency
model's distillation from its teacher (``jobs/distill.py``; :mod:`ncsn_core.consistency`).

:func:`make_objective` gives the loop one :class:`Objective` either way: the loss it hands to
:func:`ncsn_core.train_step`, the loss's keyword arguments, how many "levels" the
step-addressed draws pick each example's from (the ladder's L, or the distillation's N
intervals), and the sigma each logged bin of the loss stands for. For a consistency model the
teacher's checkpoint is read here, on the worker, and checked against the SHA-256 the driver
pinned; a fresh student starts from the teacher's weights (:func:`initialise_student`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ncsn_core import LOSSES, EMA, load_checkpoint, loss_options
from ncsn_core.consistency import ConsistencyDistillationLoss, distillation_sigmas
from ncsn_core.config import Config

from ..errors import JobFailed
from ..io.storage import Storage
from .state import TrainState

__all__ = ["Objective", "make_objective", "load_teacher", "initialise_student"]


@dataclass
class Objective:
    """``loss_fn(model, x, sigmas, **kwargs) -> LossOutput``; ``draw_levels``: the range of
    each example's drawn level; ``bins`` ``(K,)``: the sigma of each logged loss bin."""

    loss_fn: Callable[..., Any]
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    draw_levels: int = 1
    bins: torch.Tensor | None = None


def load_teacher(config: Config, endpoint_url: str | None, device: torch.device) -> torch.nn.Module:
    """The teacher network of a consistency config, from its pinned checkpoint file (its
    ``teacher_weights``: ``ema`` or ``trained``), on ``device``, frozen."""
    c = config.consistency
    data = Storage.from_uri(c.teacher, endpoint_url=endpoint_url).read_bytes()
    if hashlib.sha256(data).hexdigest() != c.teacher_sha256:
        raise JobFailed(f"the teacher checkpoint {c.teacher} changed since the distillation began (its SHA-256 is "
                        "not the one recorded in the student's config); distil from the file as it was, or start "
                        "another student")
    teacher = load_checkpoint(data, name=c.teacher).build_model(use_ema=c.teacher_weights == "ema", device=device)
    return teacher.eval().requires_grad_(False)


def initialise_student(state: TrainState, teacher: torch.nn.Module) -> None:
    """A fresh student starts as its teacher: the teacher's weights in the student's network,
    and its EMA from them."""
    state.model.network.load_state_dict(teacher.state_dict())
    state.ema = EMA(state.model, state.config.training.ema_decay)


def make_objective(config: Config, state: TrainState, teacher: torch.nn.Module | None) -> Objective:
    """The run's :class:`Objective` (``teacher``: the loaded teacher of a consistency config)."""
    if not config.is_consistency:
        return Objective(LOSSES[config.training.loss], loss_options(config), config.noise.num_levels, state.sigmas)
    c = config.consistency
    grid = distillation_sigmas(c.levels, float(state.sigmas[-1]), float(state.sigmas[0]), c.sigma_min, c.rho)
    loss = ConsistencyDistillationLoss(teacher, grid.to(torch.float32), distance=c.distance, huber_c=c.huber_c,
                                       weighting=c.weighting)
    return Objective(loss, {}, loss.intervals, grid[1:].to(torch.float32))
