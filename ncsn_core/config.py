"""Typed, validated experiment configuration loaded from YAML.

A config file has up to eight top-level keys: ``name`` and the sections ``data``, ``model``,
``noise``, ``training``, ``sampling``, optionally ``inpainting`` (sampler settings inpainting
uses instead of ``sampling``'s) and, for a consistency model distilled from a score model,
``consistency`` (see the dataclasses below for every key, its type,
default and meaning). Files are read with ``yaml.safe_load``. An unknown key, a wrong type
or an out-of-range value raises :class:`ConfigError` naming the file and the key.

Three values may be ``auto`` (NCSNv2's rules, :mod:`ncsn_core.noise`), resolved by
:func:`resolve_auto` before training from the data: ``noise.sigma_max`` (the largest
distance between two training images, technique 1), ``noise.num_levels`` (L for a ratio
whose neighbouring levels overlap by about half, technique 2) and ``sampling.eps`` (the step
size for T from the stationary-variance criterion, technique 4). A checkpoint always holds
the resolved numbers.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

import yaml

__all__ = [
    "ConfigError",
    "Config",
    "DataConfig",
    "ModelConfig",
    "NoiseConfig",
    "TrainingConfig",
    "SamplingConfig",
    "InpaintingConfig",
    "ConsistencyConfig",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "resolve_auto",
]


class ConfigError(ValueError):
    """A configuration problem; the message names the source and the key."""


@dataclass
class DataConfig:
    dataset: str = "digits"  # digits | mnist | cifar10 | celeba | celeba64 | imagefolder | toy
    image_size: int = 8  # H = W of the images, in pixels
    channels: int = 1
    dequantize: bool = True  # x * 255/256 + U(0, 1)/256, as the original training
    random_flip: bool = False  # random horizontal flips (CIFAR-10, CelebA)
    uri: Union[str, None] = None  # where the prepared Parquet dataset lives (None: the job's default)


@dataclass
class ModelConfig:
    # ncsn (NCSN, images) | ncsnv2 (NCSNv2, images) | unet (small images) | mlp (small images) | toy_mlp (2-D data)
    kind: str = "ncsn"
    ngf: int = 64  # NCSN base width: 64 for MNIST, 128 for CIFAR-10/CelebA in the paper; unet: its width c
    hidden: int = 128  # toy_mlp and mlp: hidden width; unet: the dense bottleneck's width
    depth: int = 3  # toy_mlp and mlp: hidden layers
    groups: int = 8  # unet: GroupNorm groups (0: no normalisation)
    sigma_data: float = 0.5  # mlp, unet: the data's standard deviation (pixels in [0, 1]) for EDM's preconditioning


@dataclass
class NoiseConfig:
    sigma_max: Union[float, str] = 1.0  # sigma_1 (pixel units, images in [0, 1]), or "auto"
    sigma_min: float = 0.01  # sigma_L
    num_levels: Union[int, str] = 10  # L, or "auto"


@dataclass
class TrainingConfig:
    loss: str = "dsm"  # dsm (denoising) | ssm (sliced)
    anneal_power: float = 2.0  # lambda(sigma) = sigma ** anneal_power
    # sigma_power: lambda(sigma) = sigma ** anneal_power (the paper) | edm: EDM's weighting,
    # lambda(sigma) = sigma^2 (sigma^2 + sigma_data^2) / sigma_data^2 with model.sigma_data
    loss_weighting: str = "sigma_power"
    # Which sigmas training sees: ladder (the paper: one of the L ladder levels per example,
    # uniformly) | lognormal (EDM: log sigma ~ N(sigma_mean, sigma_std^2), clamped to the
    # ladder's range; networks conditioned on sigma's value only, model.kind mlp or unet)
    sigma_draw: str = "ladder"
    sigma_mean: float = -1.2  # lognormal: mean of log sigma (EDM's P_mean)
    sigma_std: float = 1.2  # lognormal: standard deviation of log sigma (EDM's P_std)
    n_projections: int = 1  # ssm only: random projections per example
    batch_size: int = 128  # global batch size (split across workers)
    lr: float = 1e-3
    beta1: float = 0.9
    weight_decay: float = 0.0
    grad_clip: Union[float, None] = None  # max global grad norm; None = no clipping
    steps: int = 200_000  # total optimiser steps of the run
    ema_decay: float = 0.999
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    log_every: int = 100
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16: autocast of the forward pass; weights, EMA and Adam stay fp32
    eval_every: int = 0  # sample and score every K-th checkpoint during training (0: never)
    eval_n: int = 256  # samples per evaluation (seeds 0 .. eval_n - 1 every time)
    eval_metric: str = "digits"  # digits (8x8 grey data, offline) | fid (against the training data)


@dataclass
class SamplingConfig:
    steps_per_level: int = 100  # T
    # Paper convention x + eps*(s_i/s_L)^2/2 * score + sqrt(eps*(s_i/s_L)^2) * z.
    # 4e-5 here equals the original code's step_lr = 2e-5 (which used x + a*score + sqrt(2a)*z).
    eps: Union[float, str] = 4e-5  # or "auto" (technique 4 for this ladder and T)
    init: str = "uniform"  # uniform (paper) | gaussian
    final_denoise: bool = False  # Tweedie step x + sigma_L^2 s(x, sigma_L) at the end
    clamp: bool = False  # clamp to [0, 1] after every step
    batch_size: int = 100
    ema: bool = True  # sample with the EMA weights (when the checkpoint has them); the paper sampled without
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    compile: bool = False  # torch.compile the network
    preview_samples: int = 64  # images in the PNG grids written during training
    # The sampler (ncsn_core.fast_sampling). annealed_langevin (the paper's Algorithm 1) uses
    # steps_per_level, eps and init above; the fast samplers walk a schedule of `steps` sigmas
    # from the Gaussian prior N(0.5, sigma_1^2) and use the keys below.
    # annealed_langevin | euler | heun | edm | pc | consistency (a distilled model: K = steps evaluations)
    method: str = "annealed_langevin"
    steps: Union[int, None] = None  # sigmas in the schedule; None: as many as the ladder's levels
    schedule: str = "ladder"  # ladder (the trained levels or an even subset) | edm (rho-schedule, NCSNv2 only)
    rho: float = 7.0  # edm schedule's rho
    churn: float = 0.0  # edm: S_churn (0 = the deterministic Heun sampler)
    churn_min: float = 0.0  # edm: S_tmin
    churn_max: Union[float, None] = None  # edm: S_tmax (None = no upper bound)
    churn_noise: float = 1.0  # edm: S_noise
    predictor: str = "reverse_diffusion"  # pc: reverse_diffusion (score_sde) | euler | heun (probability-flow ODE)
    corrector_steps: int = 1  # pc: Langevin corrector steps per sigma
    snr: float = 0.16  # pc: signal-to-noise ratio of the corrector step, e = 2 (snr sigma)^2


@dataclass
class InpaintingConfig:
    """Sampler settings inpainting uses in place of ``sampling``'s (``jobs/generate.py --mode
    inpaint``); a key left null is ``sampling``'s own. A sampler that draws the best
    unconditional samples need not complete a masked image best: on the digits default EDM's
    churned Heun steps leave the unknown pixels short of agreeing with the known ones, where a
    predictor-corrector's Langevin corrector pulls them there at the same NFE (docs/guide/
    generation.md). Flags still win: ``--set sampling.method=annealed_langevin`` inpaints as the
    paper does whatever this section says."""

    method: Union[str, None] = None
    steps: Union[int, None] = None
    schedule: Union[str, None] = None
    churn: Union[float, None] = None
    predictor: Union[str, None] = None
    corrector_steps: Union[int, None] = None
    snr: Union[float, None] = None

    def settings(self) -> dict[str, Any]:
        """The keys that are set: ``{sampling key: value}``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass
