"""Consistency distillation, driver side: a student's config from its teacher's checkpoint and a
distillation recipe (``jobs/distill.py``, ``ncsn-distill``).

The student is a training run like any other (:mod:`ncsn_ray.train.job` runs it: Ray Train,
DDP over the Parquet shards, checkpoints to object storage, exact resumption, evaluations,
trackers); only its config differs. :func:`student_config` builds it:

* ``data``, ``model``, ``noise``: the teacher's (the student is a network of the teacher's kind,
  distilled over the teacher's noise range, from the teacher's data);
* ``training``: the teacher's (its seed and quality-during-training settings), overlaid with the
  recipe's (steps, learning rate, batch, EMA, checkpoints);
* ``sampling``: the teacher's overlaid with the recipe's (``method: consistency``, ``steps: 2``);
* ``consistency``: the recipe's discretisation, distance and weighting, and the teacher pinned:
  its checkpoint file's URI, SHA-256 and step, which every worker checks.

Recipes are YAML files holding those three sections: a shipped one's name
(``ncsn_ray/configs/distill/<name>.yaml``: ``default``, ``ncsnv2``), a path, or ``auto`` (the
default): ``ncsnv2`` for an NCSNv2 teacher, ``default`` for the others. ``--set`` overrides apply
last.
A teacher that cannot teach is refused by name before anything starts: a network conditioned
on ladder indices (NCSN), a consistency model, a toy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ncsn_core import ConfigError, apply_overrides, config_from_dict
from ncsn_core.config import Config

from .. import configs
from ..console import Log
from ..errors import UserError
from .checkpoints import pin_checkpoint

__all__ = ["RECIPE_DIR", "recipe_path", "recipe_for", "student_config", "DEFAULT_RECIPE"]

RECIPE_DIR = configs.CONFIG_DIR / "distill"
DEFAULT_RECIPE = "auto"
# The shipped recipe ``auto`` picks for a teacher's model.kind (others: ``default``). NCSNv2's
# network is score-parametrised and unconditional: its students sample best re-noising higher.
RECIPE_FOR_KIND = {"ncsnv2": "ncsnv2"}
RECIPE_SECTIONS = ("training", "sampling", "consistency")
TEACHER_KINDS = ("ncsnv2", "mlp", "unet")


def recipe_path(reference: str) -> Path:
    """A shipped recipe's file (a name without ``/`` or ``.yaml``) or the path as given."""
    if "/" not in reference and not reference.endswith((".yaml", ".yml")):
        path = RECIPE_DIR / f"{reference}.yaml"
        if not path.is_file():
            shipped = ", ".join(sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")))
            raise ConfigError(f"no shipped distillation recipe named {reference!r} (shipped: {shipped}; or give the "
                              "path of a YAML file)")
        return path
    return Path(reference)


def recipe_for(reference: str, teacher_kind: str) -> str:
    """``reference`` itself, or for ``auto`` the shipped recipe for a teacher of ``teacher_kind``."""
    return RECIPE_FOR_KIND.get(teacher_kind, "default") if reference == "auto" else reference


def _read_recipe(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the distillation recipe ({err.strerror or err})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict) or not set(raw) <= set(RECIPE_SECTIONS):
        raise ConfigError(f"{path}: a distillation recipe holds only the sections {', '.join(RECIPE_SECTIONS)}")
    for section, value in raw.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {section} must be a mapping")
    return raw


def student_config(teacher_uri: str, recipe: str, overrides: list[str], *, endpoint_url: str | None,
                   log: Log) -> Config:
    """The student's config for the teacher at ``teacher_uri`` (a run folder, checkpoint folder
    or ``.pt`` URI; a run folder means its newest checkpoint) and the recipe, with the teacher
    pinned. Raises :class:`UserError` (or ``ConfigError``/``CheckpointError``) for bad input."""
    teacher, pinned = pin_checkpoint(teacher_uri, endpoint_url=endpoint_url)
    tc = teacher.config
    if tc.is_consistency:
        raise UserError(f"{pinned.uri} is a consistency model already; distil from the score model it came from "
                        f"({tc.consistency.teacher})")
    if tc.model.kind not in TEACHER_KINDS:
        why = ("is conditioned on the index of its trained noise levels and has no score between them, which the "
               "teacher's probability-flow ODE steps need" if tc.model.kind == "ncsn" else "is not an image model")
        raise UserError(f"{pinned.uri}: a teacher of model.kind {tc.model.kind!r} cannot be distilled: it {why}; "
                        f"distil a network that takes any sigma ({', '.join(TEACHER_KINDS)})")
    path = recipe_path(recipe_for(recipe, tc.model.kind))
    raw_recipe = _read_recipe(path)
    raw = tc.to_dict()
    raw["training"] = {**raw["training"], "loss": "dsm", "sigma_draw": "ladder",
                       **raw_recipe.get("training", {})}
    raw["sampling"] = {**raw["sampling"], **raw_recipe.get("sampling", {})}
    raw.pop("inpainting", None)  # a student inpaints with its own (consistency) sampler
    raw["consistency"] = {**raw_recipe.get("consistency", {}), "teacher": pinned.uri,
                          "teacher_sha256": pinned.sha256, "teacher_step": pinned.step}
    raw["name"] = f"{tc.name}-distilled"
    config = config_from_dict(raw, f"{path} on the teacher {pinned.uri}")
    if overrides:
        pinned_keys = [o for o in overrides if o.split("=", 1)[0].strip() in
                       ("consistency.teacher", "consistency.teacher_sha256", "consistency.teacher_step")]
        if pinned_keys:
            raise UserError(f"{', '.join(pinned_keys)}: the teacher is pinned by --checkpoint, not set by hand")
        config = apply_overrides(config, overrides, source=f"{path} with overrides")
    c = config.consistency
    picked = " (auto, for this teacher)" if recipe == "auto" else ""
    log(f"[distill] teacher {pinned.uri} (step {pinned.step}, {tc.model.kind}, {c.teacher_weights} weights); "
        f"recipe {path.name}{picked}: {c.levels} sigmas of the teacher's range, boundary {c.sigma_min:g}, "
        f"{c.distance} distance, {c.weighting} weighting, stop-gradient target")
    return config
