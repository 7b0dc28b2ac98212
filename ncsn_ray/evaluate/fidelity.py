"""Inception-based metrics (FID, Inception Score, KID) with torch-fidelity, and its inputs.

Images go to torch-fidelity as in-memory ``torch.utils.data.Dataset`` objects yielding
``(3, H, W)`` uint8 tensors; grey images are repeated to 3 channels. torch-fidelity resizes
to 299x299 inside its InceptionV3 (the TF-FID-compatible ``inception-v3-compat`` network).

Reference features are cached beside the reference dataset, under
``<reference>/_fidelity-cache/``: torch-fidelity caches them in a local folder
(``cache_root``, ``input2_cache_name``); this module fills that folder from storage before
the run and uploads what it added afterwards. The cache name binds the reference dataset
(its manifest) and the Inception weights (their SHA-256), so a changed dataset or other
weights never reuse stale features. Each cached file has its SHA-256 beside it
(``<name>.sha256``); a file that does not match (damaged, or replaced without its digest) is
ignored and the features recomputed. Sample features are not cached.

Inception weights: ``inception_weights=PATH`` (a local file or a storage URI), else the
torch hub cache (``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``),
else a download from torch-fidelity's release URL; when that fails (no internet) the error
says how to provide the file. The file is a plain ``state_dict`` of torch-fidelity's
``FeatureExtractorInceptionV3``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.format import DatasetManifest, iter_images
from ..errors import UserError
from ..io.layout import FIDELITY_CACHE
from ..io.storage import Storage, StorageError

__all__ = ["FidelityError", "UInt8ImageDataset", "resolve_inception_weights", "inception_scores", "CACHE_DIR",
           "FEATURE_EXTRACTOR", "INCEPTION_METRICS"]

CACHE_DIR = FIDELITY_CACHE
FEATURE_EXTRACTOR = "inception-v3-compat"
INCEPTION_METRICS = ("fid", "isc", "kid", "prc")


class FidelityError(UserError):
    """Inception metrics that cannot run as asked (weights missing, no CUDA, ...)."""


class UInt8ImageDataset(Dataset):
    """``(3, H, W)`` uint8 tensors from ``(N, H, W, C)`` uint8 images, C = 1 repeated to 3.

    ``load`` is called on first access only, so a reference whose features are cached is
    never read; ``length`` must equal the number of images ``load`` returns.
    """

    def __init__(self, load: Callable[[], np.ndarray], length: int):
        self._load = load
        self._length = length
        self._images: torch.Tensor | None = None

    def _tensor(self) -> torch.Tensor:
        if self._images is None:
            images = np.ascontiguousarray(self._load())
            if len(images) != self._length:
                raise FidelityError(f"expected {self._length} images, read {len(images)}")
            tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
            self._images = tensor.expand(-1, 3, -1, -1) if tensor.shape[1] == 1 else tensor
        return self._images

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._tensor()[index].contiguous()


def _sha256_file(path: Path) -> str:
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
        return local, {"source": path, "sha256": _sha256_file(local)}
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
    return cached, {"source": f"torch hub cache ({url})", "sha256": _sha256_file(cached)}


def _reference_key(manifest: DatasetManifest, weights_sha256: str, limit: int | None = None) -> str:
    """Cache name for a reference dataset (or its first ``limit`` images) + weights."""
    content = json.dumps(manifest.to_json(), sort_keys=True).encode()
    subset = f"-first{limit}" if limit is not None else ""
    return f"ref-{hashlib.sha256(content).hexdigest()[:16]}{subset}-w{weights_sha256[:16]}"


def _sync_cache_down(cache: Storage, key: str, local: Path, log: Callable[[str], None]) -> set[str]:
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


def _sync_cache_up(cache: Storage, key: str, local: Path, before: set[str]) -> list[str]:
    """Upload the feature files torch-fidelity added, each with its digest (written first)."""
    added = []
    for file in sorted(local.iterdir()):
        if file.name.startswith(key) and file.suffix == ".pt" and file.name not in before:
            data = file.read_bytes()
            cache.write_bytes(f"{file.name}.sha256", (hashlib.sha256(data).hexdigest() + "\n").encode())
            cache.write_bytes(file.name, data)
            added.append(file.name)
    return added


def load_reference_images(storage: Storage, manifest: DatasetManifest, limit: int | None = None) -> np.ndarray:
    """The reference images in id order, ``(N, H, W, C)`` uint8; only the first ``limit`` if given."""
    return np.concatenate(list(iter_images(storage, manifest, limit)))


def inception_scores(
    samples: np.ndarray,
    reference: Storage | None,
    ref_manifest: DatasetManifest | None,
    wanted: list[str],
    *,
    reference_limit: int | None,
    inception_weights: str | None,
    endpoint_url: str | None,
    batch_size: int,
    use_cuda: bool,
    kid_subset_size: int,
    log: Callable[[str], None],
) -> tuple[dict[str, float], dict[str, Any]]:
    """torch-fidelity's metrics for ``samples`` ``(N, H, W, C)`` uint8 against the reference
    dataset, in this process (``calculate_metrics``); returns ``(metrics, info)`` (weights
    identity, cache use). Settings: :func:`~ncsn_ray.evaluate.scores.metric_kwargs`.
    """
    from .scores import metric_kwargs

    import torch_fidelity

    n_samples = len(samples)
    with tempfile.TemporaryDirectory(prefix="ncsn-fidelity-") as tmp:
        workdir = Path(tmp)
        weights_path, weights_id = resolve_inception_weights(inception_weights, endpoint_url=endpoint_url,
                                                             workdir=workdir, log=log)
        info: dict[str, Any] = {"inception_weights": weights_id, "feature_extractor": FEATURE_EXTRACTOR}
        inputs: dict[str, Any] = {"input1": UInt8ImageDataset(lambda: samples, n_samples)}
        n_reference = None
        if reference is not None:  # isc alone needs none
            n_reference = ref_manifest.num_rows if reference_limit is None else min(ref_manifest.num_rows, reference_limit)
            key = _reference_key(ref_manifest, weights_id["sha256"], reference_limit)
            cache = reference.child(CACHE_DIR)
            local_cache = workdir / "cache"
            local_cache.mkdir()
            before = _sync_cache_down(cache, key, local_cache, log)
            log(f"[evaluate] {', '.join(wanted)}: {n_samples} samples vs {n_reference} images of {reference.uri} "
                f"({'cached reference features found' if before else 'reference features to compute'})")
            inputs.update(input2=UInt8ImageDataset(lambda: load_reference_images(reference, ref_manifest, reference_limit),
                                                   n_reference),
                          input2_cache_name=key, cache_root=str(local_cache), cache=True)
        scores = torch_fidelity.calculate_metrics(
            **inputs,
            cuda=use_cuda,
            batch_size=batch_size,
            fid="fid" in wanted,
            isc="isc" in wanted,
            kid="kid" in wanted,
            prc="prc" in wanted,
            feature_extractor=FEATURE_EXTRACTOR,
            feature_extractor_weights_path=str(weights_path),
            **metric_kwargs(n_samples, n_reference, kid_subset_size),  # save_cpu_ram: no DataLoader processes
        )
        if reference is not None:
            added = _sync_cache_up(cache, key, local_cache, before)
            info.update(num_reference=n_reference, reference_cache="computed" if added else "hit",  # hit: all cached
                        reference_cache_uri=cache.uri)
    return {k: float(v) for k, v in scores.items()}, info
