"""One optimisation step of score matching, shared by every trainer (Ray Train, benchmarks, toy).

    out = train_step(model, optimizer, loss_fn, x, sigmas, ema=ema, grad_clip=1.0, anneal_power=2.0)
    out = train_step(..., micro_batches=4, precision="bf16")   # same step, a quarter of the activations

``model`` is what the loss calls (a DDP wrapper is fine); ``ema`` (optional) tracks the
plain module behind it. The step is: ``zero_grad``, loss and backward (once per micro-batch),
optional global-norm gradient clipping, ``optimizer.step()``, EMA update. It returns a
:class:`~ncsn_core.losses.LossOutput` for the whole batch (detached scalar loss, per-example
losses and levels), so the caller can log the loss per noise level with
:func:`~ncsn_core.losses.per_level_means`.

Gradient accumulation: ``micro_batches = k`` splits the batch ``(B, ...)`` into ``k``
near-equal parts along dimension 0 (part ``i`` holds rows ``[floor(i B / k), floor((i + 1) B / k))``:
equal parts when ``k`` divides ``B``, sizes differing by at most one otherwise), and with it
every loss keyword argument that is a tensor of first dimension ``B`` (the step's fixed
``levels`` and ``noise``). Each part's loss is weighted by its share of the batch, so the
summed gradient is the full batch's mean-loss gradient, equal to one full-batch step up to
float summation order.

Uneven data parallelism: ``loss_weight`` multiplies the loss before ``backward`` (1 leaves
the step exactly as it was). A DDP worker ``r`` of ``W`` holding ``b_r`` of a global batch of
``B`` examples passes ``b_r W / B``: DDP averages the ``W`` gradients, so the step's gradient
is the mean over the whole global batch however unevenly it is shared (``W = 3`` over
``B = 32`` gives shares 10, 11, 11). A DDP model skips the
all-reduce on all but the last part (``no_sync``). Draws the loss makes itself from a
``generator`` (sliced score matching's projections) come in parts' order from the same
generator: the same distribution, not the same numbers as one full-batch draw.

Precision: ``"bf16"`` runs the loss's forward pass under ``torch.autocast`` (bfloat16 matmuls
and convolutions); the parameters, their gradients, the optimiser state and the EMA stay
float32 (bf16 has float32's exponent range, so no loss scaling is needed).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn as nn

from .ema import EMA
from .losses import LossOutput
from .wrappers import unwrap_model

__all__ = ["train_step", "make_optimizer", "split_batch", "part_bounds", "PRECISIONS"]

PRECISIONS = ("fp32", "bf16")


def make_optimizer(parameters, *, lr: float, beta1: float = 0.9, weight_decay: float = 0.0) -> torch.optim.Adam:
    """The paper's optimiser: Adam with ``betas = (beta1, 0.999)``, on every device with the
    multi-tensor (``foreach``) update. PyTorch picks it by default only on CUDA; on the CPU
    its per-tensor loop costs a Python round trip per parameter tensor per step."""
    return torch.optim.Adam(parameters, lr=lr, betas=(beta1, 0.999), weight_decay=weight_decay, foreach=True)


def part_bounds(total: int, parts: int, index: int) -> tuple[int, int]:
    """``(start, stop)`` of part ``index`` (0-based) of ``parts`` near-equal, contiguous parts of
    ``total`` rows: ``[floor(index total / parts), floor((index + 1) total / parts))``. Every part
    holds ``total // parts`` or one more row; when ``parts`` divides ``total`` they are equal."""
    if not 0 <= index < parts:
        raise ValueError(f"part {index} of {parts} does not exist")
    return index * total // parts, (index + 1) * total // parts


def split_batch(x: torch.Tensor, loss_kwargs: dict[str, Any], parts: int) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """``x`` ``(B, ...)`` and the per-example loss arguments in ``parts`` near-equal slices
    along dimension 0 (:func:`part_bounds`; none empty, so ``1 <= parts <= B``); arguments that
    are not tensors of first dimension ``B`` go to every part."""
    batch = x.shape[0]
    if not 1 <= parts <= batch:
        raise ValueError(f"cannot split a batch of {batch} into {parts} non-empty micro-batches")
    out = []
    for i in range(parts):
        rows = slice(*part_bounds(batch, parts, i))
        kwargs = {key: value[rows] if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch
                  else value for key, value in loss_kwargs.items()}
        out.append((x[rows], kwargs))
    return out


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[..., LossOutput],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    ema: EMA | None = None,
    grad_clip: float | None = None,
    micro_batches: int = 1,
    precision: str = "fp32",
    loss_weight: float = 1.0,
    **loss_kwargs: Any,
) -> LossOutput:
    """One step on the clean batch ``x`` ``(B, ...)`` with the ladder ``sigmas`` ``(L,)``.

    ``loss_kwargs`` go to ``loss_fn`` (e.g. ``anneal_power``, ``n_projections``,
    ``generator``, ``levels``, ``noise``). ``grad_clip``: maximum global gradient norm, None
    for no clipping. ``micro_batches``: parts the batch is accumulated in (see the module
    docstring); ``precision``: ``"fp32"`` or ``"bf16"`` (autocast of the forward pass);
    ``loss_weight``: a factor on the loss before ``backward`` (this worker's share of a global
    batch shared unevenly, see the module docstring); the returned loss is unweighted.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    parts = split_batch(x, loss_kwargs, micro_batches)
    optimizer.zero_grad(set_to_none=True)
    outputs = []
    for index, (x_part, kwargs_part) in enumerate(parts):
        last = index == len(parts) - 1
        no_sync = getattr(model, "no_sync", None)
        with (no_sync() if no_sync is not None and not last else contextlib.nullcontext()):
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = loss_fn(model, x_part, sigmas, **kwargs_part)
            weight = (x_part.shape[0] / x.shape[0] if len(parts) > 1 else 1.0) * loss_weight
            (out.loss * weight if weight != 1.0 else out.loss).backward()
        outputs.append(out)
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if ema is not None:
        ema.update(unwrap_model(model))
    if len(outputs) == 1:
        return outputs[0]
    per_example = torch.cat([o.per_example for o in outputs])
    return LossOutput(per_example.mean(), per_example, torch.cat([o.levels for o in outputs]))
