"""One way to name storage: a URI (``s3://bucket/prefix``, ``gs://bucket/prefix``, a local
path or ``file://`` URI) resolved to a pyarrow filesystem usable by pyarrow, Ray Data
(``filesystem=``) and Ray Train (``RunConfig(storage_filesystem=...)``).

S3-compatible endpoints (MinIO, Ceph, R2, moto): pass ``endpoint_url`` or set the standard
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` environment variable. Credentials come only
from the standard AWS chain (environment, shared config files, instance or pod role); this
module never accepts, logs or writes a credential, and a filesystem built here holds no key
when it is pickled to a Ray worker (it re-resolves the chain there).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

__all__ = ["Storage", "StorageError", "resolve_filesystem", "endpoint_from_env", "utc_timestamp"]


class StorageError(UserError):
    """A storage location that cannot be used; the message names the URI."""


def utc_timestamp() -> str:
    """The current time as an ISO 8601 UTC string, ``2026-11-23T06:52:36Z`` (manifests, records)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def endpoint_from_env() -> str | None:
    """The S3 endpoint from the standard AWS environment variables, if any."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3_filesystem(endpoint_url: str | None) -> pafs.FileSystem:
    """s3fs behind pyarrow's filesystem interface.

    s3fs rather than ``pyarrow.fs.S3FileSystem``: pyarrow's native client rejects the
    multipart-completion replies of some S3-compatible servers. Listing caches are off so
    that a process sees objects other processes wrote a moment ago.
    """
    import s3fs

    kwargs: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    client_kwargs: dict[str, Any] = {}
    if endpoint_url:
        if "://" not in endpoint_url:
            endpoint_url = f"https://{endpoint_url}"
        kwargs["endpoint_url"] = endpoint_url
        client_kwargs["region_name"] = region or "us-east-1"
    elif region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        kwargs["client_kwargs"] = client_kwargs
    return pafs.PyFileSystem(pafs.FSSpecHandler(s3fs.S3FileSystem(**kwargs)))


def resolve_filesystem(uri: str, *, endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a URI. Local paths are made absolute."""
    if not uri:
        raise StorageError("empty storage URI")
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        local = parsed.path if scheme == "file" else uri
        return pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())
    if scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise StorageError(f"{uri}: an S3 URI needs a bucket, e.g. s3://bucket/prefix")
        fs = _s3_filesystem(endpoint_url or endpoint_from_env())
        return fs, f"{parsed.netloc}{parsed.path}".rstrip("/")
    if scheme in ("gs", "gcs"):
        if not parsed.netloc:
            raise StorageError(f"{uri}: a GCS URI needs a bucket, e.g. gs://bucket/prefix")
        return pafs.GcsFileSystem(), f"{parsed.netloc}{parsed.path}".rstrip("/")
    # Any other fsspec protocol (az://, abfs://, ...) through fsspec, if installed.
    try:
        import fsspec

        fs = fsspec.filesystem(scheme)
    except (ImportError, ValueError) as err:
        raise StorageError(f"{uri}: unsupported storage scheme {scheme!r}") from err
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), f"{parsed.netloc}{parsed.path}".rstrip("/")


