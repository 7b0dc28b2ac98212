"""Image features for the Inception (and DINOv2) metrics, from torch-fidelity's own networks,
extracted on a Ray Data actor pool that reads the Parquet shards from storage one by one.

A *feature* is one row of one layer of one extractor: torch-fidelity's
``inception-v3-compat`` gives ``2048`` (pool3: FID, KID, precision/recall) and
``logits_unbiased`` (Inception Score); ``dinov2-vit-b-14`` gives ``dinov2`` (768-d, FD-DINOv2).
Inputs are uint8 images ``(N, H, W, C)``, C = 1 repeated to 3 channels, exactly what
torch-fidelity's single-process path feeds its extractor; the extractor resizes inside.

:func:`extract_on_ray` hands each :class:`FeatureActor` (one network per actor; one GPU each
with ``use_gpu``) one shard at a time; the actor reads it from storage and runs the network
on ``batch_size`` images at a time, so no process holds more than one shard's PNG bytes and
one batch of decoded images; only the features come back to the caller, ordered by the
rows' key (sample seed or dataset id), the order torch-fidelity's own path sees them in.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..io.figures import decode_pngs
from ..io.storage import Storage
from .dinov2 import load_dinov2_extractor_kwargs
from .weights import FidelityError, resolve_inception_weights

__all__ = ["ExtractorSpec", "FeatureActor", "FeatureTable", "build_extractor", "extract_on_ray", "features_of_images",
           "to_extractor_input"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class ExtractorSpec:
    """One torch-fidelity feature extractor and the layers wanted from it.

    ``weights``: how the network's weights are found on the node that runs it: for
    Inception a local path, a storage URI or None (the torch hub cache, else a download); for
    DINOv2 None (the torch hub cache: code and weights). ``weights_sha256``: the digest the
    driver saw, checked again on every node (None: not known in the driver).
    """

    name: str
    layers: tuple[str, ...]
    weights: str | None = None
    weights_sha256: str | None = None
    endpoint_url: str | None = None

    def columns(self, index: int) -> list[str]:
        return [f"features_{index}_{j}" for j in range(len(self.layers))]


def to_extractor_input(images_nhwc: np.ndarray) -> torch.Tensor:
    """``(N, H, W, C)`` uint8 -> ``(N, 3, H, W)`` uint8, grey repeated to 3 channels."""
    tensor = torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2)
    return (tensor.expand(-1, 3, -1, -1) if tensor.shape[1] == 1 else tensor).contiguous()


def build_extractor(spec: ExtractorSpec, device: torch.device, workdir: Path, log: Log = print):
    """torch-fidelity's network for ``spec`` on ``device``, weights resolved on this node."""
    from torch_fidelity.utils import create_feature_extractor

    kwargs: dict[str, Any] = {"verbose": False}
    if spec.name.startswith("inception"):

        path, identity = resolve_inception_weights(spec.weights, endpoint_url=spec.endpoint_url, workdir=workdir,
                                                   log=log)
        if spec.weights_sha256 and identity["sha256"] != spec.weights_sha256:
            raise FidelityError(f"the Inception weights on this node ({identity['source']}) are not the ones the "
                                f"driver checked (SHA-256 {identity['sha256'][:12]} != {spec.weights_sha256[:12]})")
        kwargs["feature_extractor_weights_path"] = str(path)
    else:
        kwargs.update(load_dinov2_extractor_kwargs(spec))
    return create_feature_extractor(spec.name, list(spec.layers), cuda=device.type == "cuda", **kwargs)


