"""The sampler every job uses: a network plus sampler settings; seeds in, uint8 images out.

No Ray here: the generation actors, the inpainting actors and the training preview grid all
sample through :class:`Sampler`, so they make the same images from the same seeds.

Determinism: the image for seed ``s`` uses :class:`ncsn_core.PerSampleNoise` (one generator
seeded with ``s``) for its initial sample and for every Langevin step. It depends on the
seed, the weights, the settings and the batch it is computed in (floating-point results of
a batched network can differ in the last bit with the batch), never on other workers.

Step convention: the paper's Algorithm 1 (see :mod:`ncsn_core.sampling`),
``x <- x + alpha_i/2 s(x, i) + sqrt(alpha_i) z`` with ``alpha_i = eps sigma_i^2 / sigma_L^2``.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from ncsn_core import (
    ConfigError,
    PerSampleNoise,
    annealed_langevin,
    annealed_langevin_inpaint,
    apply_overrides,
    initial_samples,
    make_mask,
    make_score_fn,
)
from ncsn_core.checkpoint import Checkpoint
from ncsn_core.consistency import consistency_sampling
from ncsn_core.config import Config
from ncsn_core.fast_sampling import FAST_SAMPLERS, nfe_per_sample
from ncsn_core.inpainting import MASK_KINDS, KnownPixels
from ncsn_core.model import unwrap_model
from ncsn_core.schedules import edm_schedule, make_schedule
from ncsn_core.sampling import clamp_
from ncsn_core.sigma_score import sigma_score_fn

from ..errors import JobFailed, UserError
from ..io.figures import image_grid, to_uint8
from ..io.storage import Storage, StorageError

__all__ = [
    "SamplerSettings",
    "Sampler",
    "LevelCallback",
    "override_sampling",
    "inpaint_seed",
    "image_mask",
    "load_mask_file",
    "MASK_KINDS",
    "preview_grid",
    "NonFiniteSamplesError",
]

# (levels done, levels in all) after each level of annealing: progress reporting.
LevelCallback = Callable[[int, int], None]


class NonFiniteSamplesError(JobFailed):
    """Sampling produced NaN or infinite pixels (the step size is too large for the network,
    or the weights are broken); the message names the seeds. Nothing is written for them."""


def check_finite(x: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """``x`` ``(B, ...)`` if every value is finite, else :class:`NonFiniteSamplesError`."""
    bad = ~torch.isfinite(x.reshape(len(seeds), -1)).all(dim=1)
    if bool(bad.any()):
        names = [seeds[i] for i in torch.nonzero(bad).flatten().tolist()]
        shown = ", ".join(str(s) for s in names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        raise NonFiniteSamplesError(f"non-finite samples for seed(s) {shown}: lower sampling.eps or check the "
                                    "checkpoint; nothing was written for them")
    return x


FAST_FIELDS = ("method", "steps", "schedule", "rho", "churn", "churn_min", "churn_max", "churn_noise",
               "predictor", "corrector_steps", "snr")


@dataclass(frozen=True)
class SamplerSettings:
    """Everything about the sampler that decides the pixels (all recorded in a job spec).

    ``method``: ``annealed_langevin`` (the paper's Algorithm 1), a fast sampler of
    :mod:`ncsn_core.fast_sampling` (``euler``, ``heun``, ``edm``, ``pc``), or, for a consistency
    model, ``consistency`` (:func:`ncsn_core.consistency.consistency_sampling`: ``steps`` = K
    network evaluations).

    Annealed Langevin: ``eps`` follows the paper's step convention (above);
    ``steps_per_level`` is T; ``init`` the initial distribution (``uniform`` on [0, 1] as the
    paper, or ``gaussian``); ``final_denoise`` the Tweedie step ``x + sigma_L^2 s(x, L)``;
    ``clamp`` clamps to ``[0, 1]`` after every step.

    Fast samplers: ``steps`` sigmas of ``schedule`` (``ladder``: the trained levels or an even
    subset; ``edm``: the rho-schedule, NCSNv2 only) from the Gaussian prior
    ``N(0.5, sigma_1^2)`` (``init`` is then ``gaussian``); ``final_denoise`` ends with the step
    to sigma = 0; ``churn*`` are EDM's S_churn, S_tmin, S_tmax, S_noise; ``predictor``,
    ``corrector_steps`` and ``snr`` the predictor-corrector's. ``clamp`` clamps the final samples only.

    Both: ``precision`` fp32 or bf16 (autocast); ``compile`` ``torch.compile``s the network;
    ``use_ema`` samples with the EMA weights when the checkpoint has them.
    """

    steps_per_level: int
    eps: float
    init: str
    final_denoise: bool
    clamp: bool
    precision: str
    compile: bool
    use_ema: bool
    method: str = "annealed_langevin"
    steps: int | None = None
    schedule: str = "ladder"
    rho: float = 7.0
    churn: float = 0.0
    churn_min: float = 0.0
    churn_max: float | None = None
    churn_noise: float = 1.0
    predictor: str = "reverse_diffusion"
    corrector_steps: int = 1
    snr: float = 0.16

    @property
    def fast(self) -> bool:
        """Whether this is one of the fast samplers (not annealed Langevin)."""
        return self.method != "annealed_langevin"

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded. Annealed Langevin's omit the fast samplers' keys, so that a
        sample set written before they existed is still recognised as the same job."""
        out = asdict(self)
        if not self.fast:
            for key in FAST_FIELDS:
                out.pop(key)
        return out

    @classmethod
    def from_config(cls, config: Config, *, use_ema: bool | None = None) -> "SamplerSettings":
        """The config's sampling section; ``use_ema`` None takes ``sampling.ema``."""
        s = config.sampling
        ema = s.ema if use_ema is None else use_ema
        fast = {key: getattr(s, key) for key in FAST_FIELDS}
        init = s.init if s.method == "annealed_langevin" else "gaussian"
        return cls(s.steps_per_level, s.eps, init, s.final_denoise, s.clamp, s.precision, s.compile, ema, **fast)

    def with_steps(self, steps_per_level: int) -> "SamplerSettings":
        """The same total drift in fewer (or more) steps per level: ``eps`` scaled by T/T'
        (annealed Langevin; the fast samplers are returned unchanged)."""
        if self.fast:
            return self
        return replace(self, steps_per_level=steps_per_level, eps=self.eps * self.steps_per_level / steps_per_level)

    def schedule_for(self, ladder: torch.Tensor, sigma_min: float | None = None) -> torch.Tensor:
        """The sigmas a fast sampler walks for a network trained on ``ladder`` ``(L,)``. The
        consistency sampler's K sigmas (``sigma_min``: the student's boundary epsilon) are the
        first K of a (K + 1)-point schedule from sigma_1 down to epsilon, the end of the
        trajectories the student maps to (the paper's Algorithm 1 re-noises to points of the
        same discretisation): K = 2 on the digits gives 4.81 and 0.27 (rho 7); ``schedule:
        ladder`` takes them from the trained ladder instead."""
        if self.method == "consistency":
            if self.schedule == "edm" and sigma_min is not None:
                return edm_schedule(self.steps + 1, sigma_min, float(ladder[0]), rho=self.rho,
                                    dtype=ladder.dtype, device=ladder.device)[:-1]
            return make_schedule(self.schedule, ladder, self.steps + 1, rho=self.rho)[:-1]
        return make_schedule(self.schedule, ladder, self.steps, rho=self.rho)

    def nfe_per_sample(self, num_levels: int, *, inpaint: bool = False) -> int:
        """Network evaluations per sample (per inpainting with ``inpaint``) for a ladder of
        ``num_levels`` levels. Annealed Langevin: ``L T``, plus the final denoise when generating
        (inpainting does not take it); a fast sampler: its formula, inpainting or not."""
        if not self.fast:
            return num_levels * self.steps_per_level + int(self.final_denoise and not inpaint)
        if self.method == "consistency":  # one evaluation per sigma; a ladder subset has at most L - 1
            return self.steps if self.schedule == "edm" else min(self.steps, num_levels - 1)
        sigmas = num_levels if self.steps is None else (min(self.steps, num_levels) if self.schedule == "ladder"
                                                        else self.steps)
        return nfe_per_sample(self.method, sigmas, final_denoise=self.final_denoise,
                              corrector_steps=self.corrector_steps, predictor=self.predictor)

    def describe(self, num_levels: int, *, inpaint: bool = False) -> str:
        """One line for logs: the method, its main settings and its NFE per sample (per inpainting)."""
        nfe = self.nfe_per_sample(num_levels, inpaint=inpaint)
        if not self.fast:
            return f"annealed Langevin T={self.steps_per_level}, eps={self.eps:g}, {nfe} NFE/sample"
        if self.method == "consistency":
            return f"consistency model, {nfe} step(s) on {self.schedule} sigmas, {nfe} NFE/sample"
        extra = {"edm": f", churn={self.churn:g}",
                 "pc": f", {self.predictor} predictor, C={self.corrector_steps}, snr={self.snr:g}"}
        steps = self.steps or num_levels
        return f"{self.method} on {steps} {self.schedule} sigmas{extra.get(self.method, '')}, {nfe} NFE/sample"


def override_sampling(config: Config, overrides: list[str] | None = None, *, steps_per_level: int | None = None) -> Config:
    """The config with ``sampling.key=value`` overrides applied (and re-validated).

    Only the ``sampling`` section may change (the rest describes the trained model);
    anything else raises :class:`ncsn_core.ConfigError`.
    """
    items = list(overrides or [])
    for item in items:
        if not item.strip().startswith("sampling."):
            raise ConfigError(f"{item!r}: only sampling.* settings can be changed at sampling time")
    if steps_per_level is not None:
        items.append(f"sampling.steps_per_level={int(steps_per_level)}")
    return apply_overrides(config, items, "sampling overrides") if items else config


class Sampler:
    """A score network, its noise ladder and sampler settings, ready on one device.

    Shapes: :meth:`sample` returns ``(len(seeds), H, W, C)`` uint8; :meth:`inpaint` takes
    ``known`` ``(B, C, H, W)`` floats in ``[0, 1]`` and a bool ``mask`` of the same shape
    (True = known pixel) and returns ``(B, H, W, C)`` uint8.
    """

    def __init__(self, model: torch.nn.Module, sigmas: torch.Tensor, settings: SamplerSettings,
                 image_shape: tuple[int, int, int], device: torch.device | str = "cpu"):
        self.settings = settings
        self.device = torch.device(device)
        self.score_fn = make_score_fn(model.to(self.device).eval(), precision=settings.precision,
                                      compile=settings.compile)
        self.sigmas = sigmas.to(self.device)
        self.shape = tuple(image_shape)  # (C, H, W)
        self._clamp = (0.0, 1.0) if settings.clamp else None
        network = unwrap_model(model)
        if (settings.method == "consistency") != (getattr(network, "any_sigma", None) == "consistency"):
            raise UserError(f"sampling.method={settings.method}: a consistency model (made by jobs/distill.py) samples "
                            "with sampling.method=consistency, and only it does")
        self.sigma_min = network.sigma_min if settings.method == "consistency" else None  # the student's epsilon
        if settings.fast and settings.method != "consistency":
            self.sigma_score_fn = sigma_score_fn(network, self.score_fn, self.sigmas)
        if settings.fast:
            try:
                self.schedule = settings.schedule_for(self.sigmas, self.sigma_min)
            except ValueError as err:
                raise UserError(f"sampler settings: {err}") from err

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, settings: SamplerSettings,
                        device: torch.device | str = "cpu") -> "Sampler":
        model = checkpoint.build_model(use_ema=settings.use_ema, device=device)
        data = checkpoint.config.data
        return cls(model, checkpoint.sigmas, settings, (data.channels, data.image_size, data.image_size), device)

    @property
    def nfe_per_sample(self) -> int:
        """Network evaluations per sample of these settings on this network's ladder."""
        return self.settings.nfe_per_sample(len(self.sigmas))

    @property
    def nfe_per_inpainting(self) -> int:
        """Network evaluations per inpainting (:meth:`inpaint`, per seed)."""
        return self.settings.nfe_per_sample(len(self.sigmas), inpaint=True)

    def _start(self, seeds: list[int]) -> tuple[torch.Tensor, PerSampleNoise]:
        noise = PerSampleNoise(seeds, self.shape, device=self.device)
        sigma_max = float(self.schedule[0] if self.settings.fast else self.sigmas[0])
        x0 = initial_samples((len(seeds), *self.shape), kind=self.settings.init, sigma_max=sigma_max, noise=noise)
        return x0, noise

    def _steps(self) -> int:
        """Callback steps of one run: L x T for annealed Langevin, the schedule's length otherwise."""
        return len(self.schedule) if self.settings.fast else len(self.sigmas) * self.settings.steps_per_level

    def _level_callback(self, on_level: LevelCallback | None):
        if on_level is None:
            return None
        if self.settings.fast:
            steps = len(self.schedule)
            return lambda info: on_level(min(info["step"] + 1, steps), steps)
        last_step, levels = self.settings.steps_per_level - 1, len(self.sigmas)

        def callback(info: dict[str, Any]) -> None:
            if info["step"] == last_step:
                on_level(info["level"] + 1, levels)

        return callback

    def _run(self, x0: torch.Tensor, noise: PerSampleNoise, callback, constrain: KnownPixels | None = None
             ) -> torch.Tensor:
        """The configured sampler from ``x0``, one callback per step; a fast sampler holds the
        known pixels of ``constrain`` (inpainting)."""
        s = self.settings
        if not s.fast:
            return annealed_langevin(self.score_fn, x0, self.sigmas, steps_per_level=s.steps_per_level, eps=s.eps,
                                     final_denoise=s.final_denoise, clamp=self._clamp, noise=noise, callback=callback)
        if s.method == "consistency":  # the network's forward is the consistency function f itself
            x = consistency_sampling(self.score_fn, x0, self.schedule, sigma_min=self.sigma_min, noise=noise,
                                     callback=callback, constrain=constrain)
            clamp_(x, self._clamp)
            return x
        options: dict[str, Any] = {}
        if s.method == "edm":
            churn_max = float("inf") if s.churn_max is None else s.churn_max
            options = {"churn": s.churn, "churn_min": s.churn_min, "churn_max": churn_max, "churn_noise": s.churn_noise}
        elif s.method == "pc":
            options = {"corrector_steps": s.corrector_steps, "snr": s.snr, "predictor": s.predictor}
        x = FAST_SAMPLERS[s.method](self.sigma_score_fn, x0, self.schedule, final_denoise=s.final_denoise,
                                    noise=noise, callback=callback, constrain=constrain, **options)
        clamp_(x, self._clamp)
        return x

    def sample_float(self, seeds: list[int], *, on_level: LevelCallback | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` samples as floats (not clamped unless the settings clamp)."""
        x0, noise = self._start(seeds)
        return self._run(x0, noise, self._level_callback(on_level))

    def sample(self, seeds: list[int], *, on_level: LevelCallback | None = None) -> np.ndarray:
        """``(B, H, W, C)`` uint8; :class:`NonFiniteSamplesError` if any pixel is not finite."""
        return to_uint8(check_finite(self.sample_float(seeds, on_level=on_level), seeds))

    def sample_with_frames(self, seeds: list[int], frames: int, *,
                           on_level: LevelCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(images (B, H, W, C), frames (K, B, H, W, C))`` uint8: the same samples as
        :meth:`sample`, and ``K = frames`` snapshots of them forming (paper Fig. 4): the
        initial samples, ``K - 2`` states evenly spaced over the ``L x T`` Langevin steps, and
        the final samples."""
        if frames < 2:
            raise ValueError(f"a strip needs at least 2 frames, got {frames}")
        x0, noise = self._start(seeds)
        s, total = self.settings, self._steps()
        wanted = {round(i * total / (frames - 1)) for i in range(1, frames - 1)}
        captured = [to_uint8(x0)]
        per_level = self._level_callback(on_level)

        def callback(info: dict[str, Any]) -> None:
            done = info["step"] + 1 if s.fast else info["level"] * s.steps_per_level + info["step"] + 1
            if done in wanted and len(captured) < frames - 1:
                captured.append(to_uint8(info["x"]))
            if per_level is not None:
                per_level(info)

        x = self._run(x0, noise, callback)
        images = to_uint8(check_finite(x, seeds))
        return images, np.stack([*captured, images])

    def denoised_per_level(self, seeds: list[int]) -> list[tuple[float, np.ndarray]]:
        """What the chain has settled on after each level: for every level ``i``, ``(sigma_i,
        images (B, H, W, C) uint8)`` with the images the Tweedie estimate
        ``x + sigma_i^2 s(x, i)`` of the state at the end of that level (the last entry is
        the samples themselves when ``final_denoise`` is on). The chain is the one
        :meth:`sample` runs for these seeds. Used to see at which noise level classes or
        shapes are decided (``benchmarks/bench_quality.py --per-level``)."""
        if self.settings.fast:
            raise UserError("the per-level view follows annealed Langevin's levels; sample with "
                            "sampling.method=annealed_langevin for it")
        x0, noise = self._start(seeds)
        s = self.settings
        sigmas = [float(v) for v in self.sigmas.tolist()]
        out: list[tuple[float, np.ndarray]] = []

        def callback(info: dict[str, Any]) -> None:
            if info["step"] == s.steps_per_level - 1:
                level = info["level"]
                labels = torch.full((len(seeds),), level, dtype=torch.long, device=self.device)
                denoised = info["x"] + sigmas[level] ** 2 * self.score_fn(info["x"], labels)
                out.append((sigmas[level], to_uint8(denoised)))

        annealed_langevin(self.score_fn, x0, self.sigmas, steps_per_level=s.steps_per_level, eps=s.eps,
                          final_denoise=False, clamp=self._clamp, noise=noise, callback=callback)
        return out

    def inpaint(self, seeds: list[int], known: torch.Tensor, mask: torch.Tensor, *, renoise: str = "level",
                on_level: LevelCallback | None = None) -> np.ndarray:
        """Inpaintings ``(B, H, W, C)`` uint8, one per seed, with the configured sampler.

        Annealed Langevin: the paper's Appendix B.3 (:func:`ncsn_core.annealed_langevin_inpaint`;
        ``renoise``: ``"level"``, NCSN, or ``"step"``, NCSNv2), ``L T`` evaluations. A fast
        sampler: the same run as :meth:`sample` from the same seed, with the known pixels
        replaced by ``known + sigma z`` whenever the state is at sigma
        (:class:`ncsn_core.inpainting.KnownPixels`), the same evaluations as generating. Either
        way the known pixels of the result are ``known``'s exactly."""
        x0, noise = self._start(seeds)
        s = self.settings
        known, mask = known.to(self.device), mask.to(self.device)
        if s.fast:
            if renoise != "level":
                raise UserError(f"renoise={renoise} is annealed Langevin's; sampling.method={s.method} draws fresh "
                                "noise for the known pixels after every update")
            x = self._run(x0, noise, self._level_callback(on_level), constrain=KnownPixels(known, mask))
            return to_uint8(check_finite(x, seeds))
        x = annealed_langevin_inpaint(self.score_fn, x0, self.sigmas, known=known,
                                      mask=mask, steps_per_level=s.steps_per_level, eps=s.eps,
                                      renoise=renoise,
                                      clamp=self._clamp, noise=noise, callback=self._level_callback(on_level))
        return to_uint8(check_finite(x, seeds))


def inpaint_seed(seed: int, source_id: int, k: int) -> int:
    """The seed of inpainting ``k`` of source image ``source_id``: a hash, independent of K."""
    digest = hashlib.sha256(f"ncsn-inpaint:{seed}:{source_id}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def image_mask(kind: str, shape: tuple[int, int, int], *, seed: int, source_id: int,
               file_mask: np.ndarray | None) -> torch.Tensor:
    """The ``(C, H, W)`` bool known-pixel mask for one source image (random masks seeded per id)."""
    c, h, w = shape
    if file_mask is not None:
        return torch.from_numpy(file_mask).view(1, h, w).expand(c, h, w).clone()
    generator = torch.Generator().manual_seed(inpaint_seed(seed, source_id, -1))
    return make_mask(kind, (1, c, h, w), generator=generator)[0]


def load_mask_file(uri: str, height: int, width: int, *, endpoint_url: str | None = None) -> np.ndarray:
    """A PNG mask as ``(H, W)`` bool, True = known pixel (any non-zero value in any channel)."""
    try:
        data = Storage.from_uri(uri, endpoint_url=endpoint_url).read_bytes()
    except StorageError as err:
        raise UserError(f"mask {uri}: cannot read the mask file ({err})") from err
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"mask {uri}: not a readable image ({err})") from err
    if arr.shape != (height, width):
        raise UserError(f"mask {uri}: the mask is {arr.shape[1]}x{arr.shape[0]} (W x H) but the images are {width}x{height}")
    known = arr > 0
    if known.all() or not known.any():
        raise UserError(f"mask {uri}: the mask must have both known (non-zero) and unknown (zero) pixels")
    return known


def preview_grid(sampler: Sampler, count: int, *, scale: int | None = None):
    """A Pillow image of ``count`` samples (seeds ``0 .. count-1``) in a square grid."""
    images = sampler.sample(list(range(count)))
    return image_grid(images, scale=scale or max(1, 64 // images.shape[1]))
