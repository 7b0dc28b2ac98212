"""Test data made in the test: digits images, prepared datasets, sample sets, a tiny trained run.

Everything is written with the project's own formats (``ncsn_ray.data.format``,
``ncsn_ray.sample.sample_set``, ``ncsn_core.save_checkpoint``), on local disk or the moto S3 server.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ncsn_core import build_model, config_from_dict, dsm_loss, geometric_sigmas, save_checkpoint, train_step
from ncsn_ray.data.format import DatasetManifest, ShardInfo, encode_rows, write_manifest
from ncsn_ray.io.figures import png_bytes
from ncsn_ray.sample.sample_set import GENERATE_SCHEMA, FolderState, make_job_spec, open_sample_set, plan_units
from ncsn_ray.sample.sample_set import write_manifest as write_sample_manifest
from ncsn_ray.io.storage import Storage

TINY_RUN_CONFIG = {
    "name": "tiny",
    "data": {"dataset": "digits", "image_size": 8, "channels": 1},
    "model": {"ngf": 4},
    "noise": {"num_levels": 3},
    "sampling": {"steps_per_level": 2, "batch_size": 4},
}


def digits_uint8(n: int) -> np.ndarray:
    """The first ``n`` scikit-learn digits as ``(n, 8, 8, 1)`` uint8 (the prepare job's transform)."""
    from sklearn.datasets import load_digits

    return np.floor(load_digits().images[:n] * 255 / 16 + 0.5).astype(np.uint8)[..., None]


def write_dataset(storage: Storage, images: np.ndarray, shard_size: int = 8, *, first_id: int = 0,
                  manifest: bool = True) -> None:
    """A prepared dataset (ids ``first_id, first_id + 1, ...``) written with ncsn_ray.data.format."""
    shards = []
    for index, start in enumerate(range(0, len(images), shard_size)):
        chunk = images[start : start + shard_size]
        ids = list(range(first_id + start, first_id + start + len(chunk)))
        name = f"shard-{index:05d}.parquet"
        storage.write_table(name, encode_rows(chunk, ids, [None] * len(chunk)))
        shards.append(ShardInfo(name, len(chunk), ids[0], ids[-1]))
    if manifest:
        h, w, c = images.shape[1:]
        write_manifest(storage, DatasetManifest("digits", h, w, c, len(images), shards))


def write_sample_set(storage: Storage, images: np.ndarray, *, shard_size: int = 8, complete: bool = True) -> None:
    """A sample set in the generation job's format (seeds 0..n-1), built with ncsn_ray.sample.sample_set."""
    c = images.shape[-1]
    identity = {"n": len(images), "seed": 0, "shard_size": shard_size, "image_shape": [c, *images.shape[1:3]]}
    spec = make_job_spec("generate", identity, {"made_by": "test"})
    assert open_sample_set(storage, spec) is FolderState.NEW
    units = plan_units("generate", len(images), shard_size)
    for unit in units:
        table = pa.table(
            {
                "seed": pa.array(range(unit.first, unit.last + 1), pa.int64()),
                "image": pa.array([png_bytes(img) for img in images[unit.start : unit.stop]], pa.binary()),
            },
            schema=GENERATE_SCHEMA,
        )
        storage.write_table(unit.name, table)
    if complete:
        write_sample_manifest(storage, spec, units, image_shape=(c, *images.shape[1:3]))


def make_tiny_run(run: Path, steps: int = 3, config: dict | None = None) -> Path:
    """Train ``config`` (default :data:`TINY_RUN_CONFIG`) for a few DSM steps on digits; save
    ``run/checkpoint_000001``."""
    config = config_from_dict(config or TINY_RUN_CONFIG)
    torch.manual_seed(0)
    model = build_model(config)
    sigmas = geometric_sigmas(1.0, 0.01, 3)
    x = torch.from_numpy(digits_uint8(64)).permute(0, 3, 1, 2).float() / 255
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny work: extra threads only spin on a busy machine
    try:
        for _ in range(steps):
            train_step(model, optimiser, dsm_loss, x, sigmas)
    finally:
        torch.set_num_threads(threads)
    folder = run / "checkpoint_000001"
    save_checkpoint(folder / "checkpoint.pt", model=model, config=config, sigmas=sigmas, step=steps)
    (folder / "step.txt").write_text(str(steps))
    return folder / "checkpoint.pt"
