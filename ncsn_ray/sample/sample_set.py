"""Sample sets: Parquet shards named by seed range, a job spec written first, a manifest last.

Layout under a sample-set URI (``kind`` ``"generate"``; names from :mod:`ncsn_ray.io.layout`)::

    _job.json                                written first: what the job computes
    samples-000000-000999.parquet, ...       one row per seed: seed int64, image binary (PNG)
    _grid.png                                the first samples as one picture
    _annealing.png                           optional: samples forming across the noise levels
    _manifest.json                           written last; its presence = complete
    _scores.json                             written by jobs/evaluate.py

and for inpainting (``kind`` ``"inpaint"``)::

    _job.json
    inpaint-000000-000099.parquet, ...       rows [first, last] (positions in the source dataset)
    _figure.png                              paper Fig. 6 layout: occluded | K inpaintings | original
    _scores.json                             8x8 grey digits: label agreement, diversity, known-pixel
                                             change (written by the job before the manifest, and
                                             by jobs/evaluate.py --metrics inpaint)
    _manifest.json

Everything but the shards starts with ``_``, so the folder reads as one table with
``pyarrow.dataset``, ``pandas.read_parquet`` or ``ray.data.read_parquet``. Sets written by
earlier versions (``job.json``, ``manifest.json``) are still read and resumed.

A shard is written as one object, so a shard that exists is complete. The job spec holds an
``identity`` (everything that decides the pixels and the shard layout: checkpoint digest,
sampler settings, seeds, batch and shard sizes, image shape) and an ``info`` part (URIs,
times, versions) that is recorded but not compared. Re-running a job into the same folder
computes only the shards that are missing; a job whose identity differs is refused.

Image convention: PNG, uint8, ``(H, W, C)`` with C = 1 (grey) or 3 (RGB); pixel value
``round(255 * x)`` of the sampler's ``x`` in ``[0, 1]`` (clamped).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from ..errors import DamagedInput, UserError
from ..io.figures import decode_pngs
from ..io.layout import JOB_SPEC, MANIFEST, existing_name
from ..io.sharded import ShardedFolder
from ..io.storage import Storage, StorageError, json_bytes, utc_timestamp

__all__ = [
    "FolderState",
    "SampleSetError",
    "WorkUnit",
    "GENERATE_SCHEMA",
    "INPAINT_SCHEMA",
    "plan_units",
    "make_job_spec",
    "open_sample_set",
    "finished_units",
    "recorded_identity",
    "write_manifest",
    "read_sample_manifest",
    "iter_sample_images",
    "first_rows",
]

KINDS = {"generate": "samples", "inpaint": "inpaint"}  # kind -> shard name prefix

GENERATE_SCHEMA = pa.schema([("seed", pa.int64()), ("image", pa.binary())])
INPAINT_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),  # source dataset id
        ("seeds", pa.list_(pa.int64())),  # one per inpainting
        ("mask", pa.binary()),  # PNG, 255 = known pixel, 0 = filled in
        ("occluded", pa.binary()),  # PNG, unknown pixels shown grey
        ("inpaintings", pa.list_(pa.binary())),  # K PNGs
        ("original", pa.binary()),  # PNG
    ]
)


class SampleSetError(UserError):
    """A sample set that cannot be written or read as asked; the message names the URI."""


class DamagedSampleSet(SampleSetError, DamagedInput):
    """A sample set whose shards do not decode (exit 2 even mid-run: see
    :class:`~ncsn_ray.errors.DamagedInput`)."""


FOLDER = ShardedFolder(format="ncsn-samples", version=1, noun="sample-set", error=SampleSetError)


@dataclass(frozen=True)
class WorkUnit:
    """One shard of work: positions ``[start, stop)`` and the shard file it produces.

    For generation the positions are ``k`` with seeds ``seed + k``, and ``first``/``last``
    (inclusive) are seeds; for inpainting they are row positions in the source dataset.
    """

    name: str
    start: int
    stop: int
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.stop - self.start


def plan_units(kind: str, total: int, shard_size: int, *, offset: int = 0) -> list[WorkUnit]:
    """Split positions ``[0, total)`` into shards of ``shard_size`` (the last may be shorter).

    Shard files are named ``{prefix}-{first:06d}-{last:06d}.parquet`` with ``first = offset +
    start`` (seed or row position). The plan depends only on its arguments, never on how
    many workers run it.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown sample-set kind {kind!r}")
    if total < 1 or shard_size < 1:
        raise ValueError(f"need total >= 1 and shard_size >= 1 (got {total}, {shard_size})")
    units = []
    for start in range(0, total, shard_size):
        stop = min(start + shard_size, total)
        first, last = offset + start, offset + stop - 1
        units.append(WorkUnit(f"{KINDS[kind]}-{first:06d}-{last:06d}.parquet", start, stop, first, last))
    return units