class ConsistencyConfig:
    """A consistency model distilled from a score model (``jobs/distill.py``;
    :mod:`ncsn_core.consistency`). ``teacher`` None: the config is a score model's."""

    teacher: Union[str, None] = None  # the teacher's checkpoint file URI, pinned by distill.py
    teacher_sha256: Union[str, None] = None  # its SHA-256, checked by every worker
    teacher_step: int = 0
    teacher_weights: str = "ema"  # ema | trained: which of the teacher's weights teach
    levels: int = 18  # N: sigmas of EDM's rho-schedule over the teacher's range [sigma_L, sigma_1]
    rho: float = 7.0  # that schedule's rho
    sigma_min: float = 0.002  # epsilon: the boundary, f(x, epsilon) = x; below the teacher's sigma_L
    distance: str = "pseudo_huber"  # pseudo_huber | l2
    huber_c: Union[float, None] = None  # pseudo-Huber's c; null: 0.00027 sqrt(D) (iCT's, for pixels in [0, 1])
    weighting: str = "ict"  # ict: 1 / (s_{n+1} - s_n) | uniform


@dataclass
class Config:
    name: str = "digits"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    inpainting: InpaintingConfig = field(default_factory=InpaintingConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)

    @property
    def is_consistency(self) -> bool:
        """Whether this is a consistency model distilled from a teacher (``consistency.teacher`` set)."""
        return self.consistency.teacher is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of Python primitives (safe for ``torch.load(weights_only=True)``).
        A score model's omits the ``consistency`` section (its defaults), and a config without
        inpainting settings the ``inpainting`` section, so that configs and checkpoints written
        before they existed compare equal."""
        out = dataclasses.asdict(self)
        if not self.is_consistency:
            out.pop("consistency")
        if not self.inpainting.settings():
            out.pop("inpainting")
        return out

    def for_inpainting(self) -> "Config":
        """This config with the ``inpainting`` section's settings in ``sampling`` (itself when it has none)."""
        settings = self.inpainting.settings()
        if not settings:
            return self
        raw = self.to_dict()
        raw.pop("inpainting")
        raw["sampling"].update(settings)
        return config_from_dict(raw, "the config's inpainting section")

    def has_auto(self) -> bool:
        """Whether some value is still ``auto`` (see :func:`resolve_auto`)."""
        return "auto" in (self.noise.sigma_max, self.noise.num_levels, self.sampling.eps)

    def validate(self, source: str = "<config>") -> "Config":
        _check(source, "data.dataset", self.data.dataset,
               ("digits", "mnist", "cifar10", "celeba", "celeba64", "imagefolder", "toy"))
        _check(source, "model.kind", self.model.kind, ("ncsn", "ncsnv2", "unet", "mlp", "toy_mlp"))
        _check(source, "training.loss_weighting", self.training.loss_weighting, ("sigma_power", "edm"))
        _check(source, "training.sigma_draw", self.training.sigma_draw, ("ladder", "lognormal"))
        if self.training.sigma_draw == "lognormal":
            if self.model.kind not in ("mlp", "unet", "ncsnv2"):
                raise ConfigError(f"{source}: training.sigma_draw lognormal draws sigmas between the ladder's levels, "
                                  f"which only a network that takes any sigma takes (model.kind mlp, unet or ncsnv2), "
                                  f"not {self.model.kind!r}")
            if self.training.loss != "dsm":
                raise ConfigError(f"{source}: training.sigma_draw lognormal is for training.loss dsm")
        if not math.isfinite(self.training.sigma_mean):
            raise ConfigError(f"{source}: training.sigma_mean must be a finite number, got {self.training.sigma_mean!r}")
        if not (math.isfinite(self.training.sigma_std) and self.training.sigma_std > 0):
            raise ConfigError(f"{source}: training.sigma_std must be positive, got {self.training.sigma_std!r}")
        if self.model.groups < 0:
            raise ConfigError(f"{source}: model.groups must be >= 0 (0: no normalisation), got {self.model.groups}")
        for key, value in (("noise.sigma_max", self.noise.sigma_max), ("noise.num_levels", self.noise.num_levels),
                           ("sampling.eps", self.sampling.eps)):
            if isinstance(value, str) and value != "auto":
                raise ConfigError(f"{source}: {key} must be a number or auto; got {value!r}")
        _check(source, "training.loss", self.training.loss, ("dsm", "ssm"))
        _check(source, "sampling.init", self.sampling.init, ("uniform", "gaussian"))
        _check(source, "sampling.precision", self.sampling.precision, ("fp32", "bf16"))
        _check(source, "training.precision", self.training.precision, ("fp32", "bf16"))
        _check(source, "training.eval_metric", self.training.eval_metric, ("digits", "fid"))
        self._validate_sampler(source)
        self._validate_consistency(source)
        if self.inpainting.settings():
            try:
                self.for_inpainting()
            except ConfigError as err:
                raise ConfigError(f"{source}: inpainting: {err}") from None
        positive = {
            "data.image_size": self.data.image_size,
            "data.channels": self.data.channels,
            "model.ngf": self.model.ngf,
            "model.hidden": self.model.hidden,
            "model.depth": self.model.depth,
            "model.sigma_data": self.model.sigma_data,
            "noise.sigma_max": self.noise.sigma_max,
            "noise.sigma_min": self.noise.sigma_min,
            "noise.num_levels": self.noise.num_levels,
            "training.n_projections": self.training.n_projections,
            "training.batch_size": self.training.batch_size,
            "training.lr": self.training.lr,
            "training.steps": self.training.steps,
            "training.checkpoint_every": self.training.checkpoint_every,
            "training.keep_checkpoints": self.training.keep_checkpoints,
            "training.log_every": self.training.log_every,
            "sampling.steps_per_level": self.sampling.steps_per_level,
            "sampling.eps": self.sampling.eps,
            "sampling.batch_size": self.sampling.batch_size,
            "sampling.preview_samples": self.sampling.preview_samples,
        }
        for key, value in positive.items():
            if value != "auto" and not value > 0:
                raise ConfigError(f"{source}: {key} must be positive, got {value!r}")
        if (not self.has_auto() and self.noise.num_levels > 1
                and not self.noise.sigma_max > self.noise.sigma_min):
            raise ConfigError(f"{source}: noise.sigma_max must exceed noise.sigma_min")
        check_run_name(self.name, f"{source}: name")
        for key, value, low, high in (("training.beta1", self.training.beta1, 0.0, 1.0),
                                      ("training.weight_decay", self.training.weight_decay, 0.0, None),
                                      ("training.anneal_power", self.training.anneal_power, 0.0, None),
                                      ("training.seed", self.training.seed, 0, None),
                                      ("training.eval_every", self.training.eval_every, 0, None),
                                      ("training.eval_n", self.training.eval_n, 2, None)):
            if value < low or (high is not None and value >= high):
                where = f"[{low}, {high})" if high is not None else f">= {low}"
                raise ConfigError(f"{source}: {key} must be {where}, got {value!r}")
        if not 0.0 <= self.training.ema_decay < 1.0:
            raise ConfigError(f"{source}: training.ema_decay must be in [0, 1), got {self.training.ema_decay}")
        if self.training.grad_clip is not None and self.training.grad_clip <= 0:
            raise ConfigError(f"{source}: training.grad_clip must be positive or null")
        return self


    def _validate_consistency(self, source: str) -> None:
        c = self.consistency
        _check(source, "consistency.teacher_weights", c.teacher_weights, ("ema", "trained"))
        _check(source, "consistency.distance", c.distance, ("pseudo_huber", "l2"))
        _check(source, "consistency.weighting", c.weighting, ("ict", "uniform"))
        if c.levels < 2:
            raise ConfigError(f"{source}: consistency.levels must be at least 2, got {c.levels}")
        for key, value in (("consistency.rho", c.rho), ("consistency.sigma_min", c.sigma_min)):
            if not value > 0:
                raise ConfigError(f"{source}: consistency.{key.split('.')[1]} must be positive, got {value!r}")
        if c.huber_c is not None and not c.huber_c > 0:
            raise ConfigError(f"{source}: consistency.huber_c must be positive or null, got {c.huber_c!r}")
        if c.teacher_step < 0:
            raise ConfigError(f"{source}: consistency.teacher_step must be >= 0, got {c.teacher_step}")
        if not self.is_consistency:
            return
        if self.model.kind not in ("ncsnv2", "mlp", "unet"):
            raise ConfigError(f"{source}: model.kind {self.model.kind}: a consistency model is distilled from a network "
                              "that takes any sigma (ncsnv2, mlp or unet); an NCSN network is conditioned on the index "
                              "of its trained levels and has no score between them")
        if not isinstance(self.noise.sigma_min, str) and not c.sigma_min < self.noise.sigma_min:
            raise ConfigError(f"{source}: consistency.sigma_min ({c.sigma_min}) must be below the teacher's smallest "
                              f"level noise.sigma_min ({self.noise.sigma_min})")
        if self.training.loss != "dsm" or self.training.sigma_draw != "ladder":
            raise ConfigError(f"{source}: a consistency model trains by distillation: training.loss dsm and "
                              "training.sigma_draw ladder (the distillation draws its own intervals)")

    def _validate_sampler(self, source: str) -> None:
        """The fast-sampler keys: known choices, ranges, and what the model kind can do."""
        s = self.sampling
        _check(source, "sampling.method", s.method, SAMPLING_METHODS)
        _check(source, "sampling.schedule", s.schedule, ("ladder", "edm"))
        _check(source, "sampling.predictor", s.predictor, ("reverse_diffusion", "euler", "heun"))
        if s.method == "consistency":
            if not self.is_consistency:
                raise ConfigError(f"{source}: sampling.method=consistency samples a consistency model (made by "
                                  "jobs/distill.py from a trained run); this config's network is a score model")
            if s.steps is None or s.steps < 1:
                raise ConfigError(f"{source}: sampling.steps is the consistency sampler's number of steps K "
                                  f"(network evaluations per sample), at least 1; got {s.steps}")
        elif self.is_consistency:
            raise ConfigError(f"{source}: sampling.method={s.method}: a consistency model samples with "
                              "sampling.method=consistency (sampling.steps: K network evaluations)")
        elif s.steps is not None and s.steps < 2:
            raise ConfigError(f"{source}: sampling.steps must be at least 2 (or null for the whole ladder), got {s.steps}")
        for key, value in (("sampling.rho", s.rho), ("sampling.snr", s.snr), ("sampling.churn_noise", s.churn_noise)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{source}: {key} must be a positive number, got {value!r}")
        for key, value in (("sampling.churn", s.churn), ("sampling.churn_min", s.churn_min)):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{source}: {key} must be a non-negative number, got {value!r}")
        if s.churn_max is not None and not s.churn_max >= s.churn_min:
            raise ConfigError(f"{source}: sampling.churn_max must be at least sampling.churn_min (or null)")
        if s.corrector_steps < 0:
            raise ConfigError(f"{source}: sampling.corrector_steps must be >= 0, got {s.corrector_steps}")
        if self.model.kind == "ncsn" and s.method != "annealed_langevin":
            if s.schedule != "ladder":
                raise ConfigError(f"{source}: sampling.schedule={s.schedule}: an NCSN network is conditioned on the "
                                  "index of its trained noise levels, so it has no score between them; use "
                                  "sampling.schedule=ladder (or an NCSNv2 model for any sigma)")
            if s.method == "edm" and s.churn > 0:
                raise ConfigError(f"{source}: sampling.method=edm with churn raises sigma between the trained levels, "
                                  "which an NCSN network cannot evaluate; use sampling.churn=0, or sampling.method=pc "
                                  "for a stochastic sampler on the ladder")
        if self.model.kind == "toy_mlp" and s.method != "annealed_langevin":
            raise ConfigError(f"{source}: sampling.method={s.method}: the toy model samples with annealed_langevin")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_name(name: str, source: str) -> str:
    """A run's name is a folder name inside its storage: 1-128 letters, digits, ``.``, ``_``
    and ``-``, starting with a letter or digit (so it can neither escape nor be empty)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{source} must be a folder name of up to 128 letters, digits, '.', '_' and '-' "
                          f"starting with a letter or digit, got {name!r}")
    return name


SAMPLING_METHODS = ("annealed_langevin", "euler", "heun", "edm", "pc", "consistency")


def _check(source: str, key: str, value: str, choices: Iterable[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{source}: {key} must be one of {', '.join(choices)}; got {value!r}")


_SECTIONS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(source: str, key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(source, key, value, option)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # no setting means "infinite": unbounded ones use null
                raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
            return number
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the types above are used
        raise ConfigError(f"{source}: {key}: unsupported field type {annotation!r}")
    raise ConfigError(
        f"{source}: {key} must be of type {annotation.__name__}, got {type(value).__name__} {value!r}"
    )


def config_from_dict(raw: Any, source: str = "<dict>") -> Config:
    """Build and validate a :class:`Config` from a nested dict, naming ``source`` in errors."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    kwargs: dict[str, Any] = {}
    for section, value in raw.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{source}: unknown key {section!r} (expected one of {', '.join(_SECTIONS)})")
        if section == "name":
            kwargs["name"] = _coerce(source, "name", value, str)
            continue
        cls = typing.get_type_hints(Config)[section]
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {section} must be a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(cls)
        fields_kwargs = {}
        for key, item in value.items():
            if key not in hints:
                raise ConfigError(
                    f"{source}: unknown key {section}.{key!s} (known: {', '.join(sorted(hints))})"
                )
            fields_kwargs[key] = _coerce(source, f"{section}.{key}", item, hints[key])
        kwargs[section] = cls(**fields_kwargs)
    return Config(**kwargs).validate(source)


def load_config(path: str | Path) -> Config:
    """Load a YAML config file (``yaml.safe_load``) into a validated :class:`Config`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file in UTF-8 ({err})") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    return config_from_dict(raw, str(path))


def apply_overrides(config: Config, overrides: Iterable[str], source: str = "--set") -> Config:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars) and re-validate."""
    raw = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: expected section.key=value, got {item!r}")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"{source}: cannot parse value of {dotted}: {err}") from err
        if len(parts) == 1 and parts[0] == "name":
            raw["name"] = value
        elif len(parts) == 2 and parts[0] in raw and isinstance(raw[parts[0]], dict):
            raw[parts[0]][parts[1]] = value
        else:
            raise ConfigError(f"{source}: unknown key {dotted!r}")
    return config_from_dict(raw, source)


def resolve_auto(config: Config, *, max_distance: float | None, dimension: int) -> tuple[Config, dict[str, Any]]:
    """The config with its ``auto`` values replaced by NCSNv2's rules, and what was chosen.

    ``max_distance``: the largest Euclidean distance between two training images (pixels in
    [0, 1]); needed only when ``noise.sigma_max`` is ``auto``. ``dimension``: D, the number
    of values per image (C * H * W).
    """
    from .noise import geometric_sigmas, suggest_num_levels, suggest_step_size

    raw = config.to_dict()
    chosen: dict[str, Any] = {}
    noise, sampling = raw["noise"], raw["sampling"]
    if noise["sigma_max"] == "auto":
        if max_distance is None:
            raise ConfigError("noise.sigma_max: auto needs the largest distance between training images")
        noise["sigma_max"] = chosen["noise.sigma_max"] = float(max_distance)
    if noise["num_levels"] == "auto":
        noise["num_levels"] = chosen["noise.num_levels"] = suggest_num_levels(
            noise["sigma_max"], noise["sigma_min"], dimension)
    if sampling["eps"] == "auto":
        sigmas = geometric_sigmas(noise["sigma_max"], noise["sigma_min"], noise["num_levels"])
        sampling["eps"] = chosen["sampling.eps"] = suggest_step_size(sigmas, sampling["steps_per_level"])
    return config_from_dict(raw, "resolved config"), chosen
