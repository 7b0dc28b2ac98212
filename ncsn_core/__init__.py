"""NCSN core: noise ladders, score networks, score-matching losses, Langevin and fast samplers,
inpainting, EMA, configs and checkpoints. Pure PyTorch: no Ray, no storage, no CLI.

Song & Ermon, "Generative Modeling by Estimating Gradients of the Data Distribution",
NeurIPS 2019 (arXiv:1907.05600).
"""

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import Config, ConfigError, apply_overrides, config_from_dict, load_config
from .ema import EMA
from .fast_sampling import FAST_SAMPLERS, edm_stochastic, euler, heun, nfe_per_sample, predictor_corrector
from .inpainting import annealed_langevin_inpaint, make_mask
from .losses import LOSSES, LossOutput, dsm_loss, loss_options, per_level_means, ssm_loss
from .model import NCSN, PreconditionedMLP, PreconditionedUNet, ToyScoreMLP, build_model, make_score_fn, unwrap_model
from .noise import geometric_sigmas, suggest_sigma_max
from .noise_sources import GeneratorNoise, PerSampleNoise
from .sampling import annealed_langevin, initial_samples, langevin
from .schedules import edm_schedule, ladder_schedule, make_schedule
from .sigma_score import LadderScore, OffLadderSigmaError, continuous_score, sigma_score_fn, value_score
from .train_step import make_optimizer, train_step

__all__ = [
    "Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint",
    "Config", "ConfigError", "apply_overrides", "config_from_dict", "load_config",
    "EMA", "annealed_langevin_inpaint", "make_mask",
    "LOSSES", "LossOutput", "dsm_loss", "loss_options", "per_level_means", "ssm_loss",
    "NCSN", "PreconditionedMLP", "PreconditionedUNet", "ToyScoreMLP", "build_model", "make_score_fn", "unwrap_model", "train_step", "make_optimizer",
    "geometric_sigmas", "suggest_sigma_max", "GeneratorNoise", "PerSampleNoise",
    "annealed_langevin", "initial_samples", "langevin",
    "FAST_SAMPLERS", "euler", "heun", "edm_stochastic", "predictor_corrector", "nfe_per_sample",
    "edm_schedule", "ladder_schedule", "make_schedule", "LadderScore", "OffLadderSigmaError", "continuous_score",
    "sigma_score_fn", "value_score",
]
