"""Inpainting (paper Appendix B.3, Fig. 6): the first images of a prepared dataset, K times each.

``run(InpaintOptions(...))`` is what ``jobs/generate.py --mode inpaint`` calls. Units are
rows of the dataset (positions in its shard order); each (image id, k) has its own seed, so
the result does not depend on K, the shard size or the actor count for a given pair.

The sampler is the checkpoint config's own: its ``inpainting`` settings over its ``sampling``
ones (the digits default inpaints with a predictor-corrector where it generates with EDM),
then any ``--set sampling.*`` flag over both. A fast one holds the known pixels at every noise level it reaches
(:class:`ncsn_core.inpainting.KnownPixels`) at generation's cost in network evaluations;
``--set sampling.method=annealed_langevin`` inpaints as the paper does (``L T`` evaluations).
On 8x8 grey images the job scores the set (:mod:`ncsn_ray.evaluate.inpaint_quality`: label
agreement, diversity, known-pixel change), prints the scores and writes ``_scores.json``
after the shards and before the manifest, which stays last.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from ..data.format import read_manifest, verify_shards
from ..errors import UserError
from ..evaluate import inpaint_quality
from ..io.figures import decode_png, image_grid
from .generate import figure_scale
from ..io.layout import FIGURE, SCORES, default_samples_uri
from .actors import InpaintShards
from .job import (LOG_PREFIX, SampleJob, SamplingOptions, SamplingSetup, actor_kwargs, execute, job_info,
                  manifest_extra, resolve_sampling)
from .sampler import MASK_KINDS, load_mask_file
from .sample_set import INPAINT_SCHEMA, WorkUnit, first_rows, plan_units, recorded_identity
from ..io.storage import Storage, utc_timestamp

__all__ = ["InpaintOptions", "run", "FIGURE_ROWS", "default_shard_size"]

FIGURE_ROWS = 8
MAX_SHARD_SIZE = 100
TARGET_SHARDS = 8


@dataclass(kw_only=True)
class InpaintOptions(SamplingOptions):
    """``data``: a prepared dataset URI; ``mask``: ``half``, ``center``, ``random`` or the URI
    of a PNG whose non-zero pixels are known; ``samples_per_image``: K; ``limit``: inpaint
    only the first M images; ``renoise``: when the known pixels get fresh noise, once per
    level (NCSN) or before every step (NCSNv2)."""

    data: str
    mask: str = "half"
    samples_per_image: int = 4
    limit: int | None = None
    renoise: str = "level"  # "level": NCSN (Appendix B.3); "step": NCSNv2's code (annealed Langevin only)


def default_shard_size(total: int, samples_per_image: int, batch_size: int) -> int:
    """Images per shard: about ``total / 8``, at most :data:`MAX_SHARD_SIZE`, and at least
    enough images to fill one sampler batch of (image, k) pairs (``ceil(batch_size / K)``),
    so that a job whose completions fit in one batch is one shard (computed in the job's
    own process when no cluster is named) and shards do not sample half-empty batches."""
    spread = min(MAX_SHARD_SIZE, math.ceil(total / TARGET_SHARDS))
    return max(1, spread, min(MAX_SHARD_SIZE, math.ceil(batch_size / samples_per_image)))


def _mask_spec(mask: str, height: int, width: int, endpoint: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(actor mask argument, job-spec identity)`` for a mask kind or a mask file."""
    if mask in MASK_KINDS:
        return {"kind": mask, "array": None}, {"kind": mask}
    array = load_mask_file(mask, height, width, endpoint_url=endpoint)
    digest = hashlib.sha256(np.packbits(array).tobytes() + str(array.shape).encode()).hexdigest()
    return {"kind": "file", "array": array}, {"kind": "file", "sha256": digest}


def write_figure(out: Storage, units: list[WorkUnit], channels: int) -> dict[str, Any]:
    """``_figure.png``, the paper's Fig. 6 layout: one row per image, occluded | K inpaintings | original."""
    rows = first_rows(out, units, INPAINT_SCHEMA, FIGURE_ROWS)
    tiles = [decode_png(png, channels) for row in rows for png in [row["occluded"], *row["inpaintings"], row["original"]]]
    images = np.stack(tiles)
    out.write_png(FIGURE, image_grid(images, nrow=len(rows[0]["inpaintings"]) + 2, scale=figure_scale(images.shape[1])))
    return {"figure": FIGURE}


