"""Prepare a dataset: a source (:mod:`ncsn_ray.data.sources`) -> Parquet shards + manifest in storage.

Layout and row format are :mod:`ncsn_ray.data.format`'s: ``shard-00000.parquet ...`` holding
``id int64, image binary (PNG), label int64|null``, and ``_manifest.json`` written last.
Shard ``k`` holds ids ``k * shard_size .. min((k + 1) * shard_size, N) - 1``; row ``k`` of the
source gets id ``k``, so a re-run produces identical shards.

Besides the shards, ``_prepare.json`` (a preparation record: name, shape, row count, shard
size and the source's identity) is written before the first shard and left in place. It lets
an interrupted run be completed safely:

- manifest present, same dataset (name, shape, source identity, and row count where known
  without loading the source): nothing is written; the manifest is returned.
- manifest present, different dataset: :class:`PrepareError`.
- no manifest: shards already present whose ids check out (row count and id range) are kept,
  missing or unreadable ones are (re)written, shards left over from a larger run are
  deleted, then the manifest is written. If the record names another dataset (name or
  shape): :class:`PrepareError`; if it names the same dataset from a changed source (e.g. an
  image folder whose files changed), every shard is rewritten.
- Parquet files that are not ours (other names, or another schema) in the output:
  :class:`PrepareError`; nothing is written.

Progress goes through ``log`` (one line per shard with rows/s). Storage URIs are shown
without any user-info part; endpoints and credentials are never logged.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .format import (
    MANIFEST,
    MAX_DISTANCE_ROWS,
    SCHEMA,
    DatasetError,
    DatasetManifest,
    ShardInfo,
    encode_rows,
    max_pairwise_distance,
    read_manifest,
    shard_name,
    write_manifest,
)
from ..console import Log
from ..errors import begin_work
from ..io.layout import PREPARE_RECORD, existing_name
from .sources import SourceSpec, SourceUsageError, describe, open_source, static_spec
from ..io.storage import Storage, StorageError

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "PrepareError",
    "PrepareOptions",
    "run",
    "prepare_dataset",
    "ensure_prepared",
]

DEFAULT_SHARD_SIZE = 10_000
RECORD_FORMAT = "ncsn-dataset-prepare"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.parquet$")

ShardHook = Callable[[int, ShardInfo, bool], None]


class PrepareError(DatasetError):
    """The output cannot take this dataset (holds another one, foreign files, damaged)."""


@dataclass
class PrepareOptions:
    """What ``jobs/prepare_data.py`` asks for (see :func:`prepare_dataset` for each field)."""

    dataset: str
    out: str
    shard_size: int | None = None
    root: str | None = None
    image_size: int | None = None
    channels: int | None = None
    endpoint_url: str | None = None
    download: bool = True


def run(options: PrepareOptions, *, log: Log = print) -> dict[str, Any]:
    """Prepare ``options.dataset`` into ``options.out``; a summary of the manifest."""
    manifest = prepare_dataset(
        options.dataset,
        options.out,
        shard_size=options.shard_size,
        root=options.root,
        image_size=options.image_size,
        channels=options.channels,
        endpoint_url=options.endpoint_url,
        download=options.download,
        log=log,
    )
    return {"out": options.out, "name": manifest.name, "num_rows": manifest.num_rows, "shards": len(manifest.shards),
            "shape": [manifest.height, manifest.width, manifest.channels]}


def prepare_dataset(
    dataset: str,
    out_uri: str,
    *,
    shard_size: int | None = None,
    root: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    endpoint_url: str | None = None,
    download: bool = True,
    log: Log = print,
    on_shard: ShardHook | None = None,
) -> DatasetManifest:
    """Write ``dataset`` as Parquet shards plus a manifest under ``out_uri``; return the manifest.

    ``dataset``: one of :data:`ncsn_ray.data.sources.DATASETS`. ``shard_size``: rows per shard
    (default: the unfinished run's size if one is being completed, else
    :data:`DEFAULT_SHARD_SIZE`). ``root``: the folder of images (imagefolder) or of the
    torchvision files (mnist, cifar10, celeba). ``image_size``/``channels``: imagefolder's
    output shape (``S x S x C``); for other datasets only their native values are accepted.
    ``endpoint_url``: S3-compatible endpoint (else ``AWS_ENDPOINT_URL[_S3]``). ``download``:
    allow torchvision to download missing files.

    ``on_shard(index, info, written)`` is called after each shard is in place (``written``
    False when an existing shard was kept). An exception raised from it aborts the run
    before the manifest is written, exactly like an interruption; tests use this.

    Raises :class:`~ncsn_ray.data.sources.SourceUsageError` (bad options),
    :class:`~ncsn_ray.data.sources.SourceError` (missing source, unreadable image),
    :class:`PrepareError` (output holds something else), :class:`~ncsn_ray.io.storage.StorageError`
    (output unreachable or unwritable).
    """
    if shard_size is not None and int(shard_size) < 1:
        raise SourceUsageError(f"shard size must be at least 1, got {shard_size}")
    spec = describe(dataset, root=root, image_size=image_size, channels=channels)
    storage = Storage.from_uri(out_uri, endpoint_url=endpoint_url)
    shown = _display(storage.uri)
    if storage.is_file():
        raise PrepareError(f"{shown} is a file; --out must name a folder (or prefix)")

    done = _complete_manifest(storage, spec, shown)
    if done is not None:
        log(f"{shown}: already holds the complete {spec.name} dataset ({_summary(done)}); nothing to do")
        return done

    existing = _inspect_output(storage, shown)
    record = _read_record(storage)
    if record is not None and (record.get("name"), record.get("shape")) != (spec.name, list(spec.shape)):
        raise PrepareError(
            f"{shown} holds an unfinished preparation of another dataset "
            f"({record.get('name')} {record.get('shape')}); choose another --out, or delete it to start over"
        )
    created = storage.is_local and not storage.exists()
    storage.check_writable()

    t_open = time.perf_counter()
    try:
        source = open_source(spec, root=root, download=download)
    except BaseException:
        if created and not storage.list():  # leave no empty folder behind for a source that failed
            storage.delete("")
        raise
    spec = source.spec
    if time.perf_counter() - t_open > 2:
        log(f"{spec.name}: source loaded in {time.perf_counter() - t_open:.1f} s")

    reuse = True
    if record is not None:
        if record.get("identity") != spec.identity or record.get("num_rows") != spec.num_rows:
            log(f"{shown}: the {spec.name} source changed since the unfinished run; rewriting every shard")
            reuse = False
        elif shard_size is None and isinstance(record.get("shard_size"), int) and record["shard_size"] > 0:
            shard_size = record["shard_size"]
    shard_size = int(shard_size or DEFAULT_SHARD_SIZE)

    num_rows = int(spec.num_rows or 0)
    num_shards = math.ceil(num_rows / shard_size)
    begin_work()
    storage.write_json(
        PREPARE_RECORD,
        {
            "format": RECORD_FORMAT,
            "name": spec.name,
            "shape": list(spec.shape),
            "num_rows": num_rows,
            "shard_size": shard_size,
            "identity": spec.identity,
        },
    )
    log(
        f"preparing {spec.name}: {num_rows} rows of {spec.height}x{spec.width}x{spec.channels} "
        f"in {num_shards} shard(s) of up to {shard_size} -> {shown}"
    )

    t0 = time.perf_counter()
    written_rows = kept = 0
    shards: list[ShardInfo] = []
    for k in range(num_shards):
        first, stop = k * shard_size, min(num_rows, (k + 1) * shard_size)
        info = ShardInfo(path=shard_name(k), num_rows=stop - first, first_id=first, last_id=stop - 1)
        ids = existing.get(info.path)
        if reuse and ids is not None and _ids_match(ids, first, stop):
            kept += 1
            info.sha256 = hashlib.sha256(storage.read_bytes(info.path)).hexdigest()
            log(f"shard {k + 1}/{num_shards} kept: {info.num_rows} rows already present")
            written = False
        else:
            images, labels = source.read(first, stop)
            info.sha256 = storage.write_table(info.path, encode_rows(images, range(first, stop), labels))
            written_rows += info.num_rows
            rate = written_rows / max(time.perf_counter() - t0, 1e-9)
            log(f"shard {k + 1}/{num_shards} written: {info.num_rows} rows ({rate:,.0f} rows/s)")
            written = True
        shards.append(info)
        if on_shard is not None:
            on_shard(k, info, written)

    for name in sorted(existing):
        match = _SHARD_RE.match(name)
        if match and int(match.group(1)) >= num_shards:
            storage.delete(name)
            log(f"deleted {name}: left over from an earlier run with other shard sizes")

    distance, over = _largest_distance(source, num_rows)
    log(f"largest distance between two images: {distance:.4g} (over {over} of {num_rows}; NCSNv2's sigma_1)")
    manifest = DatasetManifest(
        name=spec.name,
        height=spec.height,
        width=spec.width,
        channels=spec.channels,
        num_rows=num_rows,
        shards=shards,
        source={**spec.details, **spec.identity, "shard_size": shard_size, "max_pairwise_distance": distance,
                "max_pairwise_distance_rows": over},
    )
    write_manifest(storage, manifest)
    elapsed = time.perf_counter() - t0
    log(
        f"done: {spec.name}, {num_rows} rows in {num_shards} shard(s) "
        f"({num_shards - kept} written, {kept} kept) in {elapsed:.1f} s -> {shown}/{MANIFEST}"
    )
    return manifest


def _largest_distance(source, num_rows: int) -> tuple[float, int]:
    """The largest distance between two images (pixels in [0, 1]): exact up to
    :data:`MAX_DISTANCE_ROWS` images, else over that many rows drawn at random (seed 0), a
    lower bound of the true value. Returns the distance and the number of images used."""
    if num_rows <= MAX_DISTANCE_ROWS:
        images, _ = source.read(0, num_rows)
    else:
        rows = np.sort(np.random.default_rng(0).choice(num_rows, MAX_DISTANCE_ROWS, replace=False))
        images = np.concatenate([source.read(int(r), int(r) + 1)[0] for r in rows])
    flat = images.reshape(len(images), -1) / 255.0
    return max_pairwise_distance(flat), len(flat)


def ensure_prepared(dataset: str, out_uri: str, *, image_size: int | None = None, channels: int | None = None,
                    endpoint_url: str | None = None, log: Log = print, **prepare_kwargs: Any) -> DatasetManifest:
    """The manifest under ``out_uri`` if it is complete and holds ``dataset`` (same name and
    shape; the source is not opened, so a training job needs neither internet nor the source
    files once the data is prepared); otherwise :func:`prepare_dataset` with the same
    arguments (``prepare_kwargs``: its ``shard_size``, ``root``, ``download``, ``on_shard``)."""
    expected = static_spec(dataset, image_size=image_size, channels=channels)
    storage = Storage.from_uri(out_uri, endpoint_url=endpoint_url)
    if existing_name(storage, MANIFEST) is not None:
        manifest = _load_manifest(storage, _display(storage.uri))
        if (manifest.name, manifest.height, manifest.width, manifest.channels) == (expected.name, *expected.shape):
            log(f"{_display(storage.uri)}: prepared {manifest.name} dataset found ({_summary(manifest)})")
            return manifest
    return prepare_dataset(dataset, out_uri, image_size=image_size, channels=channels, endpoint_url=endpoint_url,
                           log=log, **prepare_kwargs)


# --------------------------------------------------------------------------- helpers


def _display(uri: str) -> str:
    """The URI without any ``user:password@`` part (never log credentials)."""
    parsed = urlparse(uri)
    if parsed.scheme and "@" in parsed.netloc:
        return parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[1]).geturl()
    return uri


def _summary(manifest: DatasetManifest) -> str:
    return (
        f"{manifest.height}x{manifest.width}x{manifest.channels}, {manifest.num_rows} rows, "
        f"{len(manifest.shards)} shard(s)"
    )


def _load_manifest(storage: Storage, shown: str) -> DatasetManifest:
    try:
        return read_manifest(storage)
    except (DatasetError, StorageError) as err:
        raise PrepareError(
            f"{shown} holds a {MANIFEST} that is not a readable ncsn dataset manifest ({err}); "
            "choose another --out"
        ) from None


def _complete_manifest(storage: Storage, spec: SourceSpec, shown: str) -> DatasetManifest | None:
    """The manifest if the output already holds this dataset complete; None if no manifest;
    :class:`PrepareError` if it holds another dataset or its shards are gone."""
    if existing_name(storage, MANIFEST) is None:
        return None
    manifest = _load_manifest(storage, shown)
    have = (manifest.name, manifest.height, manifest.width, manifest.channels)
    want = (spec.name, *spec.shape)
    differences = []
    if have != want:
        differences.append(f"it holds {manifest.name} {manifest.height}x{manifest.width}x{manifest.channels}")
    elif spec.num_rows is not None and manifest.num_rows != spec.num_rows:
        differences.append(f"it holds {manifest.num_rows} rows, the source has {spec.num_rows}")
    else:
        changed = [k for k, v in spec.identity.items() if manifest.source.get(k) != v]
        if changed:
            differences.append(f"its source differs in {', '.join(changed)}")
    if differences:
        raise PrepareError(
            f"{shown} already holds a different dataset than {spec.summary()}: {differences[0]}; "
            "choose another --out, or delete it to prepare this one there"
        )
    present = set(storage.list())
    missing = [s.path for s in manifest.shards if s.path not in present]
    if missing:
        raise PrepareError(
            f"{shown}: {MANIFEST} is present but {len(missing)} shard(s) are missing (e.g. {missing[0]}); "
            f"delete {MANIFEST} and re-run to rewrite them"
        )
    return manifest


def _inspect_output(storage: Storage, shown: str) -> dict[str, np.ndarray | None]:
    """``{shard name: ids (or None if unreadable)}`` for our shards already present.

    Raises :class:`PrepareError` if the output holds Parquet files that are not ours."""
    found: dict[str, np.ndarray | None] = {}
    for name in storage.list():
        if not name.lower().endswith(".parquet"):
            continue
        if not _SHARD_RE.match(name):
            raise PrepareError(
                f"{shown} holds Parquet files that are not shards of a prepared dataset (e.g. {name}); "
                "choose another --out"
            )
        found[name] = _read_shard_ids(storage, name, shown)
    return found


def _read_shard_ids(storage: Storage, name: str, shown: str) -> np.ndarray | None:
    """The id column of an existing shard; None if it cannot be read (it will be rewritten)."""
    try:
        with storage.fs.open_input_file(storage.full(name)) as f:
            parquet = pq.ParquetFile(f)
            schema = parquet.schema_arrow
            if [(fl.name, fl.type) for fl in schema] != [(fl.name, fl.type) for fl in SCHEMA]:
                raise PrepareError(
                    f"{shown}/{name} is a Parquet file with another schema ({schema.to_string(show_schema_metadata=False)!r}); "
                    "the output holds files that are not ours; choose another --out"
                )
            return parquet.read(columns=["id"]).column("id").to_numpy(zero_copy_only=False)
    except (OSError, pa.ArrowException, ValueError):
        return None


def _ids_match(ids: np.ndarray, first: int, stop: int) -> bool:
    return len(ids) == stop - first and bool(np.array_equal(ids, np.arange(first, stop, dtype=np.int64)))


def _read_record(storage: Storage) -> dict[str, Any] | None:
    """The preparation record of an earlier run, or None (absent or unreadable)."""
    if not storage.exists(PREPARE_RECORD):
        return None
    try:
        record = storage.read_json(PREPARE_RECORD)
    except StorageError:
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None
