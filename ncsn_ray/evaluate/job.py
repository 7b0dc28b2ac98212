"""Scores of a sample set: FID, Inception Score, KID and precision/recall against a prepared
dataset or published statistics, FD-DINOv2, and the offline digits metric.

``run(EvaluateOptions(...))`` is what ``jobs/evaluate.py`` calls. The sample set is read
straight from storage and must be complete (its manifest exists). ``fid``, ``kid``, ``prc``
and ``fd-dinov2`` need a reference dataset of the same image size and channels (``fid`` can
use published statistics instead: :mod:`~ncsn_ray.evaluate.reference_stats`); ``isc`` needs
none; ``digits`` needs 8x8 grey samples and no reference (scikit-learn's digits, offline)
and prints its calibration rows beside the score; ``inpaint`` scores an inpainting set
(``generate.py --mode inpaint``) of 8x8 grey digits, and only it applies to one
(:mod:`~ncsn_ray.evaluate.inpaint_quality`). Scores are written to ``<samples>/_scores.json``.

Two paths: :func:`evaluate_on_ray` (the default) extracts features on a Ray Data actor pool
(:mod:`~ncsn_ray.evaluate.distributed`); :func:`evaluate` runs torch-fidelity's
``calculate_metrics`` in this process (``--no-ray``). Both give the same scores.
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
from . import inpaint_quality
from ..console import Log
from ..data.format import DatasetManifest, read_manifest, verify_shards
from ..errors import UserError, begin_work
from .fidelity import FEATURE_EXTRACTOR, INCEPTION_METRICS, inception_scores, load_reference_images
from .weights import FidelityError, resolve_inception_weights
from .dinov2 import check_dinov2
from .reference_stats import load_reference_stats
from ..io.layout import SCORES
from ..sample.sample_set import iter_sample_images, read_sample_manifest
from ..io.storage import Storage, endpoint_from_env, utc_timestamp

__all__ = ["EvaluationError", "EvaluateOptions", "EvalInputs", "METRICS", "check_inputs", "evaluate",
           "evaluate_on_ray", "run", "SCORES"]

FEATURE_METRICS = (*INCEPTION_METRICS, "fd-dinov2")  # computed from network features of the images
METRICS = (*FEATURE_METRICS, "digits", "inpaint")  # "inpaint": inpainting sets only, and alone
NEEDS_REFERENCE = ("fid", "kid", "prc", "fd-dinov2")  # fid alone can use --reference-stats instead


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
    reference_stats: dict[str, Any] | None = None  # published mu, sigma for fid (reference_stats.py)
    reference_stats_uri: str | None = None

    @property
    def n_samples(self) -> int:
        return int(self.sample_manifest["count"])

    @property
    def kind(self) -> str:
        """The sample set's kind: ``generate`` or ``inpaint``."""
        return str(self.sample_manifest["kind"])

    @property
    def inception(self) -> list[str]:
        return [m for m in self.metrics if m in INCEPTION_METRICS]

    @property
    def feature_metrics(self) -> list[str]:
        return [m for m in self.metrics if m in FEATURE_METRICS]


