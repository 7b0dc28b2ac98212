"""The one driver behind generation and inpainting: resolve inputs, open the sample set,
compute the missing shards on the actor pool, draw the figure, write the manifest last.

:func:`resolve_sampling` checks what both jobs share (seed, batch and shard sizes, actors)
and pins the checkpoint; each job then describes itself as a :class:`SampleJob` (its shard
plan, identity, actor class and figure) and :func:`execute` runs it. Re-running a finished
job does nothing; re-running an interrupted one computes only the missing shards; another
job into the same folder is refused (:mod:`ncsn_ray.sample.sample_set`).
"""

from __future__ import annotations

import importlib.metadata
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ncsn_core.checkpoint import Checkpoint
from ncsn_core.config import resolve_auto

from ..console import Log
from ..train.checkpoints import PinnedCheckpoint, pin_checkpoint
from ..train.evaluation import BEST_FOLDER, BEST_SCORE, read_best
from ..errors import UserError, begin_work
from ..io.layout import default_run_uri
from .pipeline import ActorPlan, Progress, run_pipeline
from .sampler import SamplerSettings, override_sampling
from .sample_set import FolderState, WorkUnit, finished_units, make_job_spec, open_sample_set, write_manifest
from ..io.storage import Storage, endpoint_from_env, utc_timestamp

__all__ = ["SamplingOptions", "SamplingSetup", "SampleJob", "resolve_sampling", "execute", "LOG_PREFIX"]

LOG_PREFIX = "[generate]"


@dataclass(kw_only=True)
class SamplingOptions:
    """What generation and inpainting share.

    ``checkpoint``: run folder (newest checkpoint), checkpoint folder or ``.pt`` URI; None:
    the default training run. ``out``: the sample-set folder (None: a default under
    ``runs/``). ``batch_size``: images per sampler call (None: the checkpoint config's
    ``sampling.batch_size``). ``shard_size``: work per shard (None: a default from the job
    size). ``steps_per_level`` overrides T; ``overrides`` are ``sampling.key=value`` strings.
    ``pick``: of a run folder, its newest checkpoint or the best-scored one (``best/``).
    """

    checkpoint: str | None = None
    out: str | None = None
    seed: int = 0
    batch_size: int | None = None
    shard_size: int | None = None
    steps_per_level: int | None = None
    use_ema: bool | None = None  # None: the config's sampling.ema
    overrides: list[str] = field(default_factory=list)
    actors: ActorPlan = field(default_factory=ActorPlan)
    endpoint_url: str | None = None
    pick: str = "newest"  # of a run folder: its newest checkpoint, or the best-scored one (best/, train --eval-every)


@dataclass
class SamplingSetup:
    """The resolved common inputs of a sampling job."""

    checkpoint_uri: str
    checkpoint: Checkpoint
    pinned: PinnedCheckpoint
    settings: SamplerSettings
    batch_size: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    endpoint_url: str | None
    picked: dict[str, Any] | None = None  # with pick "best": the evaluation record of the chosen checkpoint

    @property
    def num_levels(self) -> int:
        """L, the levels of the checkpoint's noise ladder."""
        return int(self.checkpoint.sigmas.numel())

    def nfe_per_sample(self, *, inpaint: bool = False) -> int:
        """Network evaluations per sample (per inpainting with ``inpaint``) of the settings on
        this checkpoint."""
        return self.settings.nfe_per_sample(self.num_levels, inpaint=inpaint)


@dataclass
class SampleJob:
    """One sampling job, as :func:`execute` runs it."""

    kind: str  # "generate" | "inpaint" (the sample-set kind)
    out: Storage
    units: list[WorkUnit]
    identity: dict[str, Any]  # decides the output; compared on re-runs
    info: dict[str, Any]  # recorded, not compared
    total: int
    unit_label: str  # what a unit of progress is: "samples" | "images"
    actor_cls: type
    actor_kwargs: dict[str, Any]
    start_line: str
    write_figures: Callable[[Storage, list[WorkUnit]], dict[str, Any]]  # -> extra manifest fields
    manifest_extra: dict[str, Any] = field(default_factory=dict)


