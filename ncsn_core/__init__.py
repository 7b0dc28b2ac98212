"""NCSN core: noise ladders, score networks, score-matching losses, Langevin samplers,
inpainting, EMA, configs and checkpoints. Pure PyTorch: no Ray, no storage, no CLI.

Song & Ermon, "Generative Modeling by Estimating Gradients of the Data Distribution",
NeurIPS 2019 (arXiv:1907.05600).
"""

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import Config, ConfigError, apply_overrides, config_from_dict, load_config
from .ema import EMA
from .inpainting import annealed_langevin_inpaint, make_mask
from .losses import LOSSES, LossOutput, dsm_loss, per_level_means, ssm_loss
from .model import NCSN, ToyScoreMLP, build_model, make_score_fn, unwrap_model
from .noise import geometric_sigmas, suggest_sigma_max
from .noise_sources import GeneratorNoise, PerSampleNoise
from .sampling import annealed_langevin, initial_samples, langevin
from .train_step import train_step

__all__ = [
    "Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint",
    "Config", "ConfigError", "apply_overrides", "config_from_dict", "load_config",
    "EMA", "annealed_langevin_inpaint", "make_mask",
    "LOSSES", "LossOutput", "dsm_loss", "per_level_means", "ssm_loss",
    "NCSN", "ToyScoreMLP", "build_model", "make_score_fn", "unwrap_model", "train_step",
    "geometric_sigmas", "suggest_sigma_max", "GeneratorNoise", "PerSampleNoise",
    "annealed_langevin", "initial_samples", "langevin",
]