def check_inputs(samples_uri: str, reference_uri: str | None, *, metrics: str | list[str] = "fid,isc,kid",
                 endpoint_url: str | None = None, reference_limit: int | None = None,
                 reference_stats: str | None = None) -> EvalInputs:
    """Refuse what cannot be evaluated: unknown metrics, an incomplete sample set (no
    manifest), metrics that compare with a reference without a complete reference dataset of
    the same image shape (or, for fid, a usable ``reference_stats`` file), the digits metric
    on images that are not 8x8 grey; ``inpaint`` on anything but an inpainting set of 8x8 grey
    images, and any other metric on an inpainting set. Reads only manifests (and the statistics
    file)."""
    wanted = _parse_metrics(metrics)
    endpoint = endpoint_url or endpoint_from_env()
    samples = Storage.from_uri(samples_uri, endpoint_url=endpoint)
    sample_manifest = read_sample_manifest(samples, kind=None)
    shape = (int(sample_manifest["channels"]), int(sample_manifest["height"]), int(sample_manifest["width"]))
    inputs = EvalInputs(samples, sample_manifest, wanted, shape, reference_limit=reference_limit)
    _check_kind(inputs)
    if inputs.kind == "inpaint":
        return inputs
    if inputs.n_samples < 2:
        raise EvaluationError(f"need at least 2 samples, {samples.uri} has {inputs.n_samples}")
    if "digits" in wanted and (shape[1], shape[2], shape[0]) != digits_quality.IMAGE_SHAPE:
        raise EvaluationError(f"the digits metric needs 8x8 grey samples; {samples.uri} holds "
                              f"{shape[0]}x{shape[1]}x{shape[2]} (CxHxW) images")
    if reference_stats:
        if "fid" not in wanted:
            raise EvaluationError("--reference-stats is for fid; add fid to --metrics or drop --reference-stats")
        inputs.reference_stats = load_reference_stats(reference_stats, endpoint_url=endpoint)
        inputs.reference_stats_uri = reference_stats
    compared = [m for m in wanted if m in NEEDS_REFERENCE and not (m == "fid" and inputs.reference_stats)]
    if compared:
        if not reference_uri:
            raise EvaluationError(f"{', '.join(compared)} need a reference dataset (a prepared dataset URI)"
                                  + ("; fid alone can use --reference-stats" if compared == ["fid"] else ""))
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


def _check_kind(inputs: EvalInputs) -> None:
    """``--metrics inpaint`` goes with inpainting sets (of 8x8 grey digits), every other metric
    with generated sets."""
    uri, wanted = inputs.samples.uri, inputs.metrics
    if inputs.kind == "inpaint":
        others = [m for m in wanted if m != "inpaint"]
        if others:
            raise EvaluationError(f"{uri} is an inpainting set (generate.py --mode inpaint): {', '.join(others)} "
                                  "score generated sample sets; use --metrics inpaint")
        if not inpaint_quality.applies(inputs.image_shape):
            c, h, w = inputs.image_shape
            raise EvaluationError(f"the inpaint metric uses the digits classifier and needs 8x8 grey images; {uri} "
                                  f"holds {c}x{h}x{w} (CxHxW) images")
    elif inputs.kind != "generate":
        raise EvaluationError(f"{uri}: a {inputs.kind!r} sample set, which evaluate.py does not score")
    elif "inpaint" in wanted:
        raise EvaluationError(f"--metrics inpaint scores an inpainting set (generate.py --mode inpaint); {uri} is a "
                              "generated sample set: score it with fid, isc, kid, prc, fd-dinov2 or digits")


def _inpaint_scores(inputs: EvalInputs, started: float, log: Log) -> dict[str, Any]:
    """Score an inpainting set (label agreement, diversity, known-pixel change) and publish."""
    scores = inpaint_quality.score_set(inputs.samples, inputs.sample_manifest)
    log(f"[evaluate] inpainting ({scores['n_images']} images x {scores['samples_per_image']}): "
        f"{inpaint_quality.summary_line(scores)}")
    result = _base_result(inputs)
    result["metrics"].update(inpaint_quality.metrics_of(scores))
    result.update(samples_per_image=scores["samples_per_image"], nfe_per_sample=inputs.sample_manifest.get(
        "nfe_per_sample"))
    return _publish(inputs, result, started, log)


def _digits_scores(images: np.ndarray, log: Log) -> tuple[dict[str, float], dict[str, Any]]:
    """The digits metric and its calibration at the same number of images."""
    scored, rows = digits_quality.score_with_calibration(images)
    log("[evaluate] digits metric (classifier-feature Frechet distance; lower is better), "
        f"calibration at n={rows['real']['n']}:")
    for name, row in (("samples", scored), *rows.items()):
        log(f"[evaluate]   {name:<9} FD {row['digits_fd']:8.3f}   confidence {row['digits_confidence']:.3f}   "
            f"precision {row['digits_precision']:.3f}   recall {row['digits_recall']:.3f}   "
            f"largest class {100 * row['digits_max_class_share']:4.1f}%   IS {row['digits_is']:5.2f}   "
            f"near copies {100 * row['digits_near_copy_share']:4.1f}%")
    scalars = {k: float(v) for k, v in scored.items() if isinstance(v, float)}
    return scalars, {"class_shares": scored["digits_class_shares"], "calibration": rows}


