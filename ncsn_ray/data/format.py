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

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from ..errors import DamagedInput, UserError
from ..io.figures import decode_pngs, png_bytes
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
    "iter_images",
    "DamagedDataset",
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


class DamagedDataset(DatasetError, DamagedInput):
    """A dataset whose shard contents do not decode or contradict the manifest (exit 2 even
    when found mid-run: see :class:`~ncsn_ray.errors.DamagedInput`)."""


FOLDER = ShardedFolder(format="ncsn-dataset", version=1, noun="dataset", error=DatasetError)


@dataclass
class ShardInfo:
    path: str
    num_rows: int
    first_id: int
    last_id: int
    sha256: str | None = None  # of the shard's bytes (hex); None in manifests written before it was recorded


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
        """From a manifest :data:`FOLDER` has read (format, version, shard names and row
        counts checked): the shape, the ids and the total are checked here."""
        where = f"{uri}: {MANIFEST}"
        shape = [FOLDER.require_int(raw, key, where, minimum=1) for key in ("height", "width", "channels")]
        if shape[2] not in (1, 3):
            raise DatasetError(f"{where}: channels must be 1 or 3, got {shape[2]}")
        num_rows = FOLDER.require_int(raw, "num_rows", where, minimum=1)
        if not isinstance(raw.get("name"), str) or not isinstance(raw.get("source", {}), (dict, type(None))):
            raise DatasetError(f"{where}: malformed (name must be a string, source a mapping)")
        shards = []
        for s in raw["shards"]:
            known = {"path", "num_rows", "first_id", "last_id", "sha256"}
            if set(s) - known:
                raise DatasetError(f"{where}: shard {s['path']}: unknown keys {sorted(set(s) - known)}")
            first, last = (FOLDER.require_int(s, key, f"{where}: shard {s['path']}") for key in ("first_id", "last_id"))
            if last - first + 1 != s["num_rows"]:
                raise DatasetError(f"{where}: shard {s['path']} holds ids {first}..{last} but {s['num_rows']} rows")
            if s.get("sha256") is not None and not isinstance(s["sha256"], str):
                raise DatasetError(f"{where}: shard {s['path']}: sha256 must be a string")
            shards.append(ShardInfo(s["path"], s["num_rows"], first, last, s.get("sha256")))
        if sum(shard.num_rows for shard in shards) != num_rows:
            raise DatasetError(f"{where}: num_rows is {num_rows} but the shards hold "
                               f"{sum(shard.num_rows for shard in shards)}")
        return cls(name=raw["name"], height=shape[0], width=shape[1], channels=shape[2], num_rows=num_rows,
                   shards=shards, source=dict(raw.get("source") or {}))

    def shard_paths(self, storage: Storage) -> list[str]:
        """Filesystem paths of the shards (for ``ray.data.read_parquet(..., filesystem=storage.fs)``)."""
        return [storage.full(s.path) for s in self.shards]


def verify_shards(storage: Storage, manifest: "DatasetManifest", *, contents: bool = False) -> None:
    """Every shard the manifest lists is there and holds the rows it says (Parquet footers
    only); :class:`DatasetError` names the first that is missing or damaged. With
    ``contents``, every shard is also read whole and its SHA-256 compared with the one the
    manifest recorded (:class:`DamagedDataset` if it changed); a job does this before its
    work begins when it reads the whole dataset anyway (training's in-memory path)."""
    FOLDER.check_rows(storage, [(shard.path, shard.num_rows) for shard in manifest.shards])
    if not contents:
        return
    for shard in manifest.shards:
        if shard.sha256 is not None and hashlib.sha256(storage.read_bytes(shard.path)).hexdigest() != shard.sha256:
            raise DamagedDataset(f"{storage.uri_of(shard.path)}: the shard's bytes changed since the dataset was "
                                 "prepared (SHA-256 differs from the manifest's); prepare the dataset again")


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


def decode_images(png_column: Iterable[bytes], channels: int, *, size: tuple[int, int] | None = None,
                  where: str = "a dataset shard") -> np.ndarray:
    """PNG bytes -> ``(N, H, W, C)`` uint8, every image of ``size`` ``(H, W)`` when given
    (else of one common size); :class:`DamagedDataset` naming ``where`` otherwise."""
    try:
        return decode_pngs(list(png_column), channels, size)
    except DamagedInput as err:
        raise DamagedDataset(f"{where}: {err}") from None


def iter_images(storage: Storage, manifest: DatasetManifest, limit: int | None = None) -> Iterator[np.ndarray]:
    """The dataset's images shard by shard, in manifest order, as ``(n, H, W, C)`` uint8
    arrays of the manifest's shape (at most ``limit`` images in all); a shard that does not
    decode raises :class:`DamagedDataset` naming it."""
    have = 0
    for shard in manifest.shards:
        if limit is not None and have >= limit:
            return
        rows = storage.read_table(shard.path, schema=SCHEMA, columns=["image"]).column("image").to_pylist()
        if limit is not None:
            rows = rows[: limit - have]
        yield decode_images(rows, manifest.channels, size=(manifest.height, manifest.width),
                            where=storage.uri_of(shard.path))
        have += len(rows)


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
    flat = np.concatenate([images.reshape(len(images), -1) / 255.0
                           for images in iter_images(storage, manifest, MAX_DISTANCE_ROWS)])
    return max_pairwise_distance(flat), len(flat)


def iter_tables(storage: Storage, manifest: DatasetManifest) -> Iterator[pa.Table]:
    """Read the shards one by one in order (single process; Ray Data is used for training)."""
    for shard in manifest.shards:
        yield storage.read_table(shard.path, schema=SCHEMA)
