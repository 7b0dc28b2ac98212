"""Prepared image datasets: a folder of Parquet shards plus a manifest written last.

Layout under the dataset URI (see :mod:`ncsn_ray.io.layout`)::

    shard-00000.parquet, shard-00001.parquet, ...   rows: id int64, image binary (PNG), label int64|null
    _prepare.json                                   the preparation record (written first)
    _manifest.json                                  written last; its presence = complete

The folder reads as one table with ``pyarrow.dataset`` / ``pandas.read_parquet`` /
``ray.data.read_parquet`` (they skip ``_`` names). Datasets prepared by earlier versions
have ``manifest.json`` instead; it is still read.

Manifest (JSON)::

    {"format": "ncsn-dataset", "version": 1, "name": ..., "height": H, "width": W,
     "channels": C, "num_rows": N, "shards": [{"path": ..., "num_rows": n, "first_id": a,
     "last_id": b}, ...], "source": {...}}

Ids are stable: row k of the source gets id k, so a re-run writes identical shards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from ..errors import UserError
from ..io.figures import decode_png, png_bytes
from ..io.layout import MANIFEST
from ..io.sharded import ShardedFolder
from ..io.storage import Storage

__all__ = [
    "DatasetError",
    "DatasetManifest",
    "ShardInfo",
    "SCHEMA",
    "shard_name",
    "write_manifest",
    "read_manifest",
    "decode_images",
    "encode_rows",
    "verify_shards",
    "FOLDER",
    "max_pairwise_distance",
    "dataset_max_distance",
    "MAX_DISTANCE_ROWS",
]

SCHEMA = pa.schema([("id", pa.int64()), ("image", pa.binary()), ("label", pa.int64())])


class DatasetError(UserError):
    """A dataset that cannot be used (missing, incomplete, inconsistent); names the URI."""


FOLDER = ShardedFolder(format="ncsn-dataset", version=1, noun="dataset", error=DatasetError)


@dataclass
class ShardInfo:
    path: str
    num_rows: int
    first_id: int
    last_id: int


@dataclass
class DatasetManifest:
    name: str
    height: int
    width: int
    channels: int
    num_rows: int
    shards: list[ShardInfo]
    source: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The manifest as written (the reference-feature cache keys on it)."""
        return {"format": FOLDER.format, "version": FOLDER.version, **asdict(self)}

    @classmethod
    def from_json(cls, raw: dict[str, Any], uri: str) -> "DatasetManifest":
        """From a manifest :data:`FOLDER` has read (format and shard names checked)."""
        try:
            shards = [ShardInfo(**s) for s in raw["shards"]]
            return cls(
                name=str(raw["name"]),
                height=int(raw["height"]),
                width=int(raw["width"]),
                channels=int(raw["channels"]),
                num_rows=int(raw["num_rows"]),
                shards=shards,
                source=dict(raw.get("source") or {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"{uri}: malformed {MANIFEST} ({err})") from err

    def shard_paths(self, storage: Storage) -> list[str]:
        """Filesystem paths of the shards (for ``ray.data.read_parquet(..., filesystem=storage.fs)``)."""
        return [storage.full(s.path) for s in self.shards]


def verify_shards(storage: Storage, manifest: "DatasetManifest") -> None:
    """Every shard the manifest lists is there and holds the rows it says (Parquet footers
    only); :class:`DatasetError` names the first that is missing or damaged."""
    FOLDER.check_rows(storage, [(shard.path, shard.num_rows) for shard in manifest.shards])


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def encode_rows(images_hwc: np.ndarray, ids: Iterable[int], labels: Iterable[int | None]) -> pa.Table:
    """``(N, H, W, C)`` uint8 images -> a table with :data:`SCHEMA` (images PNG-encoded)."""
    return pa.table(
        {
            "id": pa.array(list(ids), pa.int64()),
            "image": pa.array([png_bytes(img) for img in images_hwc], pa.binary()),
            "label": pa.array(list(labels), pa.int64()),
        },
        schema=SCHEMA,
    )


def write_manifest(storage: Storage, manifest: DatasetManifest) -> None:
    """Write the manifest: call this last, after every shard is in place."""
    FOLDER.write_manifest(storage, asdict(manifest))


def read_manifest(storage: Storage) -> DatasetManifest:
    """The manifest of a complete dataset, or :class:`DatasetError` saying what is wrong."""
    hint = "it holds shards but no manifest: it is incomplete" if storage.exists() else "it does not exist"
    _, raw = FOLDER.read_manifest(storage, absent=f"{storage.uri}: not a prepared dataset ({hint}); prepare it first")
    return DatasetManifest.from_json(raw, storage.uri)


def decode_images(png_column: Iterable[bytes], channels: int) -> np.ndarray:
    """PNG bytes -> ``(N, H, W, C)`` uint8."""
    return np.stack([decode_png(b, channels) for b in png_column])


MAX_DISTANCE_ROWS = 4096  # above this many images the largest distance is taken over a subset


def max_pairwise_distance(flat: np.ndarray) -> float:
    """The largest Euclidean distance between two rows of ``flat`` ``(N, D)`` (exact, chunked)."""
    flat = np.asarray(flat, dtype=np.float64)
    norms = (flat**2).sum(1)
    largest = 0.0
    for start in range(0, len(flat), 512):
        block = flat[start : start + 512]
        sq = norms[start : start + 512, None] + norms[None, :] - 2 * block @ flat.T
        largest = max(largest, float(np.sqrt(max(sq.max(), 0.0))))
    return largest


def dataset_max_distance(storage: Storage, manifest: DatasetManifest) -> tuple[float, int]:
    """``(largest distance between two images, images it was taken over)``, pixels in [0, 1]:
    the value the preparation recorded in the manifest, else computed from the first
    :data:`MAX_DISTANCE_ROWS` images of the shards (exact for smaller datasets)."""
    recorded = manifest.source.get("max_pairwise_distance")
    if isinstance(recorded, (int, float)):
        return float(recorded), int(manifest.source.get("max_pairwise_distance_rows", manifest.num_rows))
    parts, have = [], 0
    for table in iter_tables(storage, manifest):
        images = decode_images(table.column("image").to_pylist()[: MAX_DISTANCE_ROWS - have], manifest.channels)
        parts.append(images.reshape(len(images), -1) / 255.0)
        have += len(images)
        if have >= MAX_DISTANCE_ROWS:
            break
    flat = np.concatenate(parts)
    return max_pairwise_distance(flat), len(flat)


def iter_tables(storage: Storage, manifest: DatasetManifest) -> Iterator[pa.Table]:
    """Read the shards one by one in order (single process; Ray Data is used for training)."""
    for shard in manifest.shards:
        yield storage.read_table(shard.path, schema=SCHEMA)
