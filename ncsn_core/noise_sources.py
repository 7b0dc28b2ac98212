"""Where the samplers' randomness comes from.

A sampler never calls ``torch.randn`` itself; it asks a *noise source* for

* ``uniform()``: a ``(B, ...)`` tensor of U[0, 1) draws (initial samples), and
* ``normal(steps)``: a ``(steps, B, ...)`` block of N(0, 1) draws, one slice per
  Langevin step. Drawing a level's noise in one call keeps RNG calls (and, with
  :class:`PerSampleNoise`, any per-sample work) out of the inner step loop.

Two sources are provided:

* :class:`GeneratorNoise`: one ``torch.Generator`` for the whole batch. Fastest; the
  same generator state gives the same batch.
* :class:`PerSampleNoise`: one generator per sample, seeded by that sample's integer
  seed (as NVlabs/edm does). Sample ``k`` then depends only on its seed, whatever else
  is in the batch or how many workers share the job.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

__all__ = ["NoiseSource", "GeneratorNoise", "PerSampleNoise", "noise_source_for"]


class NoiseSource(Protocol):
    batch_shape: torch.Size

    def uniform(self) -> torch.Tensor: ...

    def normal(self, steps: int) -> torch.Tensor: ...


class GeneratorNoise:
    """Draws every batch's noise from one ``torch.Generator`` (or the global RNG if None)."""

    def __init__(
        self,
        batch_shape: Sequence[int],
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.batch_shape = torch.Size(batch_shape)
        self.generator = generator
        self.device = torch.device(device) if device is not None else (
            generator.device if generator is not None else torch.device("cpu")
        )
        self.dtype = dtype

    def uniform(self) -> torch.Tensor:
        return torch.rand(self.batch_shape, generator=self.generator, device=self.device, dtype=self.dtype)

    def normal(self, steps: int) -> torch.Tensor:
        shape = (steps, *self.batch_shape)
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=self.dtype)


class PerSampleNoise:
    """One generator per sample, seeded with that sample's seed.

    Args:
        seeds: one non-negative integer per sample (the batch size is ``len(seeds)``).
        sample_shape: shape of one sample, e.g. ``(3, 32, 32)``.

    ``normal(steps)`` costs one RNG call per sample per call, i.e. per noise level, not per
    Langevin step.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        sample_shape: Sequence[int],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("PerSampleNoise needs at least one seed")
        if min(seeds) < 0:
            raise ValueError("seeds must be non-negative integers")
        self.device = torch.device(device)
        self.dtype = dtype
        self.sample_shape = torch.Size(sample_shape)
        self.batch_shape = torch.Size((len(seeds), *self.sample_shape))
        self.generators = []
        for seed in seeds:
            g = torch.Generator(device=self.device)
            g.manual_seed(seed)
            self.generators.append(g)

    def uniform(self) -> torch.Tensor:
        return torch.stack(
            [torch.rand(self.sample_shape, generator=g, device=self.device, dtype=self.dtype) for g in self.generators]
        )

    def normal(self, steps: int) -> torch.Tensor:
        shape = (steps, *self.sample_shape)
        draws = [torch.randn(shape, generator=g, device=self.device, dtype=self.dtype) for g in self.generators]
        return torch.stack(draws, dim=1)


def noise_source_for(
    x: torch.Tensor, generator: torch.Generator | None = None, noise: NoiseSource | None = None
) -> NoiseSource:
    """The noise source a sampler uses for samples shaped like ``x``.

    ``noise`` wins when given (its batch shape must equal ``x.shape``); otherwise a
    :class:`GeneratorNoise` over ``generator`` (or the global RNG) on ``x``'s device and dtype.
    """
    if noise is not None:
        if tuple(noise.batch_shape) != tuple(x.shape):
            raise ValueError(f"noise source shape {tuple(noise.batch_shape)} != sample shape {tuple(x.shape)}")
        return noise
    return GeneratorNoise(x.shape, generator, device=x.device, dtype=x.dtype)
