"""Generation: ``n`` samples (seeds ``seed .. seed + n - 1``) from a checkpoint into a sample set.

``run(GenerateOptions(...))`` is what ``jobs/generate.py`` calls. Seeds are the rows; a
shard of seeds is the unit of work (:mod:`ncsn_ray.sample.job`). The shard plan depends
only on ``n``, the first seed, the shard size and the batch size (all recorded in the job
spec), never on how many actors run it, so the same command gives the same bytes on one
actor or many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import UserError
from ..io.figures import decode_png, image_grid
from ..io.layout import GRID, STRIP, default_samples_uri
from .actors import GenerateShards
from .job import SampleJob, SamplingOptions, actor_kwargs, execute, job_info, manifest_extra, resolve_sampling
from .sample_set import GENERATE_SCHEMA, WorkUnit, first_rows, plan_units, recorded_identity
from ..io.storage import Storage

__all__ = ["GenerateOptions", "run", "default_shard_size", "GRID_IMAGES", "MAX_SHARD_SIZE"]

GRID_IMAGES = 64
MAX_SHARD_SIZE = 1000
SHARDS_PER_ACTOR = 4  # default shard size: about this many shards per planned actor (balances the tail)


@dataclass(kw_only=True)
class GenerateOptions(SamplingOptions):
    """Options of ``jobs/generate.py`` (generation mode): ``n`` samples, plus the shared ones.
    ``trajectory`` K > 0 also draws ``_annealing.png``: the first 8 samples forming over K
    frames (paper Fig. 4)."""

    n: int
    trajectory: int = 0


def default_shard_size(n: int, batch_size: int, actors: int) -> int:
    """About :data:`SHARDS_PER_ACTOR` shards per actor, each a whole number of batches, at
    most :data:`MAX_SHARD_SIZE` seeds (and at least one batch).

    The bytes do not depend on the choice: with shards made of whole batches, every batch is
    the same run of ``batch_size`` consecutive seeds whatever the shard size, so the default
    may follow the machine. It is recorded in the job spec and reused when the job resumes.
    """
    per_shard = math.ceil(n / (SHARDS_PER_ACTOR * max(1, actors)))
    whole_batches = math.ceil(per_shard / batch_size) * batch_size
    largest = max(batch_size, MAX_SHARD_SIZE // batch_size * batch_size)
    return max(batch_size, min(largest, whole_batches))


def figure_scale(height: int) -> int:
    """Nearest-neighbour upscaling for figures: small images become about 48 px tall."""
    return max(1, 48 // max(1, height))


def write_grid(out: Storage, units: list[WorkUnit], channels: int) -> dict[str, Any]:
    """``_grid.png``: the first :data:`GRID_IMAGES` samples, in seed order."""
    rows = first_rows(out, units, GENERATE_SCHEMA, GRID_IMAGES)
    images = np.stack([decode_png(row["image"], channels) for row in rows])
    out.write_png(GRID, image_grid(images, scale=figure_scale(images.shape[1])))
    return {"grid": GRID}


def run(options: GenerateOptions, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate ``options.n`` samples into ``options.out``; returns a summary dict.

    Everything that can be checked before Ray starts is checked first (arguments, the
    checkpoint, the output folder).
    """
    if options.n < 1:
        raise UserError(f"the number of samples must be at least 1, got {options.n}")
    if options.trajectory == 1 or options.trajectory < 0:
        raise UserError(f"an annealing strip needs at least 2 frames, got {options.trajectory}")
    setup = resolve_sampling(options)
    out = Storage.from_uri(options.out or default_samples_uri(setup.checkpoint_uri), endpoint_url=setup.endpoint_url)
    recorded = recorded_identity(out) or {}
    shard_size = (options.shard_size or recorded.get("shard_size")
                  or default_shard_size(options.n, setup.batch_size, options.actors.planned_size()))
    units = plan_units("generate", options.n, shard_size, offset=options.seed)
    identity = {
        "checkpoint": setup.pinned.identity(),
        "sampler": setup.settings.to_dict(),
        "n": options.n,
        "seed": options.seed,
        "batch_size": setup.batch_size,
        "shard_size": shard_size,
        "image_shape": list(setup.image_shape),
    }
    s = setup.settings
    job = SampleJob(
        kind="generate",
        out=out,
        units=units,
        identity=identity,
        info=job_info(setup, options.actors),
        total=options.n,
        unit_label="samples",
        actor_cls=GenerateShards,
        actor_kwargs={**actor_kwargs(setup, out, options), "strip_frames": options.trajectory,
                      "first_seed": options.seed},
        start_line=(
            f"checkpoint {setup.pinned.uri} (step {setup.pinned.step}, sha256 {setup.pinned.sha256[:12]}), "
            f"{options.n} samples of {setup.image_shape} into {out.uri}; {s.describe(setup.num_levels)}, "
            f"batch {setup.batch_size}, {len(units)} shard(s) of {shard_size}"
        ),
        write_figures=lambda folder, all_units: {**write_grid(folder, all_units, setup.image_shape[0]),
                                                 **({"annealing": STRIP} if folder.exists(STRIP) else {})},
        manifest_extra=manifest_extra(setup),
    )
    return execute(job, setup, options.actors, log=log)
