"""One way to name storage: a URI (``s3://bucket/prefix``, ``gs://bucket/prefix``, a local
path or ``file://`` URI) resolved to a pyarrow filesystem usable by pyarrow, Ray Data
(``filesystem=``) and Ray Train (``RunConfig(storage_filesystem=...)``).

S3-compatible endpoints (MinIO, Ceph, R2, moto): pass ``endpoint_url`` or set the standard
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` environment variable. Credentials come only
from the standard AWS chain (environment, shared config files, instance or pod role); this
module never accepts, logs or writes a credential, and a filesystem built here holds no key
when it is pickled to a Ray worker (it re-resolves the chain there).

Failures: every operation raises :class:`StorageError` naming the URI and the cause in
words (no credentials, endpoint unreachable, bucket missing, access denied, not found), never
a raw botocore or connection error. Transient S3 errors are retried: botocore's ``standard``
retry mode with at most :data:`S3_MAX_ATTEMPTS` attempts per request (throttling, 5xx,
connection errors; exponential backoff with jitter), 5 s to connect and 60 s to read;
s3fs's own retry loop is limited to :data:`S3FS_RETRIES` rounds on top.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import DamagedInput, UserError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

__all__ = ["Storage", "StorageError", "DamagedFile", "resolve_filesystem", "endpoint_from_env", "utc_timestamp",
           "describe_storage_error"]


class StorageError(UserError):
    """A storage location that cannot be used; the message names the URI."""


class DamagedFile(StorageError, DamagedInput):
    """A file that was read whole but does not decode (not JSON, not Parquet): bad input
    whenever it is found (see :class:`~ncsn_ray.errors.DamagedInput`)."""


def utc_timestamp() -> str:
    """The current time as an ISO 8601 UTC string, ``2026-11-23T06:52:36Z`` (manifests, records)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def endpoint_from_env() -> str | None:
    """The S3 endpoint from the standard AWS environment variables, if any."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


S3_MAX_ATTEMPTS = 4
S3FS_RETRIES = 2


def describe_storage_error(err: BaseException, endpoint_url: str | None = None) -> str:
    """The cause of a storage failure in words, without any credential."""
    name, text = type(err).__name__, str(err)
    code = ""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        code = str((response.get("Error") or {}).get("Code", ""))
    if name == "NoCredentialsError" or "Unable to locate credentials" in text:
        return ("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in ~/.aws, "
                "or give the machine an instance or pod role")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch") or "InvalidAccessKeyId" in text:
        return "the credentials were refused (unknown access key or wrong secret)"
    if code == "NoSuchBucket" or "NoSuchBucket" in text or "specified bucket does not exist" in text:
        return "the bucket does not exist"
    if code in ("AccessDenied", "403", "Forbidden") or isinstance(err, PermissionError) or "AccessDenied" in text:
        return "access denied: the credentials may not use this bucket or prefix"
    connection_words = ("Could not connect to the endpoint", "Cannot connect to host", "Connection refused",
                        "Connect timeout", "EndpointConnectionError", "ConnectionRefusedError")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionRefusedError") \
            or any(word in text for word in connection_words):
        where = f" {endpoint_url}" if endpoint_url else ""
        return f"cannot reach the storage endpoint{where} (is it up, and the address right?)"
    if isinstance(err, FileNotFoundError):
        return "not found"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{name}: {first}" if first else name


def _s3_filesystem(endpoint_url: str | None) -> pafs.FileSystem:
    """s3fs behind pyarrow's filesystem interface.

    s3fs rather than ``pyarrow.fs.S3FileSystem``: pyarrow's native client rejects the
    multipart-completion replies of some S3-compatible servers. Listing caches are off so
    that a process sees objects other processes wrote a moment ago.
    """
    import s3fs

    kwargs: dict[str, Any] = {
        "use_listings_cache": False,
        "skip_instance_cache": True,
        "config_kwargs": {"retries": {"mode": "standard", "max_attempts": S3_MAX_ATTEMPTS},
                          "connect_timeout": 5, "read_timeout": 60},
    }
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
    fs = s3fs.S3FileSystem(**kwargs)
    fs.retries = S3FS_RETRIES  # s3fs's own retry rounds (a class attribute, not a constructor argument)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


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
    endpoint_url: str | None = None  # for error messages only

    @classmethod
    def from_uri(cls, uri: str, *, endpoint_url: str | None = None) -> "Storage":
        fs, path = resolve_filesystem(str(uri), endpoint_url=endpoint_url)
        if isinstance(fs, pafs.LocalFileSystem):
            return cls(path, fs, path)  # absolute, so other processes (Ray workers) resolve it alike
        return cls(str(uri).rstrip("/") or str(uri), fs, path, endpoint_url or endpoint_from_env())

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *parts: str) -> "Storage":
        rel = posixpath.join(*parts)
        return Storage(f"{self.uri.rstrip('/')}/{rel}", self.fs, posixpath.join(self.path, rel), self.endpoint_url)

    def full(self, rel: str = "") -> str:
        return posixpath.join(self.path, rel) if rel else self.path

    def uri_of(self, rel: str) -> str:
        return f"{self.uri.rstrip('/')}/{rel}" if rel else self.uri

    @contextlib.contextmanager
    def _failures(self, rel: str, action: str) -> Iterator[None]:
        """Turn any failure of a storage call into :class:`StorageError` naming the URI and cause."""
        try:
            yield
        except StorageError:
            raise
        except Exception as err:  # noqa: BLE001 - botocore, aiohttp and OS errors alike
            cause = describe_storage_error(err, self.endpoint_url)
            if cause == "not found":
                # s3fs reports some failures (no credentials, endpoint down) as "not found":
                # ask the bucket itself what is wrong before saying so.
                cause = self._probe_bucket() or cause
            if cause == "not found":
                raise StorageError(f"{self.uri_of(rel)}: not found") from err
            raise StorageError(f"{self.uri_of(rel)}: cannot {action}: {cause}") from err

    def _probe_bucket(self) -> str | None:
        """For an S3 location: why the bucket cannot be used (a ``HeadBucket`` call), or None."""
        fsspec_fs = getattr(getattr(self.fs, "handler", None), "fs", None)
        if fsspec_fs is None or type(fsspec_fs).__name__ != "S3FileSystem":
            return None
        bucket = self.path.split("/", 1)[0]
        try:
            fsspec_fs.call_s3("head_bucket", Bucket=bucket)
        except Exception as err:  # noqa: BLE001
            cause = describe_storage_error(err, self.endpoint_url)
            if cause == "not found" or "404" in str(err) or "Not Found" in str(err):
                return "the bucket does not exist"
            return cause
        return None

    def _info(self, rel: str) -> pafs.FileInfo:
        with self._failures(rel, "reach storage"):
            return self.fs.get_file_info(self.full(rel))

    def exists(self, rel: str = "") -> bool:
        return self._info(rel).type != pafs.FileType.NotFound

    def is_file(self, rel: str = "") -> bool:
        return self._info(rel).type == pafs.FileType.File

    def makedirs(self, rel: str = "") -> None:
        if self.is_local:
            with self._failures(rel, "create the folder"):
                self.fs.create_dir(self.full(rel), recursive=True)

    def read_bytes(self, rel: str = "") -> bytes:
        with self._failures(rel, "read"):
            with self.fs.open_input_stream(self.full(rel)) as f:
                return f.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole object. Local files are written to a hidden temporary name and
        renamed, so a reader never sees a half-written file (a failed write removes the
        temporary file); an object-store PUT is atomic already."""
        target = self.full(rel)
        with self._failures(rel, "write"):
            if self.is_local:
                parent = posixpath.dirname(target)
                self.fs.create_dir(parent, recursive=True)
                tmp = posixpath.join(parent, f".{posixpath.basename(target)}.tmp-{uuid.uuid4().hex[:8]}")
                try:
                    with self.fs.open_output_stream(tmp) as f:
                        f.write(data)
                    self.fs.move(tmp, target)
                except BaseException:
                    with contextlib.suppress(OSError):
                        self.fs.delete_file(tmp)
                    raise
            else:
                with self.fs.open_output_stream(target) as f:
                    f.write(data)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Write ``data`` only if nothing exists at ``rel``, atomically against other writers;
        True if this call created it, False if it already existed.

        Local disk: an exclusive create (``O_CREAT | O_EXCL``) of a hidden temporary file
        renamed with a hard link, so the name appears complete or not at all. S3: a
        conditional ``PutObject`` with ``If-None-Match: *`` (AWS S3, MinIO and moto honour
        it). Other stores: a check, a write, and a read-back that must return our bytes (a
        narrow race remains; see docs/results/reliability.md).
        """
        target = self.full(rel)
        with self._failures(rel, "write"):
            if self.is_local:
                parent = posixpath.dirname(target)
                os.makedirs(parent, exist_ok=True)
                tmp = posixpath.join(parent, f".{posixpath.basename(target)}.tmp-{uuid.uuid4().hex[:8]}")
                with open(tmp, "xb") as f:
                    f.write(data)
                try:
                    os.link(tmp, target)  # fails if the target exists, atomically
                    return True
                except FileExistsError:
                    return False
                finally:
                    os.unlink(tmp)
            handler = getattr(self.fs, "handler", None)
            fsspec_fs = getattr(handler, "fs", None)
            if fsspec_fs is not None and type(fsspec_fs).__name__ == "S3FileSystem":
                try:
                    fsspec_fs.pipe_file(target, data, mode="create")
                    return True
                except (FileExistsError, OSError) as err:
                    if isinstance(err, FileExistsError) or "PreconditionFailed" in str(err) or "412" in str(err):
                        return False
                    raise
            if self.exists(rel):
                return False
            self.write_bytes(rel, data)
            return self.read_bytes(rel) == data

    def read_json(self, rel: str) -> Any:
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except ValueError as err:
            raise DamagedFile(f"{self.uri_of(rel)}: not valid JSON ({err})") from err

    def write_json(self, rel: str, value: Any) -> None:
        self.write_bytes(rel, json_bytes(value))

    def read_table(self, rel: str, *, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table:
        """A whole Parquet file as a table; :class:`StorageError` naming the file if unreadable."""
        import pyarrow.parquet as pq

        data = self.read_bytes(rel)
        try:
            return pq.read_table(io.BytesIO(data), schema=schema, columns=columns)
        except (pa.ArrowException, OSError, ValueError) as err:
            raise DamagedFile(f"{self.uri_of(rel)}: not a readable Parquet file ({err})") from err

    def write_table(self, rel: str, table: pa.Table) -> str:
        """Write a table as one Parquet object (zstd); never visible half-written. Returns
        the SHA-256 (hex) of the bytes written, for a manifest to record."""
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue()
        self.write_bytes(rel, data)
        return hashlib.sha256(data).hexdigest()

    def parquet_num_rows(self, rel: str) -> int:
        """Rows in a Parquet file, from its footer (a ranged read on object storage)."""
        import pyarrow.parquet as pq

        with self._failures(rel, "read"):
            try:
                with self.fs.open_input_file(self.full(rel)) as f:
                    return pq.ParquetFile(f).metadata.num_rows
            except (pa.ArrowException, ValueError) as err:
                raise StorageError(f"{self.uri_of(rel)}: not a readable Parquet file ({err})") from err

    def write_png(self, rel: str, image: "Image.Image") -> None:
        """Write a Pillow image as a PNG object."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        self.write_bytes(rel, buffer.getvalue())

    def list(self, rel: str = "", *, recursive: bool = False) -> list[str]:
        """Names (relative to ``rel``) of the entries below it; [] if it does not exist."""
        base = self.full(rel)
        with self._failures(rel, "list"):
            infos = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=recursive))
        return sorted(posixpath.relpath(i.path, base) for i in infos)

    def delete(self, rel: str) -> None:
        info = self._info(rel)
        with self._failures(rel, "delete"):
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(self.full(rel))
            elif info.type == pafs.FileType.File:
                self.fs.delete_file(self.full(rel))

    def check_writable(self) -> None:
        """Write and delete a probe object; raise :class:`StorageError` naming the URI and the
        cause if that fails."""
        probe = f".write-probe-{uuid.uuid4().hex[:12]}"
        try:
            self.write_bytes(probe, b"ok")
            self.delete(probe)
        except StorageError as err:
            raise StorageError(f"{self.uri}: storage is not writable ({str(err).split(': ', 1)[-1]})") from err


def json_bytes(value: Any) -> bytes:
    """Indented, key-sorted JSON with a final newline (how every JSON file here is written)."""
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