@dataclass
class Storage:
    """A folder in some filesystem, named by ``uri``. Relative names use ``/``."""

    uri: str
    fs: pafs.FileSystem
    path: str

    @classmethod
    def from_uri(cls, uri: str, *, endpoint_url: str | None = None) -> "Storage":
        fs, path = resolve_filesystem(str(uri), endpoint_url=endpoint_url)
        if isinstance(fs, pafs.LocalFileSystem):
            return cls(path, fs, path)  # absolute, so other processes (Ray workers) resolve it alike
        return cls(str(uri).rstrip("/") or str(uri), fs, path)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *parts: str) -> "Storage":
        rel = posixpath.join(*parts)
        return Storage(f"{self.uri.rstrip('/')}/{rel}", self.fs, posixpath.join(self.path, rel))

    def full(self, rel: str = "") -> str:
        return posixpath.join(self.path, rel) if rel else self.path

    def uri_of(self, rel: str) -> str:
        return f"{self.uri.rstrip('/')}/{rel}"

    def _info(self, rel: str) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.full(rel))
        except OSError as err:
            raise StorageError(f"{self.uri_of(rel) if rel else self.uri}: cannot reach storage ({err})") from err

    def exists(self, rel: str = "") -> bool:
        return self._info(rel).type != pafs.FileType.NotFound

    def is_file(self, rel: str = "") -> bool:
        return self._info(rel).type == pafs.FileType.File

    def makedirs(self, rel: str = "") -> None:
        if self.is_local:
            self.fs.create_dir(self.full(rel), recursive=True)

    def read_bytes(self, rel: str = "") -> bytes:
        try:
            with self.fs.open_input_stream(self.full(rel)) as f:
                return f.read()
        except FileNotFoundError as err:
            raise StorageError(f"{self.uri_of(rel) if rel else self.uri}: not found") from err
        except OSError as err:
            raise StorageError(f"{self.uri_of(rel) if rel else self.uri}: cannot read ({err})") from err

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole object. Local files are written to a temporary name and renamed, so a
        reader never sees a half-written file; an object-store PUT is atomic already."""
        target = self.full(rel)
        try:
            if self.is_local:
                parent = posixpath.dirname(target)
                self.fs.create_dir(parent, recursive=True)
                # A hidden name (".name.tmp-...") that readers of the folder skip.
                tmp = posixpath.join(parent, f".{posixpath.basename(target)}.tmp-{uuid.uuid4().hex[:8]}")
                try:
                    with self.fs.open_output_stream(tmp) as f:
                        f.write(data)
                    self.fs.move(tmp, target)
                except BaseException:
                    try:
                        self.fs.delete_file(tmp)
                    except OSError:
                        pass
                    raise
            else:
                with self.fs.open_output_stream(target) as f:
                    f.write(data)
        except OSError as err:
            raise StorageError(f"{self.uri_of(rel)}: cannot write ({err})") from err

    def read_json(self, rel: str) -> Any:
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except ValueError as err:
            raise StorageError(f"{self.uri_of(rel)}: not valid JSON ({err})") from err

    def write_json(self, rel: str, value: Any) -> None:
        self.write_bytes(rel, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

    def read_table(self, rel: str, *, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table:
        """A whole Parquet file as a table; :class:`StorageError` naming the file if unreadable."""
        import pyarrow.parquet as pq

        data = self.read_bytes(rel)
        try:
            return pq.read_table(io.BytesIO(data), schema=schema, columns=columns)
        except (pa.ArrowException, OSError, ValueError) as err:
            raise StorageError(f"{self.uri_of(rel)}: not a readable Parquet file ({err})") from err

    def write_table(self, rel: str, table: pa.Table) -> None:
        """Write a table as one Parquet object (zstd); never visible half-written."""
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(rel, sink.getvalue())

    def parquet_num_rows(self, rel: str) -> int:
        """Rows in a Parquet file, from its footer (a ranged read on object storage)."""
        import pyarrow.parquet as pq

        try:
            with self.fs.open_input_file(self.full(rel)) as f:
                return pq.ParquetFile(f).metadata.num_rows
        except (OSError, pa.ArrowException) as err:
            raise StorageError(f"{self.uri_of(rel)}: not a readable Parquet file ({err})") from err

    def write_png(self, rel: str, image: "Image.Image") -> None:
        """Write a Pillow image as a PNG object."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        self.write_bytes(rel, buffer.getvalue())

    def list(self, rel: str = "", *, recursive: bool = False) -> list[str]:
        """Names (relative to ``rel``) of the entries below it; [] if it does not exist."""
        base = self.full(rel)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=recursive))
        except OSError as err:
            raise StorageError(f"{self.uri}: cannot list {rel or '.'} ({err})") from err
        return sorted(posixpath.relpath(i.path, base) for i in infos)

    def delete(self, rel: str) -> None:
        info = self._info(rel)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.full(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.full(rel))

    def check_writable(self) -> None:
        """Write and delete a probe object; raise :class:`StorageError` naming the URI if that fails."""
        probe = f".write-probe-{uuid.uuid4().hex[:12]}"
        try:
            self.write_bytes(probe, b"ok")
            self.delete(probe)
        except (StorageError, OSError) as err:
            raise StorageError(f"{self.uri}: storage is not writable ({err})") from err