def _sample_images(inputs: EvalInputs) -> np.ndarray:
    """Every sample of the set in seed order, ``(N, H, W, C)`` uint8, in this process."""
    return np.concatenate([batch for _, batch in iter_sample_images(inputs.samples, inputs.sample_manifest)])


def _add_digits(result: dict[str, Any], images: np.ndarray, log: Log) -> None:
    scores, details = _digits_scores(images, log)
    result["metrics"].update(scores)
    result["digits"] = details


def _resolve_weights_in_driver(inputs: EvalInputs, inception_weights: str | None, endpoint: str | None,
                               log: Log) -> tuple[str | None, dict[str, str] | None]:
    """``(weights reference for the workers, identity)``: a missing file (or a failed download
    into the hub cache) is bad input, found before any work begins; a local path is made
    absolute (the workers' working directory may differ)."""
    if not inputs.inception:
        return inception_weights, None
    if inception_weights and Storage.from_uri(inception_weights).is_local:
        inception_weights = str(Path(inception_weights).expanduser().resolve())
    with tempfile.TemporaryDirectory(prefix="ncsn-fidelity-") as tmp:
        _, identity = resolve_inception_weights(inception_weights, endpoint_url=endpoint, workdir=Path(tmp), log=log)
    return inception_weights, identity


def _base_result(inputs: EvalInputs) -> dict[str, Any]:
    result: dict[str, Any] = {"metrics": {}, "samples": inputs.samples.uri, "num_samples": inputs.n_samples,
                              "image_shape": list(inputs.image_shape),
                              "checkpoint": inputs.sample_manifest.get("checkpoint"),
                              "sampler": inputs.sample_manifest.get("sampler")}
    if inputs.reference is not None:
        result["reference"] = inputs.reference.uri
    if inputs.reference_stats is not None:
        result["reference_stats"] = {"uri": inputs.reference_stats_uri, "n": inputs.reference_stats["n"]}
    return result


def _publish(inputs: EvalInputs, result: dict[str, Any], started: float, log: Log) -> dict[str, Any]:
    """Sample-size labels, timing, ``_scores.json`` (written last) and the printed lines."""
    result.update(sample_size_labels(result["metrics"], inputs.n_samples))
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


