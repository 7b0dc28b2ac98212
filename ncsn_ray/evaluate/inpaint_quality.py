"""How good an inpainting set is, on 8x8 grey digits (offline): three numbers per set.

An inpainting set (``generate.py --mode inpaint``; :data:`~ncsn_ray.sample.sample_set.INPAINT_SCHEMA`)
holds, per source image, its known-pixel mask, K completions and the original. With the
offline digits metric's classifier (:func:`ncsn_ray.evaluate.digits.classify`, trained on
scikit-learn's digits):

* ``inpaint_label_agreement``: the share of the N x K completions that the classifier puts in
  the class it gives their original (the classifier's class, not the dataset's label: the
  rows hold none). 1 means every completion kept its digit; a model that ignores the known
  pixels lands near 0.1.
* ``inpaint_diversity``: how different a completion is from its siblings where the model
  chose. For image i with unknown pixels U_i (mask 0) and completions c_i1..c_iK, pixels in
  [0, 1] (the stored uint8 / 255): ``d_i = mean over pairs k < l of ||c_ik[U_i] - c_il[U_i]||_2``,
  the Euclidean distance over the unknown pixels only (not divided by their number); the
  score is the mean of d_i over images. Units: pixel values in [0, 1]; for scale, two
  different real digits are about 1 to 5 apart over all 64 pixels. 0 means the K completions
  are identical (a deterministic sampler, or a collapsed one); None when K = 1.
* ``inpaint_known_change``: the largest absolute difference between a completion and its
  original on known pixels, in grey levels of 255. Inpainting holds the known pixels, so
  this must be 0.

Also recorded: ``inpaint_unknown_share``, the share of pixels the masks leave unknown.

The classifier runs (and, the first time in a process, trains: :func:`digits.judge`) with one
BLAS thread: on a busy 2-core machine its small matrix products took 30 s to train with two
threads and 2.8 s with one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from . import digits as digits_quality
from ..errors import DamagedInput
from ..io.figures import decode_pngs
from ..io.storage import Storage, StorageError
from ..sample.sample_set import INPAINT_SCHEMA, DamagedSampleSet, SampleSetError

__all__ = ["InpaintingSet", "METRIC_KEYS", "applies", "read_inpainting_set", "inpainting_scores", "score_set",
           "metrics_of", "summary_line"]

METRIC_KEYS = ("inpaint_label_agreement", "inpaint_diversity", "inpaint_known_change")


@dataclass
class InpaintingSet:
    """The decoded rows of an inpainting set, in shard order.

    ``originals`` ``(N, H, W, C)`` uint8, ``known`` ``(N, H, W)`` bool (True = known pixel),
    ``completions`` ``(N, K, H, W, C)`` uint8.
    """

    originals: np.ndarray
    known: np.ndarray
    completions: np.ndarray


def applies(image_shape: tuple[int, int, int]) -> bool:
    """Whether the scores apply to images of ``(C, H, W)``: the digits classifier's 8x8 grey."""
    c, h, w = image_shape
    return (h, w, c) == digits_quality.IMAGE_SHAPE


def read_inpainting_set(storage: Storage, manifest: dict[str, Any]) -> InpaintingSet:
    """Every row of a complete inpainting set (its ``manifest``), decoded."""
    channels, size = int(manifest["channels"]), (int(manifest["height"]), int(manifest["width"]))
    originals, known, completions = [], [], []
    for shard in manifest["shards"]:
        try:
            table = storage.read_table(shard["path"], schema=INPAINT_SCHEMA)
        except StorageError as err:
            raise SampleSetError(f"{storage.uri_of(shard['path'])}: unreadable shard ({err})") from err
        rows = table.column("inpaintings").to_pylist()
        k = len(rows[0]) if rows else 0
        if k < 1 or any(len(r) != k for r in rows):
            raise DamagedSampleSet(f"{storage.uri_of(shard['path'])}: rows hold no or different numbers of inpaintings")
        try:
            originals.append(decode_pngs(table.column("original").to_pylist(), channels, size))
            known.append(decode_pngs(table.column("mask").to_pylist(), 1, size)[..., 0] > 0)
            flat = decode_pngs([png for r in rows for png in r], channels, size)
        except DamagedInput as err:
            raise DamagedSampleSet(f"{storage.uri_of(shard['path'])}: {err}") from None
        completions.append(flat.reshape(len(rows), k, *flat.shape[1:]))
    return InpaintingSet(np.concatenate(originals), np.concatenate(known), np.concatenate(completions))


def inpainting_scores(data: InpaintingSet) -> dict[str, Any]:
    """The three scores (module docstring) and ``inpaint_unknown_share`` for 8x8 grey digits."""
    originals, known, completions = data.originals, data.known, data.completions
    n, k = completions.shape[:2]
    if n < 1 or k < 1:
        raise ValueError("an inpainting set with no completions")
    if completions.shape[2:] != originals.shape[1:]:
        raise ValueError(f"completions {completions.shape[2:]} and originals {originals.shape[1:]} differ in shape")
    with threadpool_limits(limits=1):  # see the module docstring
        classes, _ = digits_quality.classify(originals)
        completed, _ = digits_quality.classify(completions.reshape(n * k, *completions.shape[2:]))
    agreement = float((completed.reshape(n, k) == classes[:, None]).mean())

    pixels = completions.astype(np.float64) / 255  # (N, K, H, W, C)
    known_c = np.broadcast_to(known[..., None], originals.shape)  # (N, H, W, C)
    change = np.abs(completions.astype(np.int16) - originals[:, None].astype(np.int16))
    known_change = int(change[np.broadcast_to(known_c[:, None], change.shape)].max(initial=0))

    diversity = None
    if k > 1:
        unknown = (~known_c).reshape(n, 1, -1)
        spread = (pixels.reshape(n, k, -1) * unknown)  # known pixels zeroed: they do not count
        pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
        distances = np.stack([np.linalg.norm(spread[:, a] - spread[:, b], axis=1) for a, b in pairs], axis=1)
        diversity = float(distances.mean(axis=1).mean())
    return {
        "inpaint_label_agreement": agreement,
        "inpaint_diversity": diversity,
        "inpaint_known_change": known_change,
        "inpaint_unknown_share": float((~known).mean()),
    }


def score_set(storage: Storage, manifest: dict[str, Any]) -> dict[str, Any]:
    """:func:`inpainting_scores` of a complete inpainting set, with ``n_images`` and
    ``samples_per_image``."""
    data = read_inpainting_set(storage, manifest)
    return {**inpainting_scores(data), "n_images": int(data.completions.shape[0]),
            "samples_per_image": int(data.completions.shape[1])}


def metrics_of(scores: dict[str, Any]) -> dict[str, float]:
    """The numbers ``_scores.json`` records under ``metrics``: the three scores and the unknown
    share (diversity left out when K = 1, where it is undefined)."""
    keys = (*METRIC_KEYS, "inpaint_unknown_share")
    return {key: scores[key] for key in keys if scores.get(key) is not None}


def summary_line(scores: dict[str, Any]) -> str:
    """One line for logs."""
    diversity = scores.get("inpaint_diversity")
    shown = "n/a (K = 1)" if diversity is None else f"{diversity:.3f}"
    return (f"label agreement {scores['inpaint_label_agreement']:.3f} (digits classifier: completion's class = "
            f"original's), diversity {shown} (mean pairwise L2 of the K completions over the unknown pixels, "
            f"pixels in [0, 1]), known-pixel change {scores['inpaint_known_change']} (grey levels; must be 0)")
