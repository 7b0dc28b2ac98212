"""The reference features' cache beside a reference dataset, ``<reference>/_fidelity-cache/``,
shared by both evaluation paths (torch-fidelity's file names).

torch-fidelity caches features in a local folder (``cache_root``, ``input2_cache_name``); these
functions fill that folder from storage before a run and upload what it added afterwards. The
cache name binds the reference dataset (its manifest) and the Inception weights (their
SHA-256), so a changed dataset or other weights never reuse stale features. Each cached file
has its SHA-256 beside it (``<name>.sha256``); a file that does not match (damaged, or replaced
without its digest) is ignored and the features recomputed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from ..data.format import DatasetManifest
from ..io.layout import FIDELITY_CACHE
from ..io.storage import Storage

__all__ = ["CACHE_DIR", "reference_key", "sync_cache_down", "sync_cache_up"]

CACHE_DIR = FIDELITY_CACHE


def reference_key(manifest: DatasetManifest, weights_sha256: str, limit: int | None = None) -> str:
    """Cache name for a reference dataset (or its first ``limit`` images) + weights."""
    content = json.dumps(manifest.to_json(), sort_keys=True).encode()
    subset = f"-first{limit}" if limit is not None else ""
    return f"ref-{hashlib.sha256(content).hexdigest()[:16]}{subset}-w{weights_sha256[:16]}"


def sync_cache_down(cache: Storage, key: str, local: Path, log: Callable[[str], None]) -> set[str]:
    """Copy the cached feature files for ``key`` into ``local``; only files whose SHA-256
    matches the digest stored beside them (``<name>.sha256``) are used, others are recomputed."""
    present = set()
    names = cache.list()
    for name in names:
        if not (name.startswith(key) and name.endswith(".pt")):
            continue
        data = cache.read_bytes(name)
        digest = cache.read_bytes(f"{name}.sha256").decode().strip() if f"{name}.sha256" in names else None
        if digest != hashlib.sha256(data).hexdigest():
            log(f"[evaluate] {cache.uri_of(name)} does not match its digest: ignoring it, the reference features "
                "will be recomputed")
            continue
        (local / name).write_bytes(data)
        present.add(name)
    return present


def sync_cache_up(cache: Storage, key: str, local: Path, before: set[str]) -> list[str]:
    """Upload the feature files torch-fidelity added, each with its digest (written first)."""
    added = []
    for file in sorted(local.iterdir()):
        if file.name.startswith(key) and file.suffix == ".pt" and file.name not in before:
            data = file.read_bytes()
            cache.write_bytes(f"{file.name}.sha256", (hashlib.sha256(data).hexdigest() + "\n").encode())
            cache.write_bytes(file.name, data)
            added.append(file.name)
    return added
