"""One point of the quality-versus-cost curve: draw ``n`` samples with one sampler setting and
score them. No Ray here: the Tune trials and ``benchmarks/bench_samplers.py`` both call
:func:`draw_and_score`.

The samples are the ones ``jobs/generate.py --n n --set <setting>`` writes (seeds ``0 .. n-1``,
the checkpoint and settings resolved by :func:`ncsn_ray.sample.job.resolve_sampling`, the
config's batch size, the same :class:`~ncsn_ray.sample.sampler.Sampler`), so a score found here
is reproduced by generating with the same flags and evaluating the set. With ``seed_sets=K``
the setting draws K disjoint sets (seeds ``0 .. K n - 1``, :func:`ncsn_ray.evaluate.spread.seed_sets`)
and every number is the mean over them, with its spread beside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..evaluate.spread import mean_of, seed_sets as make_seed_sets, summarise
from ..sample.job import SamplingOptions, SamplingSetup, resolve_sampling
from ..sample.sampler import Sampler

__all__ = ["METRICS", "TrialResult", "draw", "draw_and_score", "score_sampler", "sample_seeds", "digits_score"]

METRICS = ("digits", "fid", "kid")


@dataclass
class TrialResult:
    """``score``: the metric's number, lower is better (digits: Fréchet distance over real
    digits' at the same n; fid; kid), the mean over the seed sets. ``extra``: the metric's other
    numbers (means; ``recall`` and ``precision`` among them). ``spread``: every number of every
    set, :func:`ncsn_ray.evaluate.spread.summarise`'s ``{key: {mean, std, values}}``, with the
    score under ``"score"``."""

    score: float
    nfe: int
    seconds: float
    samples_per_s: float
    extra: dict[str, Any]
    spread: dict[str, dict[str, Any]]


def draw(checkpoint: str, overrides: list[str], n: int, *, endpoint_url: str | None = None,
         device: str = "cpu", first: int = 0) -> tuple[np.ndarray, SamplingSetup, Sampler, float]:
    """``(images (n, H, W, C) uint8, setup, sampler, seconds)`` for seeds ``first .. first + n - 1``."""
    setup = resolve_sampling(SamplingOptions(checkpoint=checkpoint, overrides=list(overrides),
                                             endpoint_url=endpoint_url))
    sampler = Sampler.from_checkpoint(setup.checkpoint, setup.settings, device)
    images, seconds = sample_seeds(sampler, range(first, first + n), setup.batch_size)
    return images, setup, sampler, seconds


def sample_seeds(sampler: Sampler, seeds: range, batch: int) -> tuple[np.ndarray, float]:
    """``(images (len(seeds), H, W, C) uint8, seconds)``: the seeds in batches of ``batch`` from
    the first, as the generation job's shards batch them."""
    started = time.perf_counter()
    images = np.concatenate([sampler.sample(list(seeds[i:i + batch])) for i in range(0, len(seeds), batch)])
    return images, time.perf_counter() - started


def digits_score(images: np.ndarray) -> tuple[float, dict[str, Any]]:
    """The offline digits metric as ``jobs/evaluate.py --metrics digits`` computes it: the
    Fréchet distance over that of real digits at the same n, with confidence and class shares."""
    from ..evaluate import digits

    scored, rows = digits.score_with_calibration(images)
    real = rows["real"]["digits_fd"]
    extra = {"fd": scored["digits_fd"], "real_fd": real, "precision": scored["digits_precision"],
             "recall": scored["digits_recall"], "confidence": scored["digits_confidence"],
             "max_class_share": scored["digits_max_class_share"],
             "near_copy_share": scored["digits_near_copy_share"],
             "real_near_copy_share": rows["real"]["digits_near_copy_share"]}
    return scored["digits_fd"] / real, extra


def draw_and_score(checkpoint: str, overrides: list[str], n: int, metric: str, *, reference: str | None = None,
                   inception_weights: str | None = None, endpoint_url: str | None = None,
                   device: str = "cpu", seed_sets: int = 1) -> TrialResult:
    """Draw ``seed_sets`` disjoint sets of ``n`` samples with ``overrides`` (seeds ``0 .. n-1``,
    then ``n .. 2n-1``, ...) from the checkpoint as ``jobs/generate.py`` resolves it, and score
    each (:func:`score_sampler`)."""
    setup = resolve_sampling(SamplingOptions(checkpoint=checkpoint, overrides=list(overrides),
                                             endpoint_url=endpoint_url))
    sampler = Sampler.from_checkpoint(setup.checkpoint, setup.settings, device)
    return score_sampler(sampler, setup.batch_size, n, metric, seed_sets=seed_sets, reference=reference,
                         inception_weights=inception_weights, endpoint_url=endpoint_url, device=device)


def score_sampler(sampler: Sampler, batch: int, n: int, metric: str, *, seed_sets: int = 1,
                  reference: str | None = None, inception_weights: str | None = None,
                  endpoint_url: str | None = None, device: str = "cpu") -> TrialResult:
    """Score ``seed_sets`` disjoint sets of ``n`` samples of ``sampler`` (batches of ``batch``)
    with ``metric``: ``digits``, or ``fid`` / ``kid`` against the prepared dataset ``reference``
    (its Inception features cached beside it as ``jobs/evaluate.py`` caches them, with Inception
    precision and recall beside them). The result holds the means and, in ``spread``, every
    set's numbers."""
    rows, seconds = [], 0.0
    for seeds in make_seed_sets(seed_sets, n):
        images, took = sample_seeds(sampler, seeds, batch)
        seconds += took
        if metric == "digits":
            score, extra = digits_score(images)
        else:
            score, extra = _fidelity_score(images, metric, reference, inception_weights, endpoint_url, device)
        rows.append({"score": float(score), **{k: float(v) for k, v in extra.items() if isinstance(v, (int, float))}})
    spread = summarise(rows)
    means = mean_of(spread)
    return TrialResult(score=means.pop("score"), nfe=sampler.nfe_per_sample, seconds=seconds,
                       samples_per_s=n * seed_sets / seconds if seconds > 0 else float("inf"), extra=means,
                       spread=spread)


def _fidelity_score(images: np.ndarray, metric: str, reference: str | None, inception_weights: str | None,
                    endpoint_url: str | None, device: str) -> tuple[float, dict[str, Any]]:
    from ..data.format import read_manifest
    from ..evaluate.fidelity import inception_scores
    from ..io.storage import Storage

    storage = Storage.from_uri(reference, endpoint_url=endpoint_url)
    scores, _ = inception_scores(images, storage, read_manifest(storage), [metric, "prc"], reference_limit=None,
                                 inception_weights=inception_weights, endpoint_url=endpoint_url, batch_size=64,
                                 use_cuda=device.startswith("cuda"), kid_subset_size=1000, log=lambda _m: None)
    key = "frechet_inception_distance" if metric == "fid" else "kernel_inception_distance_mean"
    return scores[key], dict(scores)