class FeatureActor:
    """Ray Data callable class: one shard descriptor (``{"path": ...}``) per call in; the
    shard is read from storage here and its images pass through the networks ``batch_size``
    at a time. Out: ``key``, the features of every spec's layers (``features_{i}_{j}``,
    float32), and the bookkeeping columns ``shard_rows`` and ``actor``."""

    def __init__(self, specs: Sequence[ExtractorSpec], folder_uri: str, endpoint_url: str | None, key_column: str,
                 channels: int, size: tuple[int, int], batch_size: int, use_gpu: bool, threads: int = 0):
        if threads > 0 and not use_gpu:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.folder = Storage.from_uri(folder_uri, endpoint_url=endpoint_url)
        self.key_column, self.channels, self.size, self.batch_size = key_column, channels, tuple(size), batch_size
        self.specs = list(specs)
        self._workdir = tempfile.TemporaryDirectory(prefix="ncsn-features-")
        log = lambda message: print(message, flush=True)  # noqa: E731
        self.networks = [build_extractor(spec, self.device, Path(self._workdir.name), log) for spec in self.specs]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (path,) = batch["path"]
        table = self.folder.read_table(str(path), columns=[self.key_column, "image"])
        keys = table.column(self.key_column).to_numpy().astype(np.int64)
        pngs = table.column("image").to_pylist()
        n = len(keys)
        out: dict[str, Any] = {"key": keys, "shard_rows": np.full(n, n, dtype=np.int64),
                               "actor": np.full(n, os.getpid(), dtype=np.int64)}
        parts = []
        for start in range(0, n, self.batch_size):
            images = decode_pngs(pngs[start:start + self.batch_size], self.channels, self.size)
            parts.append(features_of_images(self.specs, self.networks, images, self.device))
        for index, spec in enumerate(self.specs):
            for column, layer in zip(spec.columns(index), spec.layers):
                out[column] = torch.cat([part[(spec.name, layer)] for part in parts]).numpy()
        return out


@torch.no_grad()
def features_of_images(specs: Sequence[ExtractorSpec], networks: Sequence[Any], images_nhwc: np.ndarray,
                       device: torch.device) -> dict[tuple[str, str], torch.Tensor]:
    """``{(extractor, layer): (N, D) float32 CPU tensor}`` of ``(N, H, W, C)`` uint8 images."""
    x = to_extractor_input(images_nhwc).to(device)
    out = {}
    for spec, network in zip(specs, networks):
        values = network.convert_features_tuple_to_dict(network(x))
        for layer in spec.layers:
            out[(spec.name, layer)] = values[layer].float().cpu()
    return out


@dataclass
class FeatureTable:
    """The features of a set of rows, ordered by key: ``features[(extractor, layer)]`` is
    ``(N, D)`` float32; ``keys`` ``(N,)``; ``actors``/``largest_shard``: how the work was spread
    (actors used, the most rows one call read)."""

    keys: np.ndarray
    features: dict[tuple[str, str], torch.Tensor]
    actors: int
    largest_shard: int

    def first(self, n: int) -> "FeatureTable":
        return FeatureTable(self.keys[:n], {k: v[:n] for k, v in self.features.items()}, self.actors,
                            self.largest_shard)


def extract_on_ray(folder_uri: str, endpoint_url: str | None, shards: list[str], key_column: str, channels: int,
                   size: tuple[int, int], specs: Sequence[ExtractorSpec], *, use_gpu: bool, num_actors: int,
                   batch_size: int, cpus_per_actor: float) -> FeatureTable:
    """Every row of ``shards`` (paths inside ``folder_uri``) through :class:`FeatureActor` on a
    pool of ``num_actors`` actors (never more than there are shards), one shard per call.

    The shard descriptors are made in the driver (``from_items``), so no read task competes
    with the actors for CPUs: a pool as large as the cluster cannot starve its own input.
    """
    import ray.data

    size_of_pool = max(1, min(num_actors, len(shards)))
    ds = ray.data.from_items([{"path": path} for path in shards], override_num_blocks=len(shards))
    ds = ds.map_batches(FeatureActor, batch_size=1, batch_format="numpy",
                        fn_constructor_kwargs=dict(specs=list(specs), folder_uri=folder_uri, endpoint_url=endpoint_url,
                                                   key_column=key_column, channels=channels, size=tuple(size),
                                                   batch_size=batch_size, use_gpu=use_gpu,
                                                   threads=max(1, int(cpus_per_actor))),
                        compute=ray.data.ActorPoolStrategy(size=size_of_pool, max_tasks_in_flight_per_actor=1),
                        num_cpus=cpus_per_actor, **({"num_gpus": 1} if use_gpu else {}))
    parts: dict[str, list[np.ndarray]] = {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        for column, values in batch.items():
            parts.setdefault(column, []).append(values)
    if not parts:
        raise ValueError("no rows in the shards")
    columns = {column: np.concatenate(values) for column, values in parts.items()}
    order = np.argsort(columns["key"], kind="stable")
    features = {}
    for index, spec in enumerate(specs):
        for column, layer in zip(spec.columns(index), spec.layers):
            features[(spec.name, layer)] = torch.from_numpy(np.ascontiguousarray(columns[column][order]))
    return FeatureTable(columns["key"][order], features, actors=len(set(columns["actor"].tolist())),
                        largest_shard=int(columns["shard_rows"].max()))
