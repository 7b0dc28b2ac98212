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

from .format import DatasetManifest, decode_images
from ..io.storage import Storage

__all__ = ["build_train_dataset", "decode_batch", "augment", "WorkerBatches"]


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


class WorkerBatches:
    """Endless iterator of ``(B, C, H, W)`` uint8 batches from one worker's dataset shard.

    Streams ``iter_torch_batches`` every epoch, or (``cache``: ``"on"``, or ``"auto"`` when the
    shard is under ``cache_limit`` bytes) streams the shard once, keeps it on the device and
    draws a fresh permutation per epoch, so small data sets (digits, CIFAR-10) cost no
    per-epoch pipeline start-up.
    """

    def __init__(self, shard, batch_size: int, device: torch.device, *, cache: str, cache_limit: int,
                 item_bytes: int, approx_rows: int, seed: int):
        self.shard, self.batch_size, self.device = shard, batch_size, device
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.cached: torch.Tensor | None = None
        if cache == "on" or (cache == "auto" and approx_rows * item_bytes <= cache_limit):
            # device="cpu": Ray's default ("auto") picks CUDA whenever the worker reserved a GPU.
            parts = [b["image"] for b in shard.iter_torch_batches(batch_size=4096, dtypes={"image": torch.uint8},
                                                                    device="cpu")]
            self.cached = torch.cat(parts).to(device)
            if len(self.cached) < batch_size:
                raise ValueError(
                    f"this worker's share of the data set has {len(self.cached)} images, fewer than its batch "
                    f"size {batch_size}: lower training.batch_size or the number of workers"
                )

    def __iter__(self):
        while True:
            if self.cached is not None:
                order = torch.randperm(len(self.cached), generator=self.generator).to(self.device)
                for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
                    yield self.cached[order[start : start + self.batch_size]]
            else:
                for batch in self.shard.iter_torch_batches(
                    batch_size=self.batch_size,
                    dtypes={"image": torch.uint8},
                    device=self.device,
                    drop_last=True,
                    local_shuffle_buffer_size=max(4 * self.batch_size, 1024),
                ):
                    yield batch["image"]
