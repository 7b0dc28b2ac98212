"""Published reference statistics for FID (``evaluate --reference-stats FILE_OR_URI``).

Accepted: NumPy ``.npz`` files, read with ``allow_pickle=False`` (nothing in the file runs),
in either of the layouts published FIDs were computed against:

* ``mu`` ``(2048,)`` and ``sigma`` ``(2048, 2048)``: pytorch-fid's and TTUR's statistics
  files (e.g. ``fid_stats_cifar10_train.npz``);
* ``pool_3`` ``(N, 2048)``: Inception pool3 activations, from which the mean and covariance
  are computed here as torch-fidelity computes them (score_sde's ``cifar10_stats.npz``).

Not accepted: EDM's ``fid-refs/*.pkl`` (a pickle: loading one can run code); convert it once
with ``np.savez(out, mu=ref["mu"], sigma=ref["sigma"])`` where you trust it. The statistics
must come from the same Inception network (the TF-FID one, which torch-fidelity's
``inception-v3-compat`` reproduces) for the number to compare with published ones.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from ..errors import UserError
from ..io.storage import Storage, StorageError

__all__ = ["ReferenceStatsError", "load_reference_stats", "INCEPTION_DIM"]

INCEPTION_DIM = 2048


class ReferenceStatsError(UserError):
    """A reference statistics file that cannot be used; the message says why."""


def load_reference_stats(uri: str, *, endpoint_url: str | None = None, dim: int = INCEPTION_DIM) -> dict[str, np.ndarray]:
    """``{"mu": (dim,) float64, "sigma": (dim, dim) float64, "n": int or -1}`` from ``uri``."""
    try:
        data = Storage.from_uri(uri, endpoint_url=endpoint_url).read_bytes("")
    except StorageError as err:
        raise ReferenceStatsError(f"reference statistics {uri}: cannot read ({err})") from err
    if not zipfile.is_zipfile(io.BytesIO(data)):
        kind = "a pickle (EDM's .pkl?)" if data[:1] == b"\x80" else "not an .npz file"
        raise ReferenceStatsError(f"reference statistics {uri}: {kind}; give a NumPy .npz with mu and sigma "
                                  "(pytorch-fid, TTUR) or pool_3 activations (score_sde)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ReferenceStatsError(f"reference statistics {uri}: unreadable .npz ({err})") from err
    if "mu" in arrays and "sigma" in arrays:
        mu, sigma, n = np.asarray(arrays["mu"], np.float64), np.asarray(arrays["sigma"], np.float64), -1
        if mu.shape != (dim,) or sigma.shape != (dim, dim):
            raise ReferenceStatsError(f"reference statistics {uri}: mu is {mu.shape} and sigma {sigma.shape}; "
                                      f"Inception pool3 statistics are ({dim},) and ({dim}, {dim})")
    elif "pool_3" in arrays:
        pool = np.asarray(arrays["pool_3"], np.float64)
        if pool.ndim != 2 or pool.shape[1] != dim or pool.shape[0] < 2:
            raise ReferenceStatsError(f"reference statistics {uri}: pool_3 is {pool.shape}; expected (N, {dim}) "
                                      "Inception pool3 activations with N >= 2")
        mu, sigma, n = pool.mean(axis=0), np.cov(pool, rowvar=False), pool.shape[0]
    else:
        raise ReferenceStatsError(f"reference statistics {uri}: holds {sorted(arrays) or 'nothing'}; expected mu and "
                                  "sigma (pytorch-fid, TTUR) or pool_3 (score_sde)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ReferenceStatsError(f"reference statistics {uri}: holds non-finite values")
    return {"mu": mu, "sigma": sigma, "n": n}
