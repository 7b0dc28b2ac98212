"""FID, Inception Score and KID of a sample set against a prepared dataset (torch-fidelity).

Both sides are read straight from storage: the sample set (``ncsn_ray.samples``, complete
only: its manifest must exist) and the reference dataset (``ncsn_ray.datasets``). Images go
to torch-fidelity as in-memory ``torch.utils.data.Dataset`` objects yielding ``(3, H, W)``
uint8 tensors; grey images are repeated to 3 channels. torch-fidelity resizes to 299x299
inside its InceptionV3 (the TF-FID-compatible ``inception-v3-compat`` network).

Reference features are cached beside the reference dataset, under
``<reference>/_fidelity-cache/``: torch-fidelity caches them in a local folder
(``cache_root``, ``input2_cache_name``); this module fills that folder from storage before
the run and uploads what it added afterwards. The cache name binds the reference dataset
(its manifest) and the Inception weights (their SHA-256), so a changed dataset or other
weights never reuse stale features. Sample features are not cached.

Inception weights: ``inception_weights=PATH`` (a local file or a storage URI), else the
torch hub cache (``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``),
else a download from torch-fidelity's release URL; when that fails (no internet) the error
says how to provide the file. The file is a plain ``state_dict`` of torch-fidelity's
``FeatureExtractorInceptionV3``.

Scores are written to ``<samples>/_scores.json`` and returned. ``run(EvaluateOptions(...))``
is what ``jobs/evaluate.py`` calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .datasets import DatasetManifest, decode_images, iter_tables, read_manifest
from .errors import UserError, root_cause
from .layout import FIDELITY_CACHE, SCORES
from .samples import iter_sample_images, read_sample_manifest
from .storage import Storage, StorageError, endpoint_from_env, utc_timestamp

__all__ = [
    "EvaluationError",
    "EvaluateOptions",
    "run",
    "METRICS",
    "UInt8ImageDataset",
    "resolve_inception_weights",
    "EvalInputs",
    "check_inputs",
    "evaluate",
    "evaluate_on_ray",
]

METRICS = ("fid", "isc", "kid")
CACHE_DIR = FIDELITY_CACHE
SCORES_NAME = SCORES
FEATURE_EXTRACTOR = "inception-v3-compat"


class EvaluationError(UserError):
    """An evaluation that cannot run as asked; the message says why and what to do."""


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
                raise EvaluationError(f"expected {self._length} images, read {len(images)}")
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
    :class:`EvaluationError` explaining how to supply the file offline.
    """
    if path:
        storage = Storage.from_uri(path, endpoint_url=endpoint_url)
        if storage.is_local:
            local = Path(storage.path)
            if not local.is_file():
                raise EvaluationError(f"Inception weights {path}: no such file")
        else:
            if workdir is None:
                raise EvaluationError("a working folder is needed to fetch remote Inception weights")
            local = workdir / "inception-weights.pth"
            try:
                local.write_bytes(storage.read_bytes())
            except StorageError as err:
                raise EvaluationError(f"Inception weights {path}: cannot read ({err})") from err
        return local, {"source": path, "sha256": _sha256_file(local)}
    url, cached = _default_weights_file()
    if not cached.is_file():
        log(f"[evaluate] downloading the InceptionV3 weights from {url} into {cached.parent}")
        try:
            torch.hub.download_url_to_file(url, str(cached), progress=False)
        except Exception as err:  # URLError, HTTPError, socket errors, SSL errors, ...
            raise EvaluationError(
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


def _sync_cache_down(cache: Storage, key: str, local: Path) -> set[str]:
    present = set()
    for name in cache.list():
        if name.startswith(key) and name.endswith(".pt"):
            (local / name).write_bytes(cache.read_bytes(name))
            present.add(name)
    return present


def _sync_cache_up(cache: Storage, key: str, local: Path, before: set[str]) -> list[str]:
    added = []
    for file in sorted(local.iterdir()):
        if file.name.startswith(key) and file.suffix == ".pt" and file.name not in before:
            cache.write_bytes(file.name, file.read_bytes())
            added.append(file.name)
    return added


def _load_reference(storage: Storage, manifest: DatasetManifest, limit: int | None = None) -> np.ndarray:
    """The reference images in id order, ``(N, H, W, C)`` uint8; only the first ``limit`` if given."""
    parts, have = [], 0
    for table in iter_tables(storage, manifest):
        if limit is not None and have >= limit:
            break
        rows = table.column("image").to_pylist()
        if limit is not None:
            rows = rows[: limit - have]
        parts.append(decode_images(rows, manifest.channels))
        have += len(rows)
    return np.concatenate(parts)


def _load_samples(storage: Storage, manifest: dict[str, Any]) -> np.ndarray:
    return np.concatenate([images for _, images in iter_sample_images(storage, manifest)])


def _parse_metrics(metrics: str | list[str]) -> list[str]:
    items = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    unknown = [m for m in items if m not in METRICS]
    if unknown or not items:
        raise EvaluationError(f"metrics: expected a comma-separated subset of {','.join(METRICS)}, got {metrics!r}")
    return list(dict.fromkeys(items))


@dataclass
class EvalInputs:
    """The checked inputs of one evaluation (see :func:`check_inputs`)."""

    samples: Storage
    reference: Storage
    sample_manifest: dict[str, Any]
    ref_manifest: DatasetManifest
    metrics: list[str]
    image_shape: tuple[int, int, int]  # (C, H, W)
    reference_limit: int | None = None  # score against the first N reference images only

    @property
    def n_samples(self) -> int:
        return int(self.sample_manifest["count"])

    @property
    def n_reference(self) -> int:
        rows = int(self.ref_manifest.num_rows)
        return rows if self.reference_limit is None else min(rows, self.reference_limit)


def check_inputs(
    samples_uri: str,
    reference_uri: str,
    *,
    metrics: str | list[str] = "fid,isc,kid",
    endpoint_url: str | None = None,
    reference_limit: int | None = None,
) -> EvalInputs:
    """Refuse what cannot be evaluated: unknown metrics, an incomplete sample set (no
    manifest), a reference that is not a complete dataset, or images of another size or
    channel count. Reads only the two manifests."""
    wanted = _parse_metrics(metrics)
    endpoint = endpoint_url or endpoint_from_env()
    samples = Storage.from_uri(samples_uri, endpoint_url=endpoint)
    reference = Storage.from_uri(reference_uri, endpoint_url=endpoint)
    sample_manifest = read_sample_manifest(samples, kind="generate")
    ref_manifest = read_manifest(reference)
    sample_shape = (int(sample_manifest["channels"]), int(sample_manifest["height"]), int(sample_manifest["width"]))
    ref_shape = (ref_manifest.channels, ref_manifest.height, ref_manifest.width)
    if sample_shape != ref_shape:
        raise EvaluationError(
            f"the samples are {sample_shape[0]}x{sample_shape[1]}x{sample_shape[2]} (CxHxW) but the reference "
            f"{reference.uri} holds {ref_shape[0]}x{ref_shape[1]}x{ref_shape[2]} images: compare like with like"
        )
    if reference_limit is not None and reference_limit < 2:
        raise EvaluationError(f"the reference limit must be at least 2, got {reference_limit}")
    inputs = EvalInputs(samples, reference, sample_manifest, ref_manifest, wanted, sample_shape, reference_limit)
    if inputs.n_samples < 2 or inputs.n_reference < 2:
        raise EvaluationError(
            f"need at least 2 images on each side (samples {inputs.n_samples}, reference {inputs.n_reference})"
        )
    return inputs


def evaluate(
    samples_uri: str,
    reference_uri: str,
    *,
    metrics: str | list[str] = "fid,isc,kid",
    inception_weights: str | None = None,
    endpoint_url: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
    kid_subset_size: int = 1000,
    reference_limit: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score a complete sample set against a prepared dataset, in this process; write and
    return ``scores.json``.

    Returned/written fields: ``metrics`` (torch-fidelity's keys, e.g.
    ``frechet_inception_distance``, ``inception_score_mean``/``_std``,
    ``kernel_inception_distance_mean``/``_std``), ``num_samples``, ``num_reference``, the URIs,
    the sample set's ``checkpoint`` and ``sampler``, ``inception_weights``, and
    ``reference_cache`` (``"hit"`` or ``"computed"``). KID uses subsets of
    ``min(kid_subset_size, num_samples, num_reference)`` images; IS uses 10 splits as
    published, fewer (at least 50 images each) for sets under 500 images. ``reference_limit`` scores against the first N reference
    images only (cheaper; FID against a subset is a biased estimate, so compare like with like).
    """
    import torch_fidelity

    if batch_size < 1:
        raise EvaluationError(f"batch size must be at least 1, got {batch_size}")
    endpoint = endpoint_url or endpoint_from_env()
    inputs = check_inputs(samples_uri, reference_uri, metrics=metrics, endpoint_url=endpoint,
                          reference_limit=reference_limit)
    samples, reference = inputs.samples, inputs.reference
    sample_manifest, ref_manifest, wanted = inputs.sample_manifest, inputs.ref_manifest, inputs.metrics
    sample_shape, n_samples, n_reference = inputs.image_shape, inputs.n_samples, inputs.n_reference
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise EvaluationError("device cuda: no CUDA device here")

    with tempfile.TemporaryDirectory(prefix="ncsn-fidelity-") as tmp:
        workdir = Path(tmp)
        weights_path, weights_id = resolve_inception_weights(inception_weights, endpoint_url=endpoint, workdir=workdir, log=log)
        key = _reference_key(ref_manifest, weights_id["sha256"], reference_limit)
        cache = reference.child(CACHE_DIR)
        local_cache = workdir / "cache"
        local_cache.mkdir()
        before = _sync_cache_down(cache, key, local_cache)
        log(
            f"[evaluate] {', '.join(wanted)}: {n_samples} samples of {samples.uri} vs {n_reference} images of "
            f"{reference.uri} ({'cached reference features found' if before else 'reference features to compute'})"
        )
        started = time.perf_counter()
        scores = torch_fidelity.calculate_metrics(
            input1=UInt8ImageDataset(lambda: _load_samples(samples, sample_manifest), n_samples),
            input2=UInt8ImageDataset(lambda: _load_reference(reference, ref_manifest, reference_limit), n_reference),
            input2_cache_name=key,
            cache_root=str(local_cache),
            cache=True,
            cuda=use_cuda,
            batch_size=batch_size,
            fid="fid" in wanted,
            isc="isc" in wanted,
            kid="kid" in wanted,
            feature_extractor=FEATURE_EXTRACTOR,
            feature_extractor_weights_path=str(weights_path),
            kid_subset_size=min(kid_subset_size, n_samples, n_reference),
            isc_splits=max(1, min(10, n_samples // 50)),  # 10 as published, fewer for small sets
            save_cpu_ram=True,  # no DataLoader worker processes: the images are in memory already
            verbose=False,
        )
        added = _sync_cache_up(cache, key, local_cache, before)
    seconds = time.perf_counter() - started
    result = {
        "metrics": {k: float(v) for k, v in scores.items()},
        "samples": samples.uri,
        "reference": reference.uri,
        "num_samples": n_samples,
        "num_reference": n_reference,
        "image_shape": list(sample_shape),
        "checkpoint": sample_manifest.get("checkpoint"),
        "sampler": sample_manifest.get("sampler"),
        "inception_weights": weights_id,
        "feature_extractor": FEATURE_EXTRACTOR,
        "reference_cache": "computed" if added else "hit",  # hit: every needed file was cached
        "reference_cache_uri": cache.uri,
        "seconds": round(seconds, 2),
        "evaluated_at": utc_timestamp(),
    }
    samples.write_json(SCORES_NAME, result)
    pretty = ", ".join(f"{k} {v:.6g}" for k, v in result["metrics"].items())
    log(f"[evaluate] {pretty} ({seconds:.1f} s) -> {samples.uri_of(SCORES_NAME)}")
    return result


def evaluate_on_ray(
    samples_uri: str,
    reference_uri: str,
    *,
    num_cpus: float = 1,
    use_gpu: bool = False,
    log: Callable[[str], None] = print,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`evaluate` as one Ray task (``num_cpus`` CPUs, one GPU with ``use_gpu``).

    On a cluster (``ray job submit``) the Inception network then runs on a worker that has
    the resources, not on the head node where the driver lives; on a laptop an embedded
    Ray instance runs it. The inputs are checked in the driver first (fast failure with
    nothing started); with no cluster (no ``RAY_ADDRESS``) the Inception weights are also
    resolved first, since the task runs on this machine. Errors the task raises for bad
    input come back as the same exception types.
    """
    import ray

    from .raycluster import init_ray

    if not num_cpus > 0:
        raise EvaluationError(f"the number of CPUs must be positive, got {num_cpus}")
    endpoint = kwargs.get("endpoint_url") or endpoint_from_env()
    kwargs["endpoint_url"] = endpoint
    inputs = check_inputs(samples_uri, reference_uri, metrics=kwargs.get("metrics", "fid,isc,kid"), endpoint_url=endpoint,
                          reference_limit=kwargs.get("reference_limit"))
    # Local paths made absolute: the task's working directory may differ from ours.
    samples_uri, reference_uri = inputs.samples.uri, inputs.reference.uri
    weights = kwargs.get("inception_weights")
    if weights and Storage.from_uri(weights).is_local:
        kwargs["inception_weights"] = str(Path(weights).expanduser().resolve())
    local = not os.environ.get("RAY_ADDRESS")
    if use_gpu and local and not torch.cuda.is_available():
        raise EvaluationError("use_gpu: this machine has no CUDA GPU (and no RAY_ADDRESS names a cluster)")
    if local:
        with tempfile.TemporaryDirectory(prefix="ncsn-fidelity-") as tmp:
            resolve_inception_weights(kwargs.get("inception_weights"), endpoint_url=endpoint, workdir=Path(tmp), log=log)
    started_ray = init_ray(log=log)
    try:
        task = ray.remote(_evaluate_task).options(num_cpus=num_cpus, num_gpus=1 if use_gpu else 0, max_retries=0)
        try:
            return ray.get(task.remote(samples_uri, reference_uri, int(max(1, round(num_cpus))), use_gpu, kwargs))
        except ray.exceptions.RayTaskError as err:
            cause = root_cause(err)
            if isinstance(cause, UserError):
                raise cause from None
            raise
    finally:
        if started_ray:
            ray.shutdown()


def _evaluate_task(samples_uri: str, reference_uri: str, threads: int, use_gpu: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Body of the Ray task: :func:`evaluate` with the task's CPU count as torch threads."""
    if not use_gpu:
        torch.set_num_threads(threads)
    return evaluate(samples_uri, reference_uri, device="cuda" if use_gpu else "cpu", log=lambda m: print(m, flush=True), **kwargs)


@dataclass(kw_only=True)
class EvaluateOptions:
    """What ``jobs/evaluate.py`` asks for (see :func:`evaluate` for the fields)."""

    samples: str
    reference: str
    metrics: str = ",".join(METRICS)
    inception_weights: str | None = None
    endpoint_url: str | None = None
    batch_size: int = 64
    reference_limit: int | None = None
    use_gpu: bool = False
    num_cpus: float = 1.0
    use_ray: bool = True


def run(options: EvaluateOptions, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score ``options.samples`` against ``options.reference``: one Ray task, or in-process."""
    kwargs = dict(metrics=options.metrics, inception_weights=options.inception_weights,
                  endpoint_url=options.endpoint_url, batch_size=options.batch_size,
                  reference_limit=options.reference_limit)
    if options.use_ray:
        return evaluate_on_ray(options.samples, options.reference, num_cpus=options.num_cpus, use_gpu=options.use_gpu,
                               log=log, **kwargs)
    return evaluate(options.samples, options.reference, device="cuda" if options.use_gpu else None, log=log, **kwargs)