def resolve_sampling(options: SamplingOptions, *, inpaint: bool = False) -> SamplingSetup:
    """Check the shared options and pin the checkpoint (reads it once, verifies it).
    ``inpaint``: the sampler is the config's ``inpainting`` settings over ``sampling``'s, and
    ``options.overrides`` over both."""
    if options.seed < 0:
        raise UserError(f"seed must be non-negative, got {options.seed}")
    if options.shard_size is not None and options.shard_size < 1:
        raise UserError(f"shard size must be at least 1, got {options.shard_size}")
    if options.batch_size is not None and options.batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {options.batch_size}")
    if options.steps_per_level is not None and options.steps_per_level < 1:
        raise UserError(f"steps per level must be at least 1, got {options.steps_per_level}")
    options.actors.validate()
    endpoint = options.endpoint_url or endpoint_from_env()
    checkpoint_uri = options.checkpoint or default_run_uri()
    if options.checkpoint is None and not Storage.from_uri(checkpoint_uri).exists():
        raise UserError(
            f"no checkpoint given and the default training run {checkpoint_uri!r} does not exist "
            "(train one first, or name a checkpoint)"
        )
    picked, pin_uri = None, checkpoint_uri
    if options.pick == "best":
        run = Storage.from_uri(checkpoint_uri, endpoint_url=endpoint)
        picked = read_best(run)
        if picked is None:
            raise UserError(f"{run.uri}: no evaluated checkpoint to pick ({BEST_FOLDER}/{BEST_SCORE} is missing); "
                            "train with --eval-every K, or drop --pick best")
        pin_uri = run.child(BEST_FOLDER).uri  # the job's default output still follows the run's name
    elif options.pick != "newest":
        raise UserError(f"pick must be newest or best, got {options.pick!r}")
    checkpoint, pinned = pin_checkpoint(pin_uri, endpoint_url=endpoint)
    if checkpoint.config.model.kind == "toy_mlp":
        raise UserError(f"{pinned.uri}: a toy model; sampling jobs need an image model")
    config = checkpoint.config.for_inpainting() if inpaint else checkpoint.config
    config = override_sampling(config, options.overrides, steps_per_level=options.steps_per_level)
    if options.steps_per_level is not None and config.sampling.method != "annealed_langevin":
        raise UserError(f"--steps-per-level sets annealed Langevin's T; sampling.method={config.sampling.method} "
                        "takes its number of sigmas from sampling.steps (e.g. --set sampling.steps=6)")
    data = checkpoint.config.data
    if config.has_auto():  # sampling.eps=auto: technique 4 for the checkpoint's ladder and this T
        config, _ = resolve_auto(config, max_distance=None, dimension=data.channels * data.image_size**2)
    return SamplingSetup(
        checkpoint_uri=checkpoint_uri,
        checkpoint=checkpoint,
        pinned=pinned,
        settings=SamplerSettings.from_config(config, use_ema=options.use_ema),  # None: sampling.ema
        batch_size=options.batch_size or config.sampling.batch_size,
        image_shape=(data.channels, data.image_size, data.image_size),
        endpoint_url=endpoint,
        picked=picked,
    )


def job_info(setup: SamplingSetup, plan: ActorPlan) -> dict[str, Any]:
    """The job spec's ``info`` (not compared on re-runs): where the checkpoint was, when, versions."""
    try:
        ray_version = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        ray_version = "?"
    return {
        "checkpoint_uri": setup.pinned.uri,
        "created_at": utc_timestamp(),
        "device": "cuda" if plan.use_gpu else "cpu",
        "torch": torch.__version__,
        "ray": ray_version,
    }


def actor_kwargs(setup: SamplingSetup, out: Storage, options: SamplingOptions) -> dict[str, Any]:
    """Constructor arguments every shard actor takes (see :mod:`ncsn_ray.sample.actors`)."""
    return {
        "checkpoint": setup.pinned.to_dict(),
        "settings": setup.settings.to_dict(),
        "batch_size": setup.batch_size,
        "out_uri": out.uri,
        "endpoint_url": setup.endpoint_url,
        "use_gpu": options.actors.use_gpu,
        "threads": options.actors.threads_per_actor,
    }


def manifest_extra(setup: SamplingSetup, *, inpaint: bool = False) -> dict[str, Any]:
    """Top-level manifest fields for readers: which checkpoint (and weights) and sampler, and
    its network evaluations per sample (per inpainting with ``inpaint``)."""
    weights = "ema" if setup.settings.use_ema and setup.checkpoint.ema_state is not None else "model"
    extra = {"checkpoint": {**setup.pinned.to_dict(), "weights": weights}, "sampler": setup.settings.to_dict(),
             "nfe_per_sample": setup.nfe_per_sample(inpaint=inpaint)}
    if setup.picked is not None:
        extra["picked"] = {"by": setup.picked["metric"], "score": setup.picked["score"], "step": setup.picked["step"]}
    return extra


def execute(job: SampleJob, setup: SamplingSetup, plan: ActorPlan, *, log: Log = print) -> dict[str, Any]:
    """Run a sampling job to completion; returns a summary (``status`` ``"complete"`` or
    ``"already complete"``, ``computed``: units computed by this run)."""
    spec = make_job_spec(job.kind, job.identity, job.info)
    state = open_sample_set(job.out, spec)
    summary = {"out": job.out.uri, "checkpoint": setup.pinned.uri, "step": setup.pinned.step, job.unit_label: job.total}
    if state is FolderState.COMPLETE:
        log(f"{LOG_PREFIX} {job.out.uri} already holds this complete set ({job.total} {job.unit_label}): nothing to do")
        return {**summary, "status": "already complete", "computed": 0}
    done = finished_units(job.out, job.units)
    pending = [u for u in job.units if u.name not in done]
    resuming = f"; resuming: {len(done)}/{len(job.units)} shards already done" if state is FolderState.RESUME else ""
    log(f"{LOG_PREFIX} {job.start_line}{resuming}")
    started = time.perf_counter()
    stats: dict[str, Any] = {}
    if pending:
        progress = Progress(job.total, sum(u.count for u in job.units if u.name in done), job.unit_label, log,
                            LOG_PREFIX)
        run_pipeline(job.actor_cls, job.actor_kwargs, pending, plan, progress, log)  # begins the work
        stats = progress.stats()
    begin_work()
    extra = job.write_figures(job.out, job.units)
    manifest = write_manifest(job.out, spec, job.units, image_shape=setup.image_shape,
                              extra={**extra, **job.manifest_extra})
    seconds = time.perf_counter() - started
    log(f"{LOG_PREFIX} done: {manifest['count']} {job.unit_label} in {job.out.uri} ({seconds:.1f} s this run); "
        "manifest written")
    computed = sum(u.count for u in pending)
    return {**summary, "status": "complete", "computed": computed, "seconds": round(seconds, 3), **stats}
