"""Scores from features, with torch-fidelity's own functions and settings.

Both evaluation paths use these settings: torch-fidelity's single-process
``calculate_metrics`` (``evaluate --no-ray``) receives them as keyword arguments, and the
distributed path calls the same per-metric functions (``fid_statistics_to_metric``,
``isc_features_to_metric``, ``kid_features_to_metric``, ``prc_features_to_metric``) on the
features its actors extracted. Same features in, same scores out.

Keys of the result: ``frechet_inception_distance``; ``inception_score_mean``/``_std``;
``kernel_inception_distance_mean``/``_std``; ``precision``, ``recall``, ``f_score``
(Kynkäänniemi et al. 2019, k = 3, in Inception pool3 features; generated = input 1); and
``fd_dinov2`` (the Fréchet distance in DINOv2 ViT-B/14 features).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["INCEPTION", "DINOV2", "layer_for", "metric_kwargs", "fid_statistics", "scores_from_features"]

INCEPTION = "inception-v3-compat"
DINOV2 = "dinov2-vit-b-14"
RNG_SEED = 2020  # torch-fidelity's default: the IS split shuffle and the KID subsets


def layer_for(metric: str, extractor: str) -> str:
    """torch-fidelity's layer of ``extractor`` for ``metric`` (``fid``, ``isc``, ``kid``, ``prc``)."""
    from torch_fidelity.utils import resolve_feature_layer_for_metric

    return resolve_feature_layer_for_metric(metric, feature_extractor=extractor)


PRC_BATCH = 1024  # rows of precision/recall's distance blocks (PRC_BATCH x N float32; the scores do not change)


def metric_kwargs(n_samples: int, n_reference: int | None, kid_subset_size: int) -> dict[str, Any]:
    """torch-fidelity's settings for a set of ``n_samples`` against ``n_reference`` images:
    KID subsets of ``min(kid_subset_size, N, reference)`` images; IS in 10 splits as
    published, fewer (at least 50 images each) for sets under 500 images; precision and recall
    in distance blocks of :data:`PRC_BATCH` rows (torch-fidelity's default of 10,000 makes a
    2 GB block at 50,000 samples)."""
    return {
        "kid_subset_size": min(kid_subset_size, n_samples, n_reference or n_samples),
        "isc_splits": max(1, min(10, n_samples // 50)),
        "prc_batch_size": PRC_BATCH,
        "save_cpu_ram": True,
        "verbose": False,
        "rng_seed": RNG_SEED,
    }


def fid_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """``{"mu": (D,), "sigma": (D, D)}`` of ``(N, D)`` features, as torch-fidelity computes them."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(features)


def _frechet(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    if stats_1["mu"].dtype != stats_2["mu"].dtype or stats_1["sigma"].dtype != stats_2["sigma"].dtype:
        stats_1 = {k: np.asarray(stats_1[k], np.float64) for k in ("mu", "sigma")}
        stats_2 = {k: np.asarray(stats_2[k], np.float64) for k in ("mu", "sigma")}
    return float(next(iter(fid_statistics_to_metric(stats_1, stats_2, False).values())))


def scores_from_features(
    wanted: list[str],
    samples: dict[tuple[str, str], torch.Tensor],
    reference: dict[tuple[str, str], torch.Tensor] | None,
    kwargs: dict[str, Any],
    reference_stats: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """The ``wanted`` metrics (``fid``, ``isc``, ``kid``, ``prc``, ``fd-dinov2``) from features
    keyed ``(extractor, layer)``. ``reference_stats`` (``mu``, ``sigma``) replaces the
    reference's features for ``fid``."""
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    scores: dict[str, float] = {}
    if "fid" in wanted:
        key = (INCEPTION, layer_for("fid", INCEPTION))
        theirs = reference_stats if reference_stats is not None else fid_statistics(reference[key])
        scores["frechet_inception_distance"] = _frechet(fid_statistics(samples[key]), theirs)
    if "isc" in wanted:
        logits = samples[(INCEPTION, layer_for("isc", INCEPTION))]
        scores.update(isc_features_to_metric(logits, splits=kwargs["isc_splits"], shuffle=True,
                                             rng_seed=kwargs["rng_seed"]))
    if "kid" in wanted:
        key = (INCEPTION, layer_for("kid", INCEPTION))
        scores.update(kid_features_to_metric(samples[key], reference[key], **kwargs))
    if "prc" in wanted:
        key = (INCEPTION, layer_for("prc", INCEPTION))
        scores.update(prc_features_to_metric(samples[key], reference[key], **kwargs))
    if "fd-dinov2" in wanted:
        key = (DINOV2, layer_for("fid", DINOV2))
        scores["fd_dinov2"] = _frechet(fid_statistics(samples[key]), fid_statistics(reference[key]))
    return {k: float(v) for k, v in scores.items()}
