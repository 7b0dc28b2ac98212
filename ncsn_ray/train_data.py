"""Training input: a prepared Parquet dataset -> Ray Data -> decoded uint8 image batches.

The dataset is read with ``ray.data.read_parquet`` from object storage and PNG-decoded by
Ray Data tasks into ``image: (N, C, H, W) uint8``. Training workers take their split with
``ray.train.get_dataset_shard("train").iter_torch_batches``. Augmentation (dequantisation,
flips) happens on the worker's device, per step, so every epoch sees fresh noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .datasets import DatasetManifest, decode_images
from .storage import Storage

__all__ = ["build_train_dataset", "decode_batch", "augment"]


def decode_batch(batch: dict[str, Any], channels: int) -> dict[str, np.ndarray]:
    """Ray Data batch (numpy format) with PNG ``image`` bytes -> ``{"image": (N, C, H, W) uint8}``."""
    images = decode_images(batch["image"], channels)  # (N, H, W, C)
    return {"image": np.ascontiguousarray(images.transpose(0, 3, 1, 2))}


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
) -> torch.Tensor:
    """``(B, C, H, W)`` uint8 -> float32 in [0, 1] (the paper's preprocessing).

    Dequantisation as the original code: ``x * 255/256 + U(0, 1)/256`` where ``x = u8 / 255``.
    ``random_flip`` mirrors each image horizontally with probability 1/2.
    """
    x = images_uint8.to(torch.float32) / 255.0
    if dequantize:
        noise = torch.rand(x.shape, generator=generator, device=x.device)
        x = x * (255.0 / 256.0) + noise / 256.0
    if random_flip:
        flip = torch.rand((x.shape[0], 1, 1, 1), generator=generator, device=x.device) < 0.5
        x = torch.where(flip, x.flip(-1), x)
    return x
