"""A folder of Parquet shards plus a manifest written last: what datasets and sample sets share.

Both formats (``ncsn_ray.data.format`` for prepared datasets, ``ncsn_ray.sample.sample_set``
for generated sample sets) are the same kind of folder::

    <shards>.parquet ...       written first, in any order, by any number of writers
    _manifest.json             written last: {"format": F, "version": V, "shards": [...], ...}

A folder is complete only when its manifest is there; a reader refuses a manifest of
another format and any shard name that would leave the folder. :class:`ShardedFolder`
holds those rules once; each format states its name, version and error class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ..errors import UserError
from .layout import MANIFEST, existing_name
from .storage import Storage

__all__ = ["ShardedFolder"]


@dataclass(frozen=True)
class ShardedFolder:
    """The manifest rules of one format: ``format`` and ``version`` go into every manifest,
    ``noun`` names the format in messages ("dataset", "sample-set"), ``error`` is raised."""

    format: str
    version: int
    noun: str
    error: type[UserError]

    def check_shard_name(self, name: Any, uri: str) -> str:
        """A shard name from a manifest must name a file directly in the folder: no ``/``,
        ``\\``, ``..``, ``:`` or absolute path (a manifest must not send readers elsewhere)."""
        if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
                or name.startswith("..") or ":" in name):
            raise self.error(f"{uri}: the manifest names a shard outside the folder ({name!r}); refusing it")
        return name

    def check_rows(self, storage: Storage, shards: Iterable[tuple[str, int]], *, consequence: str = "") -> None:
        """Every ``(name, rows)`` shard is there and holds ``rows`` rows (Parquet footers only);
        the error names the first that is missing, unreadable or of another length, followed
        by ``consequence`` (e.g. "; not writing the manifest")."""
        for name, expected in shards:
            try:
                rows = storage.parquet_num_rows(name)
            except UserError as err:
                raise self.error(f"{storage.uri}: shard {name} is missing or unreadable ({err}){consequence}") from err
            if rows != expected:
                raise self.error(f"{storage.uri}: shard {name} holds {rows} rows, the manifest says {expected}"
                                 f"{consequence}")

    def write_manifest(self, storage: Storage, body: dict[str, Any]) -> dict[str, Any]:
        """Write ``{"format", "version", **body}`` as the manifest: call it last, after every
        shard is in place. Returns what was written."""
        manifest = {"format": self.format, "version": self.version, **body}
        storage.write_json(MANIFEST, manifest)
        return manifest

    def read_manifest(self, storage: Storage, *, absent: str) -> tuple[str, dict[str, Any]]:
        """``(file name, manifest)`` of a complete folder (``_manifest.json``, or the name an
        earlier version wrote). ``absent`` is the message when there is none; a manifest of
        another format, or one whose shard names leave the folder, is refused."""
        name = existing_name(storage, MANIFEST)
        if name is None:
            raise self.error(absent)
        raw = storage.read_json(name)
        if not isinstance(raw, dict) or raw.get("format") != self.format:
            raise self.error(f"{storage.uri}: {MANIFEST} is not an ncsn {self.noun} manifest")
        version = raw.get("version")
        if not _is_int(version) or not 1 <= version <= self.version:
            raise self.error(f"{storage.uri}: {name} has version {version!r}; this release reads "
                             f"{self.noun} manifests of version 1 to {self.version}")
        shards = raw.get("shards")
        if not isinstance(shards, list):
            raise self.error(f"{storage.uri}: {name} lists no shards")
        seen: set[str] = set()
        for shard in shards:
            path = self.check_shard_name(shard.get("path") if isinstance(shard, dict) else None, storage.uri)
            if path in seen:
                raise self.error(f"{storage.uri}: {name} lists shard {path} twice")
            seen.add(path)
            self.require_int(shard, "num_rows", f"{storage.uri}: {name}: shard {path}")
        return name, raw

    def require_int(self, raw: dict[str, Any], key: str, where: str, minimum: int = 0) -> int:
        """``raw[key]``, which must be an integer (not a bool) of at least ``minimum``."""
        value = raw.get(key)
        if not _is_int(value) or value < minimum:
            raise self.error(f"{where}: {key} must be an integer of at least {minimum}, got {value!r}")
        return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
