"""Inception-based metrics (FID, Inception Score, KID) with torch-fidelity in one process
(``evaluate.py --no-ray``), and its inputs.

Images go to torch-fidelity as in-memory ``torch.utils.data.Dataset`` objects yielding
``(3, H, W)`` uint8 tensors; grey images are repeated to 3 channels. torch-fidelity resizes
to 299x299 inside its InceptionV3 (the TF-FID-compatible ``inception-v3-compat`` network).
Reference features are cached beside the reference dataset (:mod:`ncsn_ray.evaluate.cache`;
sample features are not cached); the Inception weights are found by
:func:`ncsn_ray.evaluate.weights.resolve_inception_weights`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.format import DatasetManifest, iter_images
from ..io.storage import Storage
from .cache import CACHE_DIR, reference_key, sync_cache_down, sync_cache_up
from .scores import metric_kwargs
from .weights import FidelityError, resolve_inception_weights

__all__ = ["UInt8ImageDataset", "inception_scores", "load_reference_images", "FEATURE_EXTRACTOR", "INCEPTION_METRICS"]

FEATURE_EXTRACTOR = "inception-v3-compat"
INCEPTION_METRICS = ("fid", "isc", "kid", "prc")


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
            key = reference_key(ref_manifest, weights_id["sha256"], reference_limit)
            cache = reference.child(CACHE_DIR)
            local_cache = workdir / "cache"
            local_cache.mkdir()
            before = sync_cache_down(cache, key, local_cache, log)
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
            added = sync_cache_up(cache, key, local_cache, before)
            info.update(num_reference=n_reference, reference_cache="computed" if added else "hit",  # hit: all cached
                        reference_cache_uri=cache.uri)
    return {k: float(v) for k, v in scores.items()}, info
