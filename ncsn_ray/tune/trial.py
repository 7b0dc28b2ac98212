"""One point of the quality-versus-cost curve: draw ``n`` samples with one sampler setting and
score them. No Ray here: the Tune trials and ``benchmarks/bench_samplers.py`` both call
:func:`draw_and_score`.

The samples are the ones ``jobs/generate.py --n n --set <setting>`` writes (seeds ``0 .. n-1``,
the checkpoint and settings resolved by :func:`ncsn_ray.sample.job.resolve_sampling`, the
config's batch size, the same :class:`~ncsn_ray.sample.sampler.Sampler`), so a score found here
is reproduced by generating with the same flags and evaluating the set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sample.job import SamplingOptions, SamplingSetup, resolve_sampling
from ..sample.sampler import Sampler

__all__ = ["METRICS", "TrialResult", "draw", "draw_and_score", "digits_score"]

METRICS = ("digits", "fid", "kid")


@dataclass
class TrialResult:
    """``score``: the metric's number, lower is better (digits: Fréchet distance over real
    digits' at the same n; fid; kid). ``extra``: the metric's other numbers."""

    score: float
    nfe: int
    seconds: float
    samples_per_s: float
    extra: dict[str, Any]


def draw(checkpoint: str, overrides: list[str], n: int, *, endpoint_url: str | None = None,
         device: str = "cpu") -> tuple[np.ndarray, SamplingSetup, Sampler, float]:
    """``(images (n, H, W, C) uint8, setup, sampler, seconds)`` for seeds ``0 .. n-1``."""
    setup = resolve_sampling(SamplingOptions(checkpoint=checkpoint, overrides=list(overrides),
                                             endpoint_url=endpoint_url))
    sampler = Sampler.from_checkpoint(setup.checkpoint, setup.settings, device)
    started = time.perf_counter()
    batch = setup.batch_size
    images = np.concatenate([sampler.sample(list(range(i, min(i + batch, n)))) for i in range(0, n, batch)])
    return images, setup, sampler, time.perf_counter() - started


def digits_score(images: np.ndarray) -> tuple[float, dict[str, Any]]:
    """The offline digits metric as ``jobs/evaluate.py --metrics digits`` computes it: the
    Fréchet distance over that of real digits at the same n, with confidence and class shares."""
    from ..evaluate import digits

    scored, rows = digits.score_with_calibration(images)
    real = rows["real"]["digits_fd"]
    extra = {"fd": scored["digits_fd"], "real_fd": real, "confidence": scored["digits_confidence"],
             "max_class_share": scored["digits_max_class_share"],
             "near_copy_share": scored["digits_near_copy_share"]}
    return scored["digits_fd"] / real, extra


def draw_and_score(checkpoint: str, overrides: list[str], n: int, metric: str, *, reference: str | None = None,
                   inception_weights: str | None = None, endpoint_url: str | None = None,
                   device: str = "cpu") -> TrialResult:
    """Draw ``n`` samples with ``overrides`` and score them with ``metric`` (``digits``, or
    ``fid`` / ``kid`` against the prepared dataset ``reference``, its Inception features cached
    beside it as ``jobs/evaluate.py`` caches them)."""
    images, setup, sampler, seconds = draw(checkpoint, overrides, n, endpoint_url=endpoint_url, device=device)
    if metric == "digits":
        score, extra = digits_score(images)
    else:
        score, extra = _fidelity_score(images, metric, reference, inception_weights, endpoint_url, device)
    return TrialResult(score=float(score), nfe=sampler.nfe_per_sample, seconds=seconds,
                       samples_per_s=n / seconds if seconds > 0 else float("inf"), extra=extra)


def _fidelity_score(images: np.ndarray, metric: str, reference: str | None, inception_weights: str | None,
                    endpoint_url: str | None, device: str) -> tuple[float, dict[str, Any]]:
    from ..data.format import read_manifest
    from ..evaluate.fidelity import inception_scores
    from ..io.storage import Storage

    storage = Storage.from_uri(reference, endpoint_url=endpoint_url)
    scores, _ = inception_scores(images, storage, read_manifest(storage), [metric], reference_limit=None,
                                 inception_weights=inception_weights, endpoint_url=endpoint_url, batch_size=64,
                                 use_cuda=device.startswith("cuda"), kid_subset_size=1000, log=lambda _m: None)
    key = "frechet_inception_distance" if metric == "fid" else "kernel_inception_distance_mean"
    return scores[key], {k: v for k, v in scores.items()}
