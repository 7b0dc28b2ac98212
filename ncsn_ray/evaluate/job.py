"""Scores of a sample set: FID, Inception Score and KID against a prepared dataset
(:mod:`ncsn_ray.evaluate.fidelity`), and the offline digits metric (:mod:`ncsn_ray.evaluate.digits`).

``run(EvaluateOptions(...))`` is what ``jobs/evaluate.py`` calls. The sample set is read
straight from storage and must be complete (its manifest exists). ``fid``, ``isc`` and
``kid`` need a reference dataset of the same image size and channels; ``digits`` needs 8x8
grey samples and no reference (it uses scikit-learn's digits, offline) and prints its
calibration rows beside the score. Scores are written to ``<samples>/_scores.json``.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import digits as digits_quality
from ..console import Log
from ..data.format import DatasetManifest, read_manifest, verify_shards
from ..errors import UserError, begin_work, root_cause
from .fidelity import INCEPTION_METRICS, FidelityError, inception_scores, resolve_inception_weights
from ..io.layout import SCORES
from ..sample.sample_set import iter_sample_images, read_sample_manifest
from ..io.storage import Storage, endpoint_from_env, utc_timestamp

__all__ = ["EvaluationError", "EvaluateOptions", "EvalInputs", "METRICS", "check_inputs", "evaluate",
           "evaluate_on_ray", "run", "SCORES"]

METRICS = (*INCEPTION_METRICS, "digits")


class EvaluationError(UserError):
    """An evaluation that cannot run as asked; the message says why and what to do."""


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
    sample_manifest: dict[str, Any]
    metrics: list[str]
    image_shape: tuple[int, int, int]  # (C, H, W)
    reference: Storage | None = None
    ref_manifest: DatasetManifest | None = None
    reference_limit: int | None = None  # score against the first N reference images only

    @property
    def n_samples(self) -> int:
        return int(self.sample_manifest["count"])

    @property
    def inception(self) -> list[str]:
        return [m for m in self.metrics if m in INCEPTION_METRICS]


def check_inputs(samples_uri: str, reference_uri: str | None, *, metrics: str | list[str] = "fid,isc,kid",
                 endpoint_url: str | None = None, reference_limit: int | None = None) -> EvalInputs:
    """Refuse what cannot be evaluated: unknown metrics, an incomplete sample set (no
    manifest), Inception metrics without a complete reference dataset of the same image
    shape, the digits metric on images that are not 8x8 grey. Reads only manifests."""
    wanted = _parse_metrics(metrics)
    endpoint = endpoint_url or endpoint_from_env()
    samples = Storage.from_uri(samples_uri, endpoint_url=endpoint)
    sample_manifest = read_sample_manifest(samples, kind="generate")
    shape = (int(sample_manifest["channels"]), int(sample_manifest["height"]), int(sample_manifest["width"]))
    inputs = EvalInputs(samples, sample_manifest, wanted, shape, reference_limit=reference_limit)
    if inputs.n_samples < 2:
        raise EvaluationError(f"need at least 2 samples, {samples.uri} has {inputs.n_samples}")
    if "digits" in wanted and (shape[1], shape[2], shape[0]) != digits_quality.IMAGE_SHAPE:
        raise EvaluationError(f"the digits metric needs 8x8 grey samples; {samples.uri} holds "
                              f"{shape[0]}x{shape[1]}x{shape[2]} (CxHxW) images")
    if inputs.inception:
        if not reference_uri:
            raise EvaluationError(f"{', '.join(inputs.inception)} need a reference dataset (a prepared dataset URI)")
        if reference_limit is not None and reference_limit < 2:
            raise EvaluationError(f"the reference limit must be at least 2, got {reference_limit}")
        inputs.reference = Storage.from_uri(reference_uri, endpoint_url=endpoint)
        inputs.ref_manifest = read_manifest(inputs.reference)
        verify_shards(inputs.reference, inputs.ref_manifest)
        ref = inputs.ref_manifest
        if (ref.channels, ref.height, ref.width) != shape:
            raise EvaluationError(
                f"the samples are {shape[0]}x{shape[1]}x{shape[2]} (CxHxW) but the reference {inputs.reference.uri} "
                f"holds {ref.channels}x{ref.height}x{ref.width} images: compare like with like")
        n_reference = ref.num_rows if reference_limit is None else min(ref.num_rows, reference_limit)
        if n_reference < 2:
            raise EvaluationError(f"need at least 2 reference images, {inputs.reference.uri} offers {n_reference}")
    return inputs


def _digits_scores(images: np.ndarray, log: Log) -> tuple[dict[str, float], dict[str, Any]]:
    """The digits metric and its calibration at the same number of images."""
    scored, rows = digits_quality.score_with_calibration(images)
    log("[evaluate] digits metric (classifier-feature Frechet distance; lower is better), "
        f"calibration at n={rows['real']['n']}:")
    for name, row in (("samples", scored), *rows.items()):
        log(f"[evaluate]   {name:<9} FD {row['digits_fd']:8.3f}   confidence {row['digits_confidence']:.3f}   "
            f"largest class {100 * row['digits_max_class_share']:4.1f}%   IS {row['digits_is']:5.2f}   "
            f"near copies {100 * row['digits_near_copy_share']:4.1f}%")
    scalars = {k: float(v) for k, v in scored.items() if isinstance(v, float)}
    return scalars, {"class_shares": scored["digits_class_shares"], "calibration": rows}


def evaluate(samples_uri: str, reference_uri: str | None = None, *, metrics: str | list[str] = "fid,isc,kid",
             inception_weights: str | None = None, endpoint_url: str | None = None, batch_size: int = 64,
             device: str | None = None, kid_subset_size: int = 1000, reference_limit: int | None = None,
             log: Log = print) -> dict[str, Any]:
    """Score a complete sample set in this process; write and return ``_scores.json``.

    Fields: ``metrics`` (torch-fidelity's keys, e.g. ``frechet_inception_distance``,
    ``inception_score_mean``/``_std``, ``kernel_inception_distance_mean``/``_std``, and the
    ``digits_*`` values), ``num_samples``, the URIs, the sample set's ``checkpoint`` and
    ``sampler``; with Inception metrics ``num_reference``, ``inception_weights`` and
    ``reference_cache`` (``"hit"`` or ``"computed"``); with the digits metric ``digits``
    (class shares and calibration rows). ``reference_limit`` scores against the first N
    reference images only (cheaper; FID against a subset is biased: compare like with like).
    """
    if batch_size < 1:
        raise EvaluationError(f"batch size must be at least 1, got {batch_size}")
    endpoint = endpoint_url or endpoint_from_env()
    inputs = check_inputs(samples_uri, reference_uri, metrics=metrics, endpoint_url=endpoint,
                          reference_limit=reference_limit)
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise FidelityError("device cuda: no CUDA device here")
    remote_weights = bool(inception_weights) and not Storage.from_uri(inception_weights).is_local
    if inputs.inception and not remote_weights:
        # a missing local file (or a failed download into the hub cache) is bad input, found
        # before the work begins; a remote file is fetched once, by inception_scores
        resolve_inception_weights(inception_weights, endpoint_url=endpoint, log=log)
    begin_work()
    started = time.perf_counter()
    images = np.concatenate([batch for _, batch in iter_sample_images(inputs.samples, inputs.sample_manifest)])
    result: dict[str, Any] = {"metrics": {}, "samples": inputs.samples.uri, "num_samples": inputs.n_samples,
                              "image_shape": list(inputs.image_shape),
                              "checkpoint": inputs.sample_manifest.get("checkpoint"),
                              "sampler": inputs.sample_manifest.get("sampler")}
    if inputs.inception:
        scores, info = inception_scores(
            images, inputs.reference, inputs.ref_manifest, inputs.inception, reference_limit=reference_limit,
            inception_weights=inception_weights, endpoint_url=endpoint, batch_size=batch_size, use_cuda=use_cuda,
            kid_subset_size=kid_subset_size, log=log)
        result["metrics"].update(scores)
        result.update(info, reference=inputs.reference.uri)
        result.update(sample_size_labels(scores, inputs.n_samples))
    if "digits" in inputs.metrics:
        scores, details = _digits_scores(images, log)
        result["metrics"].update(scores)
        result["digits"] = details
    seconds = time.perf_counter() - started
    result.update(seconds=round(seconds, 2), evaluated_at=utc_timestamp())
    inputs.samples.write_json(SCORES, result)
    pretty = ", ".join(f"{k} {v:.6g}" for k, v in result["metrics"].items())
    log(f"[evaluate] {pretty} ({seconds:.1f} s) -> {inputs.samples.uri_of(SCORES)}")
    if result.get("reported"):
        labelled = ", ".join(f"{k} {v:.6g}" for k, v in result["reported"].items())
        note = ("" if result["comparable_with_published"] else
                f": below {PUBLISHED_N:,} samples, not comparable with published {PUBLISHED_N // 1000}k numbers")
        log(f"[evaluate] {labelled}{note}")
    return result


PUBLISHED_N = 50_000  # the sample count of published FID, IS and KID numbers (NCSN, NCSNv2, EDM)
_SHORT = {"frechet_inception_distance": "fid", "inception_score_mean": "is", "kernel_inception_distance_mean": "kid"}


def sample_size_labels(scores: dict[str, float], n: int) -> dict[str, Any]:
    """``{"reported": {"fid@n": ..., "is@n": ..., "kid@n": ...}, "comparable_with_published":
    n >= 50,000}``: FID is biased upwards at small n (and IS and KID move with n), so a
    number is reported with the n it was computed at."""
    reported = {f"{short}@{n}": scores[key] for key, short in _SHORT.items() if key in scores}
    return {"reported": reported, "comparable_with_published": n >= PUBLISHED_N} if reported else {}


def evaluate_on_ray(samples_uri: str, reference_uri: str | None = None, *, num_cpus: float = 1,
                    use_gpu: bool = False, log: Log = print, **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate` as one Ray task (``num_cpus`` CPUs, one GPU with ``use_gpu``).

    On a cluster (``ray job submit``) the work then runs on a worker that has the
    resources, not on the head node where the driver lives; on a laptop an embedded Ray
    instance runs it. The inputs are checked in the driver first (fast failure with nothing
    started); with no cluster (no ``RAY_ADDRESS``) the Inception weights are also resolved
    first, since the task runs on this machine. Errors the task raises for bad input come
    back as the same exception types.
    """
    import ray

    from ..cluster import init_ray

    if not num_cpus > 0:
        raise EvaluationError(f"the number of CPUs must be positive, got {num_cpus}")
    endpoint = kwargs.get("endpoint_url") or endpoint_from_env()
    kwargs["endpoint_url"] = endpoint
    inputs = check_inputs(samples_uri, reference_uri, metrics=kwargs.get("metrics", "fid,isc,kid"),
                          endpoint_url=endpoint, reference_limit=kwargs.get("reference_limit"))
    # Local paths made absolute: the task's working directory may differ from ours.
    samples_uri = inputs.samples.uri
    reference_uri = inputs.reference.uri if inputs.reference is not None else None
    weights = kwargs.get("inception_weights")
    if weights and Storage.from_uri(weights).is_local:
        kwargs["inception_weights"] = str(Path(weights).expanduser().resolve())
    local = not os.environ.get("RAY_ADDRESS")
    if use_gpu and local and not torch.cuda.is_available():
        raise EvaluationError("use_gpu: this machine has no CUDA GPU (and no RAY_ADDRESS names a cluster)")
    if local and inputs.inception:
        with tempfile.TemporaryDirectory(prefix="ncsn-fidelity-") as tmp:
            resolve_inception_weights(kwargs.get("inception_weights"), endpoint_url=endpoint, workdir=Path(tmp), log=log)
    begin_work()
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