def _normalise(value: Any) -> Any:
    """Round-trip through JSON so tuples, numpy scalars and floats compare as stored."""
    return json.loads(json.dumps(value, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def make_job_spec(kind: str, identity: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The job spec: ``identity`` decides the output (compared on re-runs), ``info`` does not."""
    return _normalise({"format": FOLDER.format, "version": FOLDER.version, "kind": kind, "identity": identity, "info": info})


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: was {a!r}, now {b!r}")
    return out


def _check_same_job(storage: Storage, stored: Any, spec: dict[str, Any], what: str) -> None:
    if not isinstance(stored, dict) or stored.get("format") != FOLDER.format:
        raise SampleSetError(f"{storage.uri}: {what} is not an ncsn sample-set file; choose another output folder")
    old = {"kind": stored.get("kind"), **(stored.get("identity") or {})}
    new = {"kind": spec["kind"], **spec["identity"]}
    diffs = _differences(old, new)
    if diffs:
        listing = "; ".join(diffs[:8]) + ("; ..." if len(diffs) > 8 else "")
        raise SampleSetError(
            f"{storage.uri} holds a different job ({what} differs: {listing}). "
            "Use another output folder, or repeat the original command (same checkpoint file and settings) to finish it."
        )


class FolderState(enum.Enum):
    """What :func:`open_sample_set` found in an output folder for the job at hand."""

    COMPLETE = "complete"  # the same job finished here: its manifest is published
    RESUME = "resume"  # the same job started here and did not finish
    NEW = "new"  # nothing was here; the job spec was just created


def open_sample_set(storage: Storage, spec: dict[str, Any]) -> FolderState:
    """Prepare ``storage`` for the job ``spec`` and say what was there.

    * a manifest is there: the same job is already complete (``COMPLETE``), any other job is
      refused;
    * a job spec is there: the same job resumes (``RESUME``), any other job is refused;
    * the folder is empty or absent: the job spec is created, exclusively (``NEW``): of two
      jobs started into the same folder at once exactly one creates it; the other then
      resumes the same job or is refused as a different one;
    * the folder holds other files but no job spec: refused (it is not a sample set).

    Raises :class:`SampleSetError` for every refusal; nothing is written then.
    """
    manifest = existing_name(storage, MANIFEST)
    if manifest is not None:
        _check_same_job(storage, storage.read_json(manifest).get("job"), spec, manifest)
        return FolderState.COMPLETE
    job = existing_name(storage, JOB_SPEC)
    if job is not None:
        _check_same_job(storage, storage.read_json(job), spec, job)
        return FolderState.RESUME
    others = [n for n in storage.list() if not n.startswith(".")]
    if others:
        raise SampleSetError(
            f"{storage.uri} is not empty and holds no {JOB_SPEC} (found {', '.join(others[:5])}); "
            "it is not a sample set: choose another output folder"
        )
    if storage.create_exclusive(JOB_SPEC, json_bytes(spec)):
        return FolderState.NEW
    # Another job created the spec a moment ago: the same job (resume it) or a different one (refused).
    _check_same_job(storage, storage.read_json(JOB_SPEC), spec, JOB_SPEC)
    return FolderState.RESUME


def recorded_identity(storage: Storage) -> dict[str, Any] | None:
    """The identity of the job a sample-set folder already holds (from its manifest or job
    spec), or None for an empty or absent folder. Used to resume with the recorded defaults."""
    manifest = existing_name(storage, MANIFEST)
    if manifest is not None:
        stored = storage.read_json(manifest).get("job")
    else:
        job = existing_name(storage, JOB_SPEC)
        stored = storage.read_json(job) if job is not None else None
    if isinstance(stored, dict) and isinstance(stored.get("identity"), dict):
        return stored["identity"]
    return None


def finished_units(storage: Storage, units: list[WorkUnit]) -> set[str]:
    """Names of the planned shards already present (each was written as one object)."""
    present = set(storage.list())
    return {u.name for u in units if u.name in present}


def write_manifest(
    storage: Storage,
    spec: dict[str, Any],
    units: list[WorkUnit],
    *,
    image_shape: tuple[int, int, int],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Check every planned shard holds its rows, then write ``_manifest.json`` (call last).

    ``image_shape`` is ``(C, H, W)``. Raises :class:`SampleSetError` (writing nothing) if a
    shard is missing or has the wrong row count.
    """
    FOLDER.check_rows(storage, [(unit.name, unit.count) for unit in units], consequence="; not writing the manifest")
    shards = [{"path": unit.name, "num_rows": unit.count, "first": unit.first, "last": unit.last} for unit in units]
    c, h, w = image_shape
    body = {
        "kind": spec["kind"],
        "count": sum(s["num_rows"] for s in shards),
        "channels": c,
        "height": h,
        "width": w,
        "shards": shards,
        "job": spec,
        "completed_at": utc_timestamp(),
        **(extra or {}),
    }
    return FOLDER.write_manifest(storage, _normalise(body))


def read_sample_manifest(storage: Storage, *, kind: str | None = "generate") -> dict[str, Any]:
    """The manifest of a complete sample set, or :class:`SampleSetError` saying what is wrong."""
    if existing_name(storage, JOB_SPEC) is not None:
        hint = f"it has a {JOB_SPEC} but no {MANIFEST}: the generation job did not finish; re-run it"
    elif storage.exists():
        hint = f"no {MANIFEST} there"
    else:
        hint = "it does not exist"
    _, manifest = FOLDER.read_manifest(storage, absent=f"{storage.uri}: not a complete sample set ({hint})")
    where = f"{storage.uri}: {MANIFEST}"
    if manifest.get("kind") not in KINDS:
        raise SampleSetError(f"{where}: kind must be one of {', '.join(sorted(KINDS))}, "
                             f"got {manifest.get('kind')!r}")
    if kind is not None and manifest["kind"] != kind:
        raise SampleSetError(f"{storage.uri}: a {manifest['kind']!r} sample set, expected {kind!r}")
    height, width, channels = (FOLDER.require_int(manifest, key, where, minimum=1)
                               for key in ("height", "width", "channels"))
    if channels not in (1, 3):
        raise SampleSetError(f"{where}: channels must be 1 or 3, got {channels}")
    count = FOLDER.require_int(manifest, "count", where, minimum=1)
    held = sum(shard["num_rows"] for shard in manifest["shards"])
    if held != count:
        raise SampleSetError(f"{where}: count is {count} but the shards hold {held} rows")
    return manifest


def iter_sample_images(storage: Storage, manifest: dict[str, Any]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(seeds (n,) int64, images (n, H, W, C) uint8)`` per shard of a generated sample set."""
    channels = int(manifest["channels"])
    for shard in manifest["shards"]:
        try:
            table = storage.read_table(shard["path"], schema=GENERATE_SCHEMA)
        except StorageError as err:
            raise SampleSetError(f"{storage.uri_of(shard['path'])}: unreadable shard ({err})") from err
        seeds = table.column("seed").to_numpy()
        size = (int(manifest["height"]), int(manifest["width"]))
        try:
            images = decode_pngs(table.column("image").to_pylist(), channels, size)
        except DamagedInput as err:
            raise DamagedSampleSet(f"{storage.uri_of(shard['path'])}: {err}") from None
        yield seeds, images


def first_rows(storage: Storage, units: list[WorkUnit], schema: pa.Schema, count: int) -> list[dict[str, Any]]:
    """The first ``count`` rows of a sample set in shard order, reading as few shards as needed."""
    rows: list[dict[str, Any]] = []
    for unit in units:
        if len(rows) >= count:
            break
        rows += storage.read_table(unit.name, schema=schema).slice(0, count - len(rows)).to_pylist()
    return rows
