"""InceptionV3 weights for the Inception metrics, and the error type of every metric that cannot
run as asked.

``inception_weights=PATH`` (a local file or a storage URI), else the torch hub cache
(``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``), else a download
from torch-fidelity's release URL; when that fails (no internet) the error says how to provide
the file. The file is a plain ``state_dict`` of torch-fidelity's ``FeatureExtractorInceptionV3``.

The bottom of ``ncsn_ray.evaluate``'s imports: it imports nothing else of the package.
"""

from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError
from ..io.storage import Storage, StorageError

__all__ = ["FidelityError", "resolve_inception_weights", "sha256_file"]


class FidelityError(UserError):
    """Inception metrics that cannot run as asked (weights missing, no CUDA, ...)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _default_weights_file() -> tuple[str, Path]:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3, Path(torch.hub.get_dir()) / "checkpoints" / posixpath.basename(URL_INCEPTION_V3)


def resolve_inception_weights(
    path: str | None, *, endpoint_url: str | None = None, workdir: Path | None = None, log: Callable[[str], None] = print
) -> tuple[Path, dict[str, str]]:
    """A local file of InceptionV3 weights and its identity ``{"source", "sha256"}``.

    ``path``: a local file or a storage URI (copied into ``workdir``). ``None``: the torch
    hub cache, downloading into it if needed; a failed download raises
    :class:`FidelityError` explaining how to supply the file offline.
    """
    if path:
        storage = Storage.from_uri(path, endpoint_url=endpoint_url)
        if storage.is_local:
            local = Path(storage.path)
            if not local.is_file():
                raise FidelityError(f"Inception weights {path}: no such file")
        else:
            if workdir is None:
                raise FidelityError("a working folder is needed to fetch remote Inception weights")
            local = workdir / "inception-weights.pth"
            try:
                local.write_bytes(storage.read_bytes())
            except StorageError as err:
                raise FidelityError(f"Inception weights {path}: cannot read ({err})") from err
        return local, {"source": path, "sha256": sha256_file(local)}
    url, cached = _default_weights_file()
    if not cached.is_file():
        log(f"[evaluate] downloading the InceptionV3 weights from {url} into {cached.parent}")
        try:
            torch.hub.download_url_to_file(url, str(cached), progress=False)
        except Exception as err:  # URLError, HTTPError, socket errors, SSL errors, ...
            raise FidelityError(
                f"cannot download the InceptionV3 weights ({type(err).__name__}: {err}). On a machine without "
                f"internet, download {url} elsewhere and either pass --inception-weights PATH (a local file or "
                f"an s3://, gs:// URI) or copy it to {cached} (the torch hub cache; set TORCH_HOME to move it)"
            ) from err
    return cached, {"source": f"torch hub cache ({url})", "sha256": sha256_file(cached)}
