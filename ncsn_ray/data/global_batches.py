"""Step-addressed training batches: what step k trains on is a function of (seed, k) alone.

The in-memory training path (datasets under the cache limit, the default for digits,
MNIST and CIFAR-10) holds every image in each worker and derives, for each optimiser step
``k`` (1-based), the *global* batch and every random number the step consumes:

* the images: epoch ``e = (k - 1) // S`` with ``S = N // B`` steps per epoch (the last
  ``N mod B`` images of each epoch's order are dropped), position ``p = (k - 1) mod S``;
  the global batch is ``perm_e[p B : (p + 1) B]`` where ``perm_e`` is a permutation of the
  ``N`` images drawn from a generator seeded by ``(seed, e)``;
* the loss's and the augmentation's draws, from a generator seeded by ``(seed, k)``, in
  this order for the whole global batch: noise levels ``(B,)``, the Gaussian ``z`` of
  ``x~ = x + sigma z`` ``(B, C, H, W)``, the dequantisation uniforms ``(B, C, H, W)``, the
  flip coins ``(B,)`` and, with a log-normal sigma draw (``training.sigma_draw:
  lognormal``), one standard normal per example ``(B,)``: ``sigma = exp(mean + std u)``,
  clamped to the ladder's range (drawn last, so a ladder run's draws are unchanged).

Worker ``r`` of ``W`` takes rows ``[floor(r B / W), floor((r + 1) B / W))`` of each
(:func:`worker_rows`): ``[r b, (r + 1) b)`` with ``b = B / W`` when ``W`` divides ``B``, and
shares of ``B // W`` or one more otherwise (32 over 3 workers: 10, 11, 11), which the loop
weights by ``b_r W / B`` so that DDP's average of the gradients is the global batch's mean
(``ncsn_core.train_step``'s ``loss_weight``). Nothing depends on the history of the run, so

* a run resumed from its step-``k`` checkpoint continues with exactly the draws the
  uninterrupted run made at step ``k + 1`` (bit-identical weights, EMA and Adam state on
  deterministic kernels: nothing about the data needs to be in the checkpoint), and
* a run resumed with another number of workers trains on the same global batches with the
  same noise; only the order in which DDP sums the gradients changes (equal to float
  tolerance), whatever ``W`` is: the same holds for an elastic run whose worker group
  grows or shrinks between checkpoints.

Sliced score matching draws its own projections from a generator seeded by
``(seed, k, rank)``: exact on resume with the same number of workers, not across counts.
The streaming path (Ray Data, datasets above the cache limit) reads in Ray Data's order and
is reproducible neither on resume nor across worker counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["GlobalBatches", "StepDraws", "derived_seed", "lognormal_of", "worker_rows"]

_EPOCH_ORDER, _STEP_DRAWS, _LOSS_DRAWS = 0, 1, 2  # the purposes a seed is derived for


def derived_seed(*parts: int) -> int:
    """A 64-bit generator seed from non-negative integers (NumPy's SeedSequence hashing,
    so that nearby inputs such as consecutive steps give unrelated streams)."""
    words = np.random.SeedSequence([int(p) % (1 << 63) for p in parts]).generate_state(2, np.uint32)
    return int(words[0]) | (int(words[1]) << 32)


def lognormal_of(config) -> tuple[float, float, float, float] | None:
    """``(mean, std, sigma_min, sigma_max)`` of a config's log-normal sigma draw, or None when it
    trains on the ladder's levels (``training.sigma_draw``)."""
    tc = config.training
    if tc.sigma_draw != "lognormal":
        return None
    return float(tc.sigma_mean), float(tc.sigma_std), float(config.noise.sigma_min), float(config.noise.sigma_max)


