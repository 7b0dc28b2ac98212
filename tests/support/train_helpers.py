"""Test support for the training tests: a tiny config and a digits dataset on demand."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ncsn_ray.testing.digests import tensors_digest, training_state_digests  # noqa: F401 - re-exported for the tests

REPO = Path(__file__).resolve().parents[2]

TINY_CONFIG = {
    "name": "tiny",
    "data": {"dataset": "digits", "image_size": 8, "channels": 1},
    "model": {"kind": "ncsn", "ngf": 4},
    "noise": {"sigma_max": 1.0, "sigma_min": 0.01, "num_levels": 3},
    "training": {"batch_size": 32, "steps": 6, "checkpoint_every": 3, "log_every": 1, "keep_checkpoints": 2,
                 "ema_decay": 0.9},
    "sampling": {"steps_per_level": 2, "preview_samples": 4, "batch_size": 4},
}


def write_tiny_config(folder: Path, **sections) -> Path:
    config = json.loads(json.dumps(TINY_CONFIG))
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def metrics(run_folder: Path) -> list[dict]:
    return [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
