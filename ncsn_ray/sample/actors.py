"""Ray Data callable classes that sample one shard per call and write it to storage.

Both take one descriptor row per call (``name``, ``start``, ``stop``, ``first``, ``last``:
see :class:`ncsn_ray.sample.sample_set.WorkUnit`) and return one status row (``name``, ``count``,
``seconds``, ``pid``). The shard is written as one object, so a shard that exists is
complete. After each level of annealing they post the shard's progress to the job's
:class:`~ncsn_ray.sample.pipeline.ProgressBoard`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..train.checkpoints import PinnedCheckpoint, load_pinned
from ..data.format import SCHEMA as DATASET_SCHEMA
from ..errors import JobFailed, NcsnError, UserError
from ..io.figures import decode_png, image_grid, png_bytes, to_uint8
from ..io.layout import STRIP
from ..cluster import fake_gpus
from ..testing import faults
from .sampler import Sampler, SamplerSettings, image_mask, inpaint_seed
from .sample_set import GENERATE_SCHEMA, INPAINT_SCHEMA
from ..io.storage import Storage

__all__ = ["GenerateShards", "InpaintShards", "OCCLUDED_FILL"]

OCCLUDED_FILL = 0.5  # unknown pixels are shown mid-grey in the occluded images


def _device(use_gpu: bool) -> torch.device:
    if use_gpu:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if fake_gpus():  # tests on a simulated cluster: the GPU this actor reserved is not real
            return torch.device("cpu")
        raise UserError("use_gpu is set but this worker sees no CUDA device")
    return torch.device("cpu")


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class _ShardActor:
    """Shared set-up: the pinned checkpoint as a :class:`Sampler`, the output folder and the
    progress board."""

    def __init__(self, *, checkpoint: dict[str, Any], settings: dict[str, Any], batch_size: int, out_uri: str,
                 endpoint_url: str | None, use_gpu: bool, threads: int, board: Any = None):
        if not use_gpu:
            torch.set_num_threads(max(1, threads))
        pinned = PinnedCheckpoint(**checkpoint)
        self.sampler = Sampler.from_checkpoint(load_pinned(pinned, endpoint_url=endpoint_url),
                                               SamplerSettings(**settings), _device(use_gpu))
        self.batch_size = batch_size
        self.out = Storage.from_uri(out_uri, endpoint_url=endpoint_url)
        self.endpoint_url = endpoint_url
        self.board = board
        self.shards_written = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Compute one shard; an unexpected error becomes a :class:`JobFailed` naming the shard."""
        name = str(batch["name"][0])
        try:
            return self.compute(name, int(batch["start"][0]), int(batch["stop"][0]), int(batch["first"][0]),
                                int(batch["last"][0]))
        except NcsnError:
            raise
        except Exception as err:  # noqa: BLE001 - reported with the shard it broke
            raise JobFailed(
                f"shard {self.out.uri_of(name)} failed ({type(err).__name__}: {err}); finished shards are kept, "
                "re-run the same command to resume"
            ) from err

    def compute(self, name: str, start: int, stop: int, first: int, last: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _progress(self, name: str, batches: int):
        """An ``on_level`` callback for batch ``b`` of ``batches`` of shard ``name``."""
        if self.board is None:
            return lambda b: None

        def for_batch(b: int):
            def on_level(done: int, levels: int) -> None:
                self.board.post.remote(name, (b + done / levels) / batches)

            return on_level

        return for_batch

    def _finish(self, name: str, count: int, started: float) -> dict[str, np.ndarray]:
        if self.board is not None:
            self.board.finish.remote(name)
        self.shards_written += 1
        faults.after_shard(self.shards_written, self.out)
        return {
            "name": np.array([name]),
            "count": np.array([count], dtype=np.int64),
            "seconds": np.array([time.perf_counter() - started]),
            "pid": np.array([os.getpid()], dtype=np.int64),
        }


class GenerateShards(_ShardActor):
    """One seed range (``first``..``last`` inclusive) in, one shard of (seed, PNG) rows out.

    With ``strip_frames`` K > 0, the actor that computes the job's first batch also draws
    the annealing strip (paper Fig. 4) of its first ``strip_rows`` seeds into ``_annealing.png``:
    one row per seed, K frames from the initial noise to the final sample.
    """

    def __init__(self, *, strip_frames: int = 0, strip_rows: int = 8, first_seed: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.strip_frames, self.strip_rows, self.first_seed = strip_frames, strip_rows, first_seed

    def _sample(self, b: int, chunk: list[int], on_level) -> np.ndarray:
        if not (self.strip_frames and chunk[0] == self.first_seed):
            return self.sampler.sample(chunk, on_level=on_level)
        images, frames = self.sampler.sample_with_frames(chunk, self.strip_frames, on_level=on_level)
        rows = frames[:, : self.strip_rows].transpose(1, 0, 2, 3, 4)  # (rows, K, H, W, C)
        tiles = rows.reshape(-1, *rows.shape[2:])
        self.out.write_png(STRIP, image_grid(tiles, nrow=self.strip_frames, scale=max(1, 48 // tiles.shape[1])))
        return images

    def compute(self, name: str, start: int, stop: int, first: int, last: int) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        seeds = list(range(first, last + 1))
        chunks = _chunks(seeds, self.batch_size)
        progress = self._progress(name, len(chunks))
        images = [img for b, chunk in enumerate(chunks) for img in self._sample(b, chunk, progress(b))]
        table = pa.table(
            {"seed": pa.array(seeds, pa.int64()), "image": pa.array([png_bytes(i) for i in images], pa.binary())},
            schema=GENERATE_SCHEMA,
        )
        self.out.write_table(name, table)
        return self._finish(name, len(seeds), started)


class InpaintShards(_ShardActor):
    """Rows ``[start, stop)`` of a prepared dataset in (positions in its shard order), one
    shard of inpaintings out: per image the mask, the occluded image, K inpaintings and the
    original. Each (image id, k) has its own seed (:func:`~ncsn_ray.sample.sampler.inpaint_seed`)."""

    def __init__(self, *, data_uri: str, data_shards: list[dict[str, Any]], mask: dict[str, Any],
                 samples_per_image: int, seed: int, renoise: str = "level", **kwargs: Any):
        super().__init__(**kwargs)
        self.renoise = renoise
        self.data = Storage.from_uri(data_uri, endpoint_url=self.endpoint_url)
        self.data_shards = data_shards
        self.offsets = np.cumsum([0] + [s["num_rows"] for s in data_shards])
        self.mask_kind = mask["kind"]
        self.file_mask = None if mask.get("array") is None else np.asarray(mask["array"], dtype=bool)
        self.k = samples_per_image
        self.seed = seed
        self._cache: tuple[int, pa.Table] | None = None

    def _shard_table(self, index: int) -> pa.Table:
        if self._cache is None or self._cache[0] != index:
            self._cache = (index, self.data.read_table(self.data_shards[index]["path"], schema=DATASET_SCHEMA))
        return self._cache[1]

    def _rows(self, start: int, stop: int) -> tuple[list[int], list[bytes]]:
        ids: list[int] = []
        pngs: list[bytes] = []
        for index in range(len(self.data_shards)):
            lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
            if hi <= start or lo >= stop:
                continue
            table = self._shard_table(index).slice(max(start, lo) - lo, min(stop, hi) - max(start, lo))
            ids += table.column("id").to_pylist()
            pngs += table.column("image").to_pylist()
        return ids, pngs

    def compute(self, name: str, start: int, stop: int, first: int, last: int) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        shape = self.sampler.shape
        ids, pngs = self._rows(start, stop)
        originals = torch.from_numpy(np.stack([decode_png(b, shape[0]) for b in pngs])).permute(0, 3, 1, 2).float() / 255
        masks = torch.stack(
            [image_mask(self.mask_kind, shape, seed=self.seed, source_id=i, file_mask=self.file_mask) for i in ids]
        )
        pairs = [(r, k) for r in range(len(ids)) for k in range(self.k)]
        chunks = _chunks(pairs, self.batch_size)
        progress = self._progress(name, len(chunks))
        results: dict[tuple[int, int], np.ndarray] = {}
        for b, chunk in enumerate(chunks):
            rows = [r for r, _ in chunk]
            seeds = [inpaint_seed(self.seed, ids[r], k) for r, k in chunk]
            images = self.sampler.inpaint(seeds, originals[rows], masks[rows], renoise=self.renoise,
                                          on_level=progress(b))
            results.update(zip(chunk, images))
        occluded = torch.where(masks, originals, torch.full_like(originals, OCCLUDED_FILL))
        mask_u8 = to_uint8(masks[:, :1].float())
        table = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "seeds": pa.array([[inpaint_seed(self.seed, i, k) for k in range(self.k)] for i in ids], pa.list_(pa.int64())),
                "mask": pa.array([png_bytes(m) for m in mask_u8], pa.binary()),
                "occluded": pa.array([png_bytes(o) for o in to_uint8(occluded)], pa.binary()),
                "inpaintings": pa.array(
                    [[png_bytes(results[(r, k)]) for k in range(self.k)] for r in range(len(ids))], pa.list_(pa.binary())
                ),
                "original": pa.array(pngs, pa.binary()),
            },
            schema=INPAINT_SCHEMA,
        )
        self.out.write_table(name, table)
        return self._finish(name, len(ids), started)