def worker_rows(rank: int, world: int, global_batch: int) -> tuple[int, int]:
    """``(start, stop)``: the rows of a global batch of ``global_batch`` examples that worker
    ``rank`` of ``world`` trains on, ``[floor(rank B / world), floor((rank + 1) B / world))``.
    Contiguous, disjoint, covering the batch; ``B // world`` or one more rows each."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of {world} workers")
    if global_batch < world:
        raise ValueError(f"a global batch of {global_batch} cannot give each of {world} workers an example")
    return rank * global_batch // world, (rank + 1) * global_batch // world


def _generator(*parts: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derived_seed(*parts))


@dataclass(frozen=True)
class StepDraws:
    """One worker's share of step k: its ``b`` rows of each global draw (:func:`worker_rows`).

    ``images``: ``(b, C, H, W)`` uint8; ``levels``: ``(b,)`` int64 noise-level indices;
    ``noise``: ``(b, C, H, W)`` float32 standard normal (the loss's ``z``); ``uniform``:
    ``(b, C, H, W)`` float32 in [0, 1) for dequantisation; ``flip``: ``(b,)`` bool; ``sigmas``:
    ``(b,)`` float32 with a log-normal sigma draw (the loss then uses these, not ``levels``),
    else None.
    """

    images: torch.Tensor
    levels: torch.Tensor
    noise: torch.Tensor
    uniform: torch.Tensor
    flip: torch.Tensor
    sigmas: torch.Tensor | None = None


class GlobalBatches:
    """The step-addressed batches of one worker over images held in memory.

    ``images``: ``(N, C, H, W)`` uint8, the whole dataset in manifest order, on the
    worker's device. ``global_batch``: ``B``, at least ``world``; this worker's rows are
    :func:`worker_rows` ``(rank, world, B)``, ``per_worker`` of them. ``lognormal``:
    ``(mean, std, sigma_min, sigma_max)`` of a log-normal sigma draw, or None (the ladder).
    """

    def __init__(self, images: torch.Tensor, *, global_batch: int, seed: int, num_levels: int,
                 rank: int = 0, world: int = 1, lognormal: tuple[float, float, float, float] | None = None):
        self.rows = worker_rows(rank, world, global_batch)
        if len(images) < global_batch:
            raise ValueError(f"the data set has {len(images)} images, fewer than the global batch {global_batch}")
        self.images, self.global_batch, self.seed, self.num_levels = images, global_batch, seed, num_levels
        self.rank, self.per_worker = rank, self.rows[1] - self.rows[0]
        self.lognormal = lognormal
        self.steps_per_epoch = len(images) // global_batch
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            self._order = torch.randperm(len(self.images), generator=_generator(self.seed, _EPOCH_ORDER, epoch))
            self._epoch = epoch
        return self._order

    def global_indices(self, step: int) -> torch.Tensor:
        """``(B,)`` int64: the dataset rows of step ``step``'s global batch (step counts from 1)."""
        if step < 1:
            raise ValueError(f"steps count from 1, got {step}")
        epoch, position = divmod(step - 1, self.steps_per_epoch)
        start = position * self.global_batch
        return self._epoch_order(epoch)[start : start + self.global_batch]

    def draws(self, step: int) -> StepDraws:
        """This worker's rows of step ``step``'s images and random draws (see the module doc)."""
        B, shape = self.global_batch, tuple(self.images.shape[1:])
        g = _generator(self.seed, _STEP_DRAWS, step)
        levels = torch.randint(0, self.num_levels, (B,), generator=g)
        noise = torch.randn((B, *shape), generator=g)
        uniform = torch.rand((B, *shape), generator=g)
        flip = torch.rand((B,), generator=g) < 0.5
        sigmas = None
        if self.lognormal is not None:
            mean, std, sigma_min, sigma_max = self.lognormal
            sigmas = (mean + std * torch.randn((B,), generator=g)).exp().clamp(sigma_min, sigma_max)
        mine = slice(*self.rows)
        device = self.images.device
        rows = self.global_indices(step)[mine].to(device)
        return StepDraws(self.images[rows], levels[mine].to(device), noise[mine].to(device),
                         uniform[mine].to(device), flip[mine].to(device),
                         None if sigmas is None else sigmas[mine].to(device))

    def loss_generator(self, step: int) -> torch.Generator:
        """A generator for the loss's own draws at ``step`` on this rank (sliced score
        matching's projections), on the images' device."""
        return _generator(self.seed, _LOSS_DRAWS, step, self.rank, device=self.images.device)