def _local_features(specs, images: np.ndarray, device: torch.device, batch_size: int) -> dict:
    """Features of in-memory images in this process, with the same networks the actors use."""
    from .features import build_extractor, features_of_images

    with tempfile.TemporaryDirectory(prefix="ncsn-features-") as tmp:
        networks = [build_extractor(spec, device, Path(tmp)) for spec in specs]
        parts = [features_of_images(specs, networks, images[i:i + batch_size], device)
                 for i in range(0, len(images), batch_size)]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def evaluate(samples_uri: str, reference_uri: str | None = None, *, metrics: str | list[str] = "fid,isc,kid",
             inception_weights: str | None = None, endpoint_url: str | None = None, batch_size: int = 64,
             device: str | None = None, kid_subset_size: int = 1000, reference_limit: int | None = None,
             reference_stats: str | None = None, dinov2_weights: str | None = None, log: Log = print) -> dict[str, Any]:
    """Score a complete sample set in this process; write and return ``_scores.json``.

    Fields: ``metrics`` (torch-fidelity's keys, e.g. ``frechet_inception_distance``,
    ``inception_score_mean``/``_std``, ``kernel_inception_distance_mean``/``_std``,
    ``precision``/``recall``/``f_score``; ``fd_dinov2``; the ``digits_*`` values),
    ``num_samples``, the URIs, the sample set's ``checkpoint`` and ``sampler``; with
    Inception metrics ``num_reference``, ``inception_weights`` and ``reference_cache``
    (``"hit"`` or ``"computed"``); with the digits metric ``digits`` (class shares and
    calibration rows); ``reported`` (``fid@n``, ...). ``reference_limit`` scores against the
    first N reference images only (cheaper; FID against a subset is biased: compare like
    with like); ``reference_stats`` scores FID against a published statistics file.
    """
    from .distributed import extractor_specs
    from .scores import metric_kwargs, scores_from_features

    if batch_size < 1:
        raise EvaluationError(f"batch size must be at least 1, got {batch_size}")
    endpoint = endpoint_url or endpoint_from_env()
    inputs = check_inputs(samples_uri, reference_uri, metrics=metrics, endpoint_url=endpoint,
                          reference_limit=reference_limit, reference_stats=reference_stats)
    if inputs.kind == "inpaint":
        begin_work()
        return _inpaint_scores(inputs, time.perf_counter(), log)
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise FidelityError("device cuda: no CUDA device here")
    remote_weights = bool(inception_weights) and not Storage.from_uri(inception_weights).is_local
    if inputs.inception and not remote_weights:
        # a missing local file (or a failed download into the hub cache) is bad input, found
        # before the work begins; a remote file is fetched once, by inception_scores
        resolve_inception_weights(inception_weights, endpoint_url=endpoint, log=log)
    if "fd-dinov2" in inputs.metrics:
        check_dinov2(dinov2_weights, endpoint)
    begin_work()
    started = time.perf_counter()
    images = _sample_images(inputs)
    result = _base_result(inputs)
    by_torch_fidelity = [m for m in inputs.inception if not (m == "fid" and inputs.reference_stats is not None)]
    if by_torch_fidelity:
        scores, info = inception_scores(
            images, inputs.reference, inputs.ref_manifest, by_torch_fidelity, reference_limit=reference_limit,
            inception_weights=inception_weights, endpoint_url=endpoint, batch_size=batch_size, use_cuda=use_cuda,
            kid_subset_size=kid_subset_size, log=log)
        result["metrics"].update(scores)
        result.update(info)
    own = [m for m in inputs.feature_metrics if m not in by_torch_fidelity]  # fid against statistics, fd-dinov2
    if own:
        dev = torch.device("cuda" if use_cuda else "cpu")
        weights, identity = _resolve_weights_in_driver(inputs, inception_weights, endpoint, log)
        common = dict(reference_stats=inputs.reference_stats is not None, inception_weights=weights,
                      weights_sha256=identity["sha256"] if identity else None, endpoint_url=endpoint,
                      dinov2_weights=dinov2_weights)
        mine = _local_features(extractor_specs(own, for_reference=False, **common), images, dev, batch_size)
        ref_specs = extractor_specs(own, for_reference=True, **common)
        theirs = None
        if ref_specs:
            ref_images = load_reference_images(inputs.reference, inputs.ref_manifest, reference_limit)
            theirs = _local_features(ref_specs, ref_images, dev, batch_size)
        kwargs = metric_kwargs(inputs.n_samples, None, kid_subset_size)
        result["metrics"].update(scores_from_features(own, mine, theirs, kwargs, inputs.reference_stats))
    if "digits" in inputs.metrics:
        _add_digits(result, images, log)
    return _publish(inputs, result, started, log)


PUBLISHED_N = 50_000  # the sample count of published FID, IS and KID numbers (NCSN, NCSNv2, EDM)
_SHORT = {"frechet_inception_distance": "fid", "inception_score_mean": "is", "kernel_inception_distance_mean": "kid",
          "precision": "precision", "recall": "recall", "fd_dinov2": "fd_dinov2"}


def sample_size_labels(scores: dict[str, float], n: int) -> dict[str, Any]:
    """``{"reported": {"fid@n": ..., "is@n": ..., "kid@n": ..., ...}, "comparable_with_published":
    n >= 50,000}``: FID is biased upwards at small n (and IS, KID and precision/recall move
    with n), so a number is reported with the n it was computed at."""
    reported = {f"{short}@{n}": scores[key] for key, short in _SHORT.items() if key in scores}
    return {"reported": reported, "comparable_with_published": n >= PUBLISHED_N} if reported else {}