def _evaluate_task(samples_uri: str, reference_uri: str | None, threads: int, use_gpu: bool,
                   kwargs: dict[str, Any]) -> dict[str, Any]:
    """Body of the Ray task: :func:`evaluate` with the task's CPU count as torch threads."""
    if not use_gpu:
        torch.set_num_threads(threads)
    return evaluate(samples_uri, reference_uri, device="cuda" if use_gpu else "cpu",
                    log=lambda m: print(m, flush=True), **kwargs)


@dataclass(kw_only=True)
class EvaluateOptions:
    """What ``jobs/evaluate.py`` asks for (see :func:`evaluate` for the fields)."""

    samples: str
    reference: str | None = None
    metrics: str = ",".join(INCEPTION_METRICS)
    inception_weights: str | None = None
    endpoint_url: str | None = None
    batch_size: int = 64
    reference_limit: int | None = None
    use_gpu: bool = False
    num_cpus: float = 1.0
    use_ray: bool = True


def run(options: EvaluateOptions, *, log: Log = print) -> dict[str, Any]:
    """Score ``options.samples``: one Ray task, or in this process (``use_ray=False``)."""
    kwargs = dict(metrics=options.metrics, inception_weights=options.inception_weights,
                  endpoint_url=options.endpoint_url, batch_size=options.batch_size,
                  reference_limit=options.reference_limit)
    if options.use_ray:
        return evaluate_on_ray(options.samples, options.reference, num_cpus=options.num_cpus, use_gpu=options.use_gpu,
                               log=log, **kwargs)
    return evaluate(options.samples, options.reference, device="cuda" if options.use_gpu else None, log=log, **kwargs)
