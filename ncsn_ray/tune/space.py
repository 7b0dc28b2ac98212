"""The sampler settings worth trying for one checkpoint, bounded by a budget of network
evaluations per sample (NFE).

A setting is a list of ``sampling.key=value`` overrides, exactly what ``jobs/generate.py
--set`` takes, so that any point found can be reproduced by passing it on. What is tried
depends on the network (:func:`candidate_settings`):

* annealed Langevin (the paper's Algorithm 1) at several T, ``eps`` from NCSNv2's technique 4
  for each T (``sampling.eps=auto``), plus the checkpoint's own setting;
* Euler and Heun steps of the probability-flow ODE along the trained ladder and a subset of
  it (every network), and along EDM's rho-schedule (NCSNv2: a score at any sigma);
* the predictor-corrector along the ladder (score_sde's reverse-diffusion predictor, or an Euler or Heun
  step of the probability-flow ODE), C corrector steps at several signal-to-noise ratios;
* EDM's stochastic sampler (churn) on the rho-schedule (networks with a score at any sigma: NCSNv2, mlp).

A consistency model (``jobs/distill.py``) has one sampler, multistep consistency sampling:
its settings are the number of steps K (= NFE) and the rho of the schedule its K sigmas come
from (:func:`consistency_settings`).
"""

from __future__ import annotations

from ncsn_core.model import ANY_SIGMA_KINDS

__all__ = ["candidate_settings", "consistency_settings", "setting_nfe", "setting_label", "method_of"]

ALD = "sampling.method=annealed_langevin"


def _size(value: str, quick: tuple, full: tuple) -> tuple:
    return quick if value == "quick" else full


def candidate_settings(kind: str, levels: int, *, size: str = "quick",
                       config_method: str = "annealed_langevin") -> list[list[str]]:
    """Settings for a ``kind`` (``ncsn`` | ``ncsnv2`` | ``mlp``) network with ``levels`` trained levels;
    the first is the checkpoint's own setting (an empty override list), followed, when that is
    a fast sampler (``config_method``), by the config's annealed-Langevin setting, the
    reference. ``size``: ``quick`` (about 30 settings) or ``full`` (about 60)."""
    rows: list[list[str]] = [[]]
    if config_method != "annealed_langevin":
        rows.append([ALD])
    for t in _size(size, (1, 2, 3, 5), (1, 2, 3, 5, 10, 20)):
        rows.append([ALD, f"sampling.steps_per_level={t}", "sampling.eps=auto"])
    schedules = [("ladder", n) for n in sorted({max(2, (levels + 1) // 2), levels})]
    if kind in ANY_SIGMA_KINDS:
        schedules += [("edm", n) for n in _size(size, (6, 11, 18), (6, 11, 18, 26, 51))]
    for method in ("euler", "heun"):
        for schedule, n in schedules:
            rows.append([f"sampling.method={method}", f"sampling.schedule={schedule}", f"sampling.steps={n}",
                         "sampling.final_denoise=true"])
    for predictor in ("reverse_diffusion", "euler", "heun"):
        for corrector_steps in _size(size, (1, 2), (1, 2, 3)):
            for snr in _size(size, (0.16, 0.3, 0.45), (0.1, 0.16, 0.3, 0.45, 0.6)):
                rows.append(["sampling.method=pc", f"sampling.predictor={predictor}", "sampling.schedule=ladder",
                             f"sampling.steps={levels}", f"sampling.corrector_steps={corrector_steps}",
                             f"sampling.snr={snr}", "sampling.final_denoise=true"])
    if kind in ANY_SIGMA_KINDS:
        for n in _size(size, (11, 18), (11, 18, 26)):
            for churn in _size(size, (3, 10), (1, 3, 5, 10, 40)):
                rows.append(["sampling.method=edm", "sampling.schedule=edm", f"sampling.steps={n}",
                             f"sampling.churn={churn}", "sampling.final_denoise=true"])
    return rows


def consistency_settings(*, size: str = "quick") -> list[list[str]]:
    """Settings for a consistency model: the checkpoint's own first, then K steps (K = NFE) on
    EDM's rho-schedule at a few rho (larger rho puts the re-noising sigmas lower). ``quick``:
    K 1-4 at rho 7 and K 2-3 at rho 3 and 12 (9 settings); ``full``: K 1-8 at rho 3, 7 and 12."""
    rows: list[list[str]] = [[]]
    grid = ([(k, 7.0) for k in (1, 2, 3, 4)] + [(k, rho) for rho in (3.0, 12.0) for k in (2, 3)]
            if size == "quick" else [(k, rho) for rho in (3.0, 7.0, 12.0) for k in range(1, 9)])
    for k, rho in grid:
        rows.append(["sampling.method=consistency", "sampling.schedule=edm", f"sampling.steps={k}",
                     f"sampling.rho={rho:g}"])
    return rows


def _parts(overrides: list[str]) -> dict[str, str]:
    return dict(o.removeprefix("sampling.").split("=", 1) for o in overrides)


def method_of(overrides: list[str], default: str = "annealed_langevin") -> str:
    """The sampler a setting selects (``default``, the checkpoint's own, when it names none)."""
    return _parts(overrides).get("method", default)


def setting_nfe(overrides: list[str], *, levels: int, config) -> int:
    """NFE per sample of a setting on a ladder of ``levels`` levels, computed as the generation
    job computes it (the checkpoint's ``config`` with the overrides applied), loading nothing."""
    from ..sample.sampler import SamplerSettings, override_sampling

    return SamplerSettings.from_config(override_sampling(config, overrides)).nfe_per_sample(levels)


def setting_label(overrides: list[str]) -> str:
    """A short name: ``heun schedule=ladder steps=11`` (``config`` for the checkpoint's own)."""
    parts = _parts(overrides)
    parts.pop("final_denoise", None)
    method = parts.pop("method", None)
    words = ([method] if method else []) + [f"{k}={v}" for k, v in parts.items()]
    return " ".join(words) or "config"
