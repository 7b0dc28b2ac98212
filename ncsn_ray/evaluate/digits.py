"""An offline quality metric for 8x8 digits (the default data set), FID's analogue.

FID needs Inception weights that cannot be downloaded everywhere, and Inception knows
nothing of 8x8 digits anyway. This metric uses a small classifier trained, at evaluation
time, on the *train split* of scikit-learn's digits (half of the 1797 images, stratified,
``random_state=0``), and measures a sample set against the *test split*:

* ``digits_fd``: the Fréchet distance between the Gaussians fitted to the classifier's
  hidden features (128 ReLU units) of the samples and of the test split, as FID does with
  Inception's pool features;
* ``digits_precision``, ``digits_recall``: in the same feature space against the test split
  (k = 3 nearest neighbours): how many samples look like real digits, and how much of the
  real digits' variety the samples cover (FD mixes the two);
* ``digits_confidence``: the classifier's mean top-class probability on the samples
  (real digits are classified confidently; blobs between classes are not);
* ``digits_class_shares``: the share of samples predicted as each class 0..9, and
  ``digits_max_class_share`` (the real digits: 10% each);
* ``digits_is``: ``exp(E KL(p(y|x) || p(y)))``, the Inception-Score analogue (at most 10);
* ``digits_near_copy_share``: the share of samples closer (Euclidean, pixels in [0, 1]) to
  their nearest training image than 99% of real digits are to their nearest *other*
  digit (``digits_near_copy_threshold``); a model that memorises its training set scores
  high here. Training images are all 1797 digits (what the default run trains on).

:func:`calibration` scores reference sets the same way, printed beside a score so it can be
read: the train split (real digits, not the test images), a Gaussian fitted to the train
split's pixels, and uniform noise.

Images are ``(N, 8, 8)`` or ``(N, 8, 8, 1)`` uint8, 0..255, as the sample sets store them
(the prepared digits use ``round(v * 255 / 16)`` of scikit-learn's 0..16 values).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["DigitsJudge", "judge", "score", "classify", "calibration", "digits_uint8", "IMAGE_SHAPE", "QUALITY_TARGETS",
           "target_verdicts"]

IMAGE_SHAPE = (8, 8, 1)  # (H, W, C) the metric applies to
HIDDEN = 128
NEAR_COPY_PERCENTILE = 1.0

# The digits default's quality targets (issue 34), each judged on the mean over disjoint seed
# sets of 512 samples, in the names of ``ncsn_ray.tune.trial.digits_score``: fidelity (FD over
# real digits' at the same n, precision, confidence) and coverage (recall, the largest class)
# together, and no more near copies of training digits than real digits have by the same rule.
QUALITY_TARGETS = {
    "fd_ratio": ("<=", 1.5),
    "precision": (">=", 0.87),
    "recall": (">=", 0.87),
    "confidence": (">=", 0.92),
    "max_class_share": ("<=", 0.13),
    "near_copy_share": ("<=", "real_near_copy_share"),
}


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as ``(N, 8, 8)`` uint8 (the prepare job's transform) and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return np.floor(data.images * 255 / 16 + 0.5).astype(np.uint8), data.target.astype(np.int64)


def _flat(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    if images.shape[1:] != (8, 8):
        raise ValueError(f"the digits metric needs 8x8 grey images, got shape {images.shape}")
    return images.reshape(len(images), 64).astype(np.float64) / 255.0


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` and ``b``."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # dead ReLU units make the covariances singular; that is expected
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
        if not np.isfinite(covmean).all():  # as FID implementations do for near-singular products
            offset = np.eye(len(cov_a)) * 1e-6
            covmean, _ = linalg.sqrtm((cov_a + offset) @ (cov_b + offset), disp=False)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


@dataclass
class DigitsJudge:
    """The classifier, the split and what every score is measured against."""

    classifier: Any
    train_images: np.ndarray  # (N, 64) in [0, 1], the classifier's training split
    test_images: np.ndarray  # (M, 64), the reference of the Fréchet distance
    all_images: np.ndarray  # (1797, 64): the generative model's training set (near copies)
    test_features: np.ndarray
    near_copy_threshold: float
    train_rows: np.ndarray  # row of each train-split image in all_images

    def features(self, flat: np.ndarray) -> np.ndarray:
        """The hidden ReLU activations, ``(N, 128)``."""
        weights, biases = self.classifier.coefs_[0], self.classifier.intercepts_[0]
        return np.maximum(flat @ weights + biases, 0.0)

    def probabilities(self, flat: np.ndarray) -> np.ndarray:
        return self.classifier.predict_proba(flat)


@lru_cache(maxsize=1)
def judge() -> DigitsJudge:
    """Train the classifier on the train split (a second or two; cached per process)."""
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    images, labels = digits_uint8()
    flat = _flat(images)
    train_x, test_x, train_y, _ = train_test_split(flat, labels, test_size=0.5, random_state=0, stratify=labels)
    classifier = MLPClassifier(hidden_layer_sizes=(HIDDEN,), alpha=1e-3, max_iter=1000, random_state=0)
    classifier.fit(train_x, train_y)
    nearest_other = _nearest_distances(flat, flat, exclude_self=True)
    threshold = float(np.percentile(nearest_other, NEAR_COPY_PERCENTILE))
    train_rows = np.array([int(np.flatnonzero((flat == row).all(1))[0]) for row in train_x])
    result = DigitsJudge(classifier, train_x, test_x, flat, np.zeros(0), threshold, train_rows)
    result.test_features = result.features(test_x)
    return result


def _nearest_distances(queries: np.ndarray, points: np.ndarray, *, exclude_self: bool = False,
                       query_rows: np.ndarray | None = None, chunk: int = 2048) -> np.ndarray:
    """Euclidean distance from each query row to its nearest row of ``points``; with
    ``exclude_self`` the query is row ``query_rows[k]`` (default ``k``) of ``points`` and
    that row does not count. ``chunk`` queries at a time, so memory stays ``chunk x len(points)``
    whatever the number of queries (50,000 samples: 29 MB a chunk instead of 720 MB at once)."""
    rows = np.arange(len(queries)) if query_rows is None else query_rows
    point_norms = (points**2).sum(1)[None, :]
    out = np.empty(len(queries))
    for start in range(0, len(queries), chunk):
        part = queries[start:start + chunk]
        sq = (part**2).sum(1)[:, None] + point_norms - 2 * part @ points.T
        if exclude_self:
            sq[np.arange(len(part)), rows[start:start + chunk]] = np.inf
        out[start:start + chunk] = np.sqrt(np.maximum(sq.min(1), 0.0))
    return out


def _score_flat(flat: np.ndarray, j: DigitsJudge, training_rows: np.ndarray | None = None) -> dict[str, Any]:
    """``training_rows``: for real digits, their rows in the training set (not counted as
    their own nearest neighbour)."""
    probs = j.probabilities(flat)
    marginal = probs.mean(0)
    kl = (probs * (np.log(np.clip(probs, 1e-12, 1)) - np.log(np.clip(marginal, 1e-12, 1)))).sum(1)
    shares = np.bincount(probs.argmax(1), minlength=10) / len(flat)
    nearest = _nearest_distances(flat, j.all_images, exclude_self=training_rows is not None, query_rows=training_rows)
    features = j.features(flat)
    return {
        "digits_fd": frechet_distance(features, j.test_features),
        **precision_recall(features, j.test_features),
        "digits_confidence": float(probs.max(1).mean()),
        "digits_class_shares": [round(float(v), 4) for v in shares],
        "digits_max_class_share": float(shares.max()),
        "digits_is": float(np.exp(kl.mean())),
        "digits_near_copy_share": float((nearest < j.near_copy_threshold).mean()),
        "digits_median_nearest_training_distance": float(np.median(nearest)),
    }


def precision_recall(features: np.ndarray, real_features: np.ndarray) -> dict[str, float]:
    """``digits_precision`` and ``digits_recall`` (Kynkäänniemi et al. 2019, k = 3): the share
    of samples inside the real features' k-NN balls, and of real ones inside the samples',
    with torch-fidelity's implementation, in the classifier's feature space."""
    import torch
    from torch_fidelity.metric_prc import prc_features_to_metric

    from .scores import PRC_BATCH  # distance blocks of PRC_BATCH x N: 205 MB at 50,000 samples, not 2 GB

    out = prc_features_to_metric(torch.from_numpy(features).float(), torch.from_numpy(real_features).float(),
                                 prc_neighborhood=3, prc_batch_size=PRC_BATCH, save_cpu_ram=True, verbose=False)
    return {"digits_precision": float(out["precision"]), "digits_recall": float(out["recall"])}


def score(images: np.ndarray) -> dict[str, Any]:
    """The metric for ``(N, 8, 8[, 1])`` uint8 samples (N >= 2)."""
    flat = _flat(images)
    if len(flat) < 2:
        raise ValueError("the digits metric needs at least 2 images")
    j = judge()
    return {**_score_flat(flat, j), "digits_near_copy_threshold": j.near_copy_threshold}


def classify(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The metric's classifier on ``(N, 8, 8[, 1])`` uint8 images: the predicted class
    ``(N,)`` int and its probability ``(N,)``."""
    probs = judge().probabilities(_flat(images))
    return probs.argmax(1), probs.max(1)


