"""The evaluation of a sample set across the cluster: features on a Ray Data actor pool,
scores in the driver from the gathered features.

Steps: the inputs are checked in the driver (manifests only); the sample set's shards stream
through :class:`~ncsn_ray.evaluate.features.FeatureActor` (one network per actor, one GPU
each with ``use_gpu``); the reference's features come from the cache beside the reference
(``<reference>/_fidelity-cache/``, the file names and format torch-fidelity's own cache
uses, each with its SHA-256 beside it) or, when missing, from the same actor pool, and are
cached; the scores are computed from the features with torch-fidelity's functions
(:mod:`~ncsn_ray.evaluate.scores`) and equal its single-process ``calculate_metrics`` on the
same inputs to float tolerance (``tests/test_evaluate_distributed.py``).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..console import Log
from ..io.storage import Storage
from .cache import CACHE_DIR, reference_key, sync_cache_down, sync_cache_up
from .features import ExtractorSpec, FeatureTable, extract_on_ray
from .scores import DINOV2, INCEPTION, layer_for, metric_kwargs, scores_from_features

__all__ = ["ActorSettings", "extractor_specs", "sample_features", "reference_features"]


@dataclass(kw_only=True)
class ActorSettings:
    """Size of the feature-extraction pool: ``num_actors`` (None: one per GPU with ``use_gpu``,
    else one per ``cpus_per_actor`` CPUs of the cluster) and images per network pass."""

    num_actors: int | None
    cpus_per_actor: float
    use_gpu: bool
    batch_size: int

    def pool_size(self) -> int:
        import ray

        if self.num_actors is not None:
            return self.num_actors
        resources = ray.cluster_resources()
        if self.use_gpu:
            return max(1, int(resources.get("GPU", 0)))
        return max(1, int(resources.get("CPU", 1) // self.cpus_per_actor))


def extractor_specs(wanted: list[str], *, for_reference: bool, reference_stats: bool, inception_weights: str | None,
                    weights_sha256: str | None, endpoint_url: str | None,
                    dinov2_weights: str | None = None) -> list[ExtractorSpec]:
    """The extractors and layers that ``wanted`` needs from the samples (``for_reference``
    False) or from the reference (True: no ``isc``; no ``fid`` when ``reference_stats``)."""
    inception_metrics = [m for m in wanted if m in ("fid", "isc", "kid", "prc")]
    if for_reference:
        inception_metrics = [m for m in inception_metrics if m != "isc" and not (m == "fid" and reference_stats)]
    specs = []
    layers = tuple(dict.fromkeys(layer_for(m, INCEPTION) for m in inception_metrics))
    if layers:
        specs.append(ExtractorSpec(INCEPTION, layers, inception_weights, weights_sha256, endpoint_url))
    if "fd-dinov2" in wanted:
        specs.append(ExtractorSpec(DINOV2, (layer_for("fid", DINOV2),), dinov2_weights, endpoint_url=endpoint_url))
    return specs


def sample_features(samples: Storage, manifest: dict[str, Any], specs: list[ExtractorSpec],
                    actors: ActorSettings) -> FeatureTable:
    """Features of every sample, ordered by seed."""
    paths = [shard["path"] for shard in manifest["shards"]]
    return extract_on_ray(samples.uri, samples.endpoint_url, paths, "seed", int(manifest["channels"]),
                          (int(manifest["height"]), int(manifest["width"])), specs, use_gpu=actors.use_gpu,
                          num_actors=actors.pool_size(), batch_size=actors.batch_size,
                          cpus_per_actor=actors.cpus_per_actor)


def _cache_key(ref_manifest, spec: ExtractorSpec, limit: int | None) -> str:
    # torch-fidelity's single-process path names the reference's cache with the same key.
    identity = spec.weights_sha256 if spec.name == INCEPTION else hashlib.sha256(spec.name.encode()).hexdigest()
    return reference_key(ref_manifest, identity, limit)


def reference_features(reference: Storage, ref_manifest, specs: list[ExtractorSpec], actors: ActorSettings,
                       limit: int | None, log: Log) -> tuple[dict[tuple[str, str], torch.Tensor], str]:
    """The reference's features for ``specs`` (the first ``limit`` rows by id when given)
    and ``"hit"`` (all from the cache) or ``"computed"``."""
    cache = reference.child(CACHE_DIR)
    found: dict[tuple[str, str], torch.Tensor] = {}
    missing: list[ExtractorSpec] = []
    with tempfile.TemporaryDirectory(prefix="ncsn-reference-cache-") as tmp:
        local = Path(tmp)
        for spec in specs:
            key = _cache_key(ref_manifest, spec, limit)
            present = sync_cache_down(cache, key, local, log)
            files = {layer: f"{key}-{spec.name}-features-{layer}.pt" for layer in spec.layers}
            if all(name in present for name in files.values()):
                for layer, name in files.items():
                    found[(spec.name, layer)] = torch.load(local / name, weights_only=True)
            else:
                missing.append(spec)
        if not missing:
            return found, "hit"
        n = ref_manifest.num_rows if limit is None else min(limit, ref_manifest.num_rows)
        shards, covered = [], 0
        for shard in ref_manifest.shards:  # in id order: the first shards hold the first n rows
            if covered >= n:
                break
            shards.append(shard.path)
            covered += shard.num_rows
        log(f"[evaluate] reference features to compute: {n} images of {reference.uri}")
        table = extract_on_ray(reference.uri, reference.endpoint_url, shards, "id", ref_manifest.channels,
                               (ref_manifest.height, ref_manifest.width), missing, use_gpu=actors.use_gpu,
                               num_actors=actors.pool_size(), batch_size=actors.batch_size,
                               cpus_per_actor=actors.cpus_per_actor).first(n)
        for spec in missing:
            key = _cache_key(ref_manifest, spec, limit)
            before = {p.name for p in local.iterdir()}
            for layer in spec.layers:
                features = table.features[(spec.name, layer)].contiguous()
                torch.save(features, local / f"{key}-{spec.name}-features-{layer}.pt")
                found[(spec.name, layer)] = features
            sync_cache_up(cache, key, local, before)
    return found, "computed"


def distributed_scores(inputs, *, inception_weights: str | None, weights_sha256: str | None,
                       endpoint_url: str | None, actors: ActorSettings, kid_subset_size: int,
                       reference_stats: dict | None, log: Log,
                       dinov2_weights: str | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """The feature metrics of ``inputs`` (an :class:`~ncsn_ray.evaluate.job.EvalInputs`):
    ``(scores, info)``; Ray must be initialised."""
    wanted = inputs.feature_metrics
    common = dict(reference_stats=reference_stats is not None, inception_weights=inception_weights,
                  weights_sha256=weights_sha256, endpoint_url=endpoint_url, dinov2_weights=dinov2_weights)
    started = time.perf_counter()
    pool = actors.pool_size()
    log(f"[evaluate] {', '.join(wanted)}: features of {inputs.n_samples} samples on {pool} actor(s) "
        f"({'1 GPU' if actors.use_gpu else f'{actors.cpus_per_actor:g} CPU'} each, one shard per call, "
        f"{actors.batch_size} images per network pass)")
    table = sample_features(inputs.samples, inputs.sample_manifest,
                            extractor_specs(wanted, for_reference=False, **common), actors)
    seconds = time.perf_counter() - started
    ref_specs = extractor_specs(wanted, for_reference=True, **common)
    reference, cache_state, n_reference = None, None, None
    if ref_specs:
        reference, cache_state = reference_features(inputs.reference, inputs.ref_manifest, ref_specs, actors,
                                                    inputs.reference_limit, log)
        n_reference = len(next(iter(reference.values())))
    kwargs = metric_kwargs(inputs.n_samples, n_reference, kid_subset_size)
    scores = scores_from_features(wanted, table.features, reference, kwargs, reference_stats)
    info: dict[str, Any] = {"feature_extraction": {"actors": table.actors, "pool_size": pool,
                                                   "largest_shard_rows": table.largest_shard,
                                                   "batch_size": actors.batch_size,
                                                   "sample_seconds": round(seconds, 2)}}
    if n_reference is not None:
        info.update(num_reference=n_reference, reference_cache=cache_state,
                    reference_cache_uri=inputs.reference.child(CACHE_DIR).uri)
    return scores, info