def evaluate_on_ray(samples_uri: str, reference_uri: str | None = None, *, metrics: str | list[str] = "fid,isc,kid",
                    inception_weights: str | None = None, endpoint_url: str | None = None, batch_size: int = 64,
                    kid_subset_size: int = 1000, reference_limit: int | None = None,
                    reference_stats: str | None = None, use_gpu: bool = False, num_actors: int | None = None,
                    cpus_per_actor: float = 1.0, dinov2_weights: str | None = None, log: Log = print) -> dict[str, Any]:
    """:func:`evaluate`'s scores with the features extracted across the cluster.

    The sample set's shards stream through a Ray Data actor pool (``num_actors`` actors,
    default one per GPU with ``use_gpu``, else one per ``cpus_per_actor`` CPUs; ``batch_size``
    images per call), as do the reference's when they are not cached; the driver gathers
    features only and computes the scores (:mod:`~ncsn_ray.evaluate.distributed`). The inputs
    and the Inception weights are checked in the driver first (fast failure, nothing started).
    The digits metric, on 8x8 images, is computed in the driver. ``_scores.json`` also records
    ``feature_extraction`` (actors used, the largest number of rows one call received).
    """
    from ..cluster import init_ray
    from .distributed import ActorSettings, distributed_scores

    if not cpus_per_actor > 0:
        raise EvaluationError(f"the CPUs per actor must be positive, got {cpus_per_actor}")
    if num_actors is not None and num_actors < 1:
        raise EvaluationError(f"the number of actors must be at least 1, got {num_actors}")
    if batch_size < 1:
        raise EvaluationError(f"batch size must be at least 1, got {batch_size}")
    endpoint = endpoint_url or endpoint_from_env()
    inputs = check_inputs(samples_uri, reference_uri, metrics=metrics, endpoint_url=endpoint,
                          reference_limit=reference_limit, reference_stats=reference_stats)
    if use_gpu and not os.environ.get("RAY_ADDRESS") and not torch.cuda.is_available():
        raise EvaluationError("use_gpu: this machine has no CUDA GPU (and no RAY_ADDRESS names a cluster)")
    if inputs.kind == "inpaint":  # 8x8 digits, computed in the driver: no cluster needed
        begin_work()
        return _inpaint_scores(inputs, time.perf_counter(), log)
    weights, identity = _resolve_weights_in_driver(inputs, inception_weights, endpoint, log)
    if "fd-dinov2" in inputs.metrics:
        check_dinov2(dinov2_weights, endpoint)
    begin_work()
    started = time.perf_counter()
    result = _base_result(inputs)
    started_ray = init_ray(log=log) if inputs.feature_metrics else False  # digits alone needs no cluster
    try:
        if inputs.feature_metrics:
            actors = ActorSettings(num_actors=num_actors, cpus_per_actor=cpus_per_actor, use_gpu=use_gpu,
                                   batch_size=batch_size)
            scores, info = distributed_scores(inputs, inception_weights=weights,
                                              weights_sha256=identity["sha256"] if identity else None,
                                              endpoint_url=endpoint, actors=actors, kid_subset_size=kid_subset_size,
                                              reference_stats=inputs.reference_stats, log=log,
                                              dinov2_weights=dinov2_weights)
            result["metrics"].update(scores)
            result.update(info)
            if identity is not None:
                result.update(inception_weights=identity, feature_extractor=FEATURE_EXTRACTOR)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    if "digits" in inputs.metrics:
        _add_digits(result, _sample_images(inputs), log)  # 8x8 images: the whole set is small
    return _publish(inputs, result, started, log)