def write_scores(out: Storage, units: list[WorkUnit], setup: SamplingSetup, *, mask: str,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """On 8x8 grey images: score the finished shards (:mod:`~ncsn_ray.evaluate.inpaint_quality`),
    print the scores and write ``_scores.json``; returns the manifest's ``scores`` and
    ``inpaint_quality`` fields (nothing for other images). Called after the shards, before the
    manifest."""
    if not inpaint_quality.applies(setup.image_shape):
        return {}
    manifest = {"channels": setup.image_shape[0], "height": setup.image_shape[1], "width": setup.image_shape[2],
                "shards": [{"path": unit.name} for unit in units]}
    scores = inpaint_quality.score_set(out, manifest)
    log(f"{LOG_PREFIX} inpainting quality ({scores['n_images']} images x {scores['samples_per_image']}, {mask} mask, "
        f"{setup.nfe_per_sample(inpaint=True)} NFE each): {inpaint_quality.summary_line(scores)}")
    metrics = inpaint_quality.metrics_of(scores)
    out.write_json(SCORES, {"metrics": metrics, "samples": out.uri, "num_samples": scores["n_images"],
                            "samples_per_image": scores["samples_per_image"], "mask": mask,
                            "image_shape": list(setup.image_shape), "sampler": setup.settings.to_dict(),
                            "nfe_per_sample": setup.nfe_per_sample(inpaint=True), "evaluated_at": utc_timestamp()})
    return {"scores": SCORES, "inpaint_quality": metrics}


def run(options: InpaintOptions, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Inpaint the first ``limit`` images of a prepared dataset, K times each; a summary dict."""
    if options.samples_per_image < 1:
        raise UserError(f"samples per image must be at least 1, got {options.samples_per_image}")
    if options.limit is not None and options.limit < 1:
        raise UserError(f"the image limit must be at least 1, got {options.limit}")
    if options.renoise not in ("level", "step"):
        raise UserError(f"renoise must be level or step, got {options.renoise!r}")
    setup = resolve_sampling(options, inpaint=True)
    if setup.settings.fast and options.renoise != "level":
        raise UserError(f"--renoise {options.renoise} is annealed Langevin's; sampling.method={setup.settings.method} "
                        "draws fresh noise for the known pixels after every update: drop --renoise, or add "
                        "--set sampling.method=annealed_langevin")
    data = Storage.from_uri(options.data, endpoint_url=setup.endpoint_url)
    dataset = read_manifest(data)
    verify_shards(data, dataset)
    c, h, w = setup.image_shape
    if (dataset.channels, dataset.height, dataset.width) != setup.image_shape:
        raise UserError(
            f"{data.uri}: images are {dataset.channels}x{dataset.height}x{dataset.width} (CxHxW) but the checkpoint "
            f"models {c}x{h}x{w}"
        )
    total = min(options.limit or dataset.num_rows, dataset.num_rows)
    if total < 1:
        raise UserError(f"{data.uri}: the dataset has no rows")
    mask_arg, mask_identity = _mask_spec(options.mask, h, w, setup.endpoint_url)
    out = Storage.from_uri(options.out or default_samples_uri(setup.checkpoint_uri, "inpaint"),
                           endpoint_url=setup.endpoint_url)
    recorded = recorded_identity(out) or {}
    shard_size = (options.shard_size or recorded.get("shard_size")
                  or default_shard_size(total, options.samples_per_image, setup.batch_size))
    units = plan_units("inpaint", total, shard_size)
    shards = [asdict(s) for s in dataset.shards]
    identity = {
        "checkpoint": setup.pinned.identity(),
        "sampler": setup.settings.to_dict(),
        "data": {"name": dataset.name, "num_rows": dataset.num_rows, "shards": shards},
        "images": total,
        "samples_per_image": options.samples_per_image,
        "mask": mask_identity,
        **({"renoise": options.renoise} if options.renoise != "level" else {}),  # sets before the option: level
        "seed": options.seed,
        "batch_size": setup.batch_size,
        "shard_size": shard_size,
        "image_shape": list(setup.image_shape),
    }
    info = {**job_info(setup, options.actors), "data_uri": data.uri,
            "mask_uri": None if options.mask in MASK_KINDS else options.mask}
    kwargs = {**actor_kwargs(setup, out, options), "data_uri": data.uri, "data_shards": shards, "mask": mask_arg,
              "samples_per_image": options.samples_per_image, "seed": options.seed, "renoise": options.renoise}
    job = SampleJob(
        kind="inpaint",
        out=out,
        units=units,
        identity=identity,
        info=info,
        total=total,
        unit_label="images",
        actor_cls=InpaintShards,
        actor_kwargs=kwargs,
        start_line=(
            f"inpainting {total} images of {data.uri} ({options.mask} mask, K={options.samples_per_image}) "
            f"with {setup.pinned.uri} (step {setup.pinned.step}) into {out.uri}; "
            f"{setup.settings.describe(setup.num_levels, inpaint=True)}, batch {setup.batch_size}, "
            f"{len(units)} shard(s) of {shard_size} images"
        ),
        write_figures=lambda folder, all_units: {**write_figure(folder, all_units, c),
                                                 **write_scores(folder, all_units, setup, mask=options.mask, log=log)},
        manifest_extra=manifest_extra(setup, inpaint=True),
    )
    return execute(job, setup, options.actors, log=log)
