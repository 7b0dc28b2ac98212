"""Training input: a prepared Parquet dataset -> decoded uint8 image batches, two paths.

* In memory (datasets under the cache limit): every worker reads the shards itself with
  :func:`read_images` (no Ray Data pipeline to start: milliseconds for digits) and trains
  on step-addressed batches (:mod:`ncsn_ray.data.global_batches`), which makes resumption
  exact and elastic.
* Streaming (larger datasets): the driver builds a Ray Data pipeline with
  :func:`build_train_dataset` (``ray.data.read_parquet`` from object storage, PNG decoding
  in Ray Data tasks) and each worker iterates its split with :class:`WorkerBatches`. Ray
  Data's order is not repeatable, so a resumed run differs from an uninterrupted one.

Augmentation (dequantisation, flips) happens on the worker's device, per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ncsn_core.config import Config

from .format import DatasetManifest, decode_images, iter_images
from .global_batches import GlobalBatches
from ..io.storage import Storage

__all__ = ["build_train_dataset", "decode_batch", "augment", "WorkerBatches", "read_images", "fits_in_memory",
           "step_inputs"]


def decode_batch(batch: dict[str, Any], channels: int) -> dict[str, np.ndarray]:
    """Ray Data batch (numpy format) with PNG ``image`` bytes -> ``{"image": (N, C, H, W) uint8}``."""
    images = decode_images(batch["image"], channels)  # (N, H, W, C)
    return {"image": np.ascontiguousarray(images.transpose(0, 3, 1, 2))}


def fits_in_memory(manifest: DatasetManifest, cache: str, limit_bytes: int) -> bool:
    """Whether training takes the in-memory path: ``cache`` is ``"on"``, or ``"auto"`` and the
    decoded images (``N C H W`` bytes) fit in ``limit_bytes``."""
    size = manifest.num_rows * manifest.channels * manifest.height * manifest.width
    return cache == "on" or (cache == "auto" and size <= limit_bytes)


def read_images(storage: Storage, manifest: DatasetManifest) -> torch.Tensor:
    """Every image of a prepared dataset, in manifest order: ``(N, C, H, W)`` uint8 (CPU)."""
    parts = list(iter_images(storage, manifest))
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts).transpose(0, 3, 1, 2)))


def build_train_dataset(storage: Storage, manifest: DatasetManifest):
    """A Ray Dataset of decoded images for the shards of a prepared dataset."""
    import ray.data

    ds = ray.data.read_parquet(manifest.shard_paths(storage), filesystem=storage.fs, columns=["image"])
    return ds.map_batches(decode_batch, fn_kwargs={"channels": manifest.channels}, batch_format="numpy")


def augment(
    images_uint8: torch.Tensor,
    *,
    dequantize: bool,
    random_flip: bool,
    generator: torch.Generator | None = None,
    uniform: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, C, H, W)`` uint8 -> float32 in [0, 1] (the paper's preprocessing).

    Dequantisation as the original code: ``x * 255/256 + U(0, 1)/256`` where ``x = u8 / 255``.
    ``random_flip`` mirrors each image horizontally with probability 1/2. The uniforms
    (``uniform``, shaped like the images) and coins (``flip``, ``(B,)`` bool) are drawn from
    ``generator`` unless given.
    """
    x = images_uint8.to(torch.float32) / 255.0
    if dequantize:
        if uniform is None:
            uniform = torch.rand(x.shape, generator=generator, device=x.device)
        x = x * (255.0 / 256.0) + uniform / 256.0
    if random_flip:
        if flip is None:
            flip = torch.rand((x.shape[0],), generator=generator, device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


def step_inputs(batches: "GlobalBatches", step: int, config: Config) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(x, loss keyword arguments)`` of step ``step`` (1-based) on the in-memory path: this
    worker's augmented float batch and the draws its loss takes from outside (levels and
    noise for DSM; SSM's projections from the step's generator)."""
    d = batches.draws(step)
    x = augment(d.images, dequantize=config.data.dequantize, random_flip=config.data.random_flip,
                uniform=d.uniform, flip=d.flip)
    if config.training.loss == "dsm":
        return x, {"levels": d.levels if d.sigmas is None else d.sigmas, "noise": d.noise}
    return x, {"levels": d.levels, "generator": batches.loss_generator(step)}


class WorkerBatches:
    """Endless iterator of ``(B, C, H, W)`` uint8 batches streamed from one worker's Ray Data
    split (``iter_torch_batches`` every epoch, locally shuffled): the streaming path."""

    def __init__(self, shard, batch_size: int, device: torch.device):
        self.shard, self.batch_size, self.device = shard, batch_size, device

    def __iter__(self):
        while True:
            for batch in self.shard.iter_torch_batches(
                batch_size=self.batch_size,
                dtypes={"image": torch.uint8},
                device=self.device,
                drop_last=True,
                local_shuffle_buffer_size=max(4 * self.batch_size, 1024),
            ):
                yield batch["image"]