@dataclass(kw_only=True)
class EvaluateOptions:
    """What ``jobs/evaluate.py`` asks for (see :func:`evaluate` and :func:`evaluate_on_ray`)."""

    samples: str
    reference: str | None = None
    metrics: str = "fid,isc,kid"
    inception_weights: str | None = None
    reference_stats: str | None = None
    dinov2_weights: str | None = None
    endpoint_url: str | None = None
    batch_size: int = 64
    reference_limit: int | None = None
    use_gpu: bool = False
    num_actors: int | None = None  # feature-extraction actors (None: one per GPU / per num_cpus CPUs)
    num_cpus: float = 1.0  # CPUs each actor reserves
    use_ray: bool = True


def sample_set_uris(samples: str) -> list[str]:
    """The sample sets of ``--samples``: one URI, or several separated by commas."""
    uris = [u.strip() for u in samples.split(",") if u.strip()]
    if not uris:
        raise EvaluationError("no sample set given")
    if len(set(uris)) != len(uris):
        raise EvaluationError(f"a sample set is named twice in {samples!r}: each set counts once in the spread")
    return uris


def run(options: EvaluateOptions, *, log: Log = print) -> dict[str, Any]:
    """Score ``options.samples``: features on a Ray actor pool, or in this process (``use_ray=False``).

    Several sample sets (``options.samples`` a comma-separated list, e.g. one model's disjoint
    seed ranges) are each scored as one set would be (each gets its own ``_scores.json``), then
    reported together: every metric as the mean ± std over the sets (:mod:`ncsn_ray.evaluate.spread`).
    Every set is checked before any is scored, and one Ray instance serves them all."""
    kwargs = dict(metrics=options.metrics, inception_weights=options.inception_weights,
                  endpoint_url=options.endpoint_url, batch_size=options.batch_size,
                  reference_limit=options.reference_limit, reference_stats=options.reference_stats,
                  dinov2_weights=options.dinov2_weights)

    def score(uri: str) -> dict[str, Any]:
        if options.use_ray:
            return evaluate_on_ray(uri, options.reference, use_gpu=options.use_gpu, num_actors=options.num_actors,
                                   cpus_per_actor=options.num_cpus, log=log, **kwargs)
        return evaluate(uri, options.reference, device="cuda" if options.use_gpu else None, log=log, **kwargs)

    uris = sample_set_uris(options.samples)
    if len(uris) == 1:
        return score(uris[0])
    checked = [check_inputs(uri, options.reference, metrics=options.metrics, endpoint_url=options.endpoint_url
                            or endpoint_from_env(), reference_limit=options.reference_limit,
                            reference_stats=options.reference_stats) for uri in uris]
    counts = {inputs.n_samples for inputs in checked}
    if len(counts) > 1:
        log(f"[evaluate] note: the sets hold different numbers of samples ({sorted(counts)}); scores such as FID "
            "move with n, so their spread mixes that in")
    started_ray = False
    if options.use_ray and checked[0].feature_metrics:
        from ..cluster import init_ray

        begin_work()
        started_ray = init_ray(log=log)  # one instance for every set
    try:
        results = []
        for index, uri in enumerate(uris, 1):
            log(f"[evaluate] sample set {index} of {len(uris)}: {uri}")
            results.append(score(uri))
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return _report_spread(results, log)


def _report_spread(results: list[dict[str, Any]], log: Log) -> dict[str, Any]:
    """Every metric of every set as ``mean ± std`` (and the digits metric's FD over real digits')."""
    from .spread import format_spread, summarise

    rows = []
    for result in results:
        row = dict(result["metrics"])
        real = result.get("digits", {}).get("calibration", {}).get("real", {}).get("digits_fd")
        if real and "digits_fd" in row:
            row["digits_fd_over_real"] = row["digits_fd"] / real
        rows.append(row)
    spread = summarise(rows)
    log(f"[evaluate] {len(results)} sample sets: mean ± std (sample standard deviation over the sets)")
    for key, entry in spread.items():
        values = ", ".join(f"{v:.4g}" for v in entry["values"])
        log(f"[evaluate]   {key:32s} {format_spread(entry, 4):>22s}   ({values})")
    return {"samples": [r["samples"] for r in results], "num_sets": len(results), "spread": spread, "sets": results}