def calibration(n: int | None = None, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The metric on reference sets of ``n`` images (default and at most: the train split's
    899), to read a score of ``n`` samples against (the Fréchet distance grows as ``n``
    shrinks, so compare at equal ``n``): ``real`` (train-split digits; near copies count
    other digits only), ``gaussian`` (a Gaussian fitted to the train split's pixels, rounded
    and clipped to 0..255) and ``uniform`` (uniform noise)."""
    j = judge()
    rng = np.random.default_rng(seed)
    pick = np.arange(len(j.train_images)) if n is None else rng.permutation(len(j.train_images))[:n]
    real = j.train_images[pick]
    count = len(real)
    mean, cov = j.train_images.mean(0), np.cov(j.train_images, rowvar=False)
    gaussian = np.clip(np.round(rng.multivariate_normal(mean, cov, size=count) * 255), 0, 255) / 255.0
    uniform = np.round(rng.uniform(0, 1, size=(count, 64)) * 255) / 255.0
    return {
        "real": {**_score_flat(real, j, training_rows=j.train_rows[pick]), "n": count},
        "gaussian": {**_score_flat(gaussian, j), "n": count},
        "uniform": {**_score_flat(uniform, j), "n": count},
    }


def score_with_calibration(images: np.ndarray) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The metric for ``images`` and the calibration rows at the same n (at most 899, the train
    split): what ``jobs/evaluate.py --metrics digits`` reports and the sampler search ranks by."""
    return score(images), calibration(min(len(images), 899))


def target_verdicts(means: dict[str, float]) -> dict[str, bool]:
    """``{target: met}`` for :data:`QUALITY_TARGETS` on a set's (or the seed sets' mean) numbers:
    ``fd_ratio``, ``precision``, ``recall``, ``confidence``, ``max_class_share``,
    ``near_copy_share`` and ``real_near_copy_share`` (the bound of the near-copy target)."""
    verdicts = {}
    for key, (sense, bound) in QUALITY_TARGETS.items():
        limit = means[bound] if isinstance(bound, str) else bound
        verdicts[key] = means[key] <= limit if sense == "<=" else means[key] >= limit
    return verdicts
