"""Batch generation and inpainting with Ray Data: seeds are rows, a shard is the unit of work.

Pipeline (both modes)::

    ray.data.from_items(<one descriptor per missing shard>)      driver, tiny rows
      .map_batches(<callable class>, batch_size=1,               one shard per call
                   compute=ActorPoolStrategy(...),               actors hold the model
                   num_cpus=..., num_gpus=...)
      .iter_rows()                                               driver: one status row per shard -> progress

Each actor loads the checkpoint once (in ``__init__``), samples its shard in fixed batches,
and writes the shard as one Parquet object straight to storage; the driver only sees small
status records. The driver writes ``job.json`` before and ``manifest.json`` after (see
:mod:`ncsn_ray.samples`).

Determinism: the image for seed ``s`` uses :class:`ncsn_core.PerSampleNoise` (one generator
seeded with ``s``) for both its initial sample and every Langevin step, and the batch it is
computed in is fixed by the seed ranges (``shard_size``, then ``batch_size``), so the bytes
depend on the seed, the checkpoint and the settings, never on the number of actors or the
order in which shards run (same hardware and threads per actor assumed: a GPU and a CPU
give slightly different floats).

Checkpoint pinning: the driver resolves the ``--checkpoint`` URI (run folder -> newest
checkpoint) to one file and records its SHA-256; actors load that file and check the digest,
so a checkpoint written by a training job mid-generation cannot mix into one sample set.

Resources: every actor asks for ``cpus_per_actor`` CPUs (default 1) and, with ``use_gpu``,
one GPU. The default pool has ``max(1, (CPUs - 1) // cpus_per_actor)`` actors, one per GPU
with ``use_gpu``: on a 2-core machine that is one actor, leaving a CPU for Ray Data's own
tasks (an actor pool that reserves every CPU can starve them and hang).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ncsn_core import (
    CheckpointError,
    ConfigError,
    PerSampleNoise,
    annealed_langevin,
    annealed_langevin_inpaint,
    apply_overrides,
    initial_samples,
    load_checkpoint,
    make_mask,
    make_score_fn,
)
from ncsn_core.checkpoint import Checkpoint
from ncsn_core.config import Config
from ncsn_core.inpainting import MASK_KINDS

from .checkpoints import read_checkpoint_bytes
from .datasets import SCHEMA as DATASET_SCHEMA
from .datasets import DatasetError, DatasetManifest, read_manifest
from .figures import decode_png, image_grid, png_bytes, to_uint8
from .samples import (
    GENERATE_SCHEMA,
    INPAINT_SCHEMA,
    SampleSetError,
    WorkUnit,
    finished_units,
    make_job_spec,
    open_sample_set,
    plan_units,
    write_manifest,
    write_table,
)
from .storage import Storage, StorageError, endpoint_from_env

__all__ = [
    "GenerationError",
    "SamplerSettings",
    "PinnedCheckpoint",
    "Sampler",
    "ActorPlan",
    "GenerateOptions",
    "InpaintOptions",
    "pin_checkpoint",
    "override_sampling",
    "generate_samples",
    "inpaint_images",
    "ensure_ray",
    "default_run_uri",
    "USER_ERRORS",
]

DEFAULT_RUN = "runs/digits"  # jobs/train.py defaults: storage "runs", run name = config name
GRID_IMAGES = 64
FIGURE_ROWS = 8
OCCLUDED_FILL = 0.5  # unknown pixels are shown mid-grey in the occluded images
LOG_PREFIX = "[generate]"


class GenerationError(RuntimeError):
    """A generation or inpainting job that cannot run as asked; the message says why."""


# Errors a user can cause and fix; the CLI prints them without a traceback and exits 2.
USER_ERRORS = (GenerationError, SampleSetError, CheckpointError, ConfigError, DatasetError, StorageError)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SamplerSettings:
    """Everything about the sampler that decides the pixels (all recorded in the job spec).

    ``eps`` follows the paper's step convention (``alpha_i = eps * sigma_i^2 / sigma_L^2``,
    see :mod:`ncsn_core.sampling`); ``clamp`` clamps to ``[0, 1]`` after every step;
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, config: Config, *, use_ema: bool = True) -> "SamplerSettings":
        s = config.sampling
        return cls(s.steps_per_level, s.eps, s.init, s.final_denoise, s.clamp, s.precision, s.compile, use_ema)


def override_sampling(config: Config, overrides: list[str] | None = None, *, steps_per_level: int | None = None) -> Config:
    """The config with ``sampling.key=value`` overrides applied (and re-validated).

    Only the ``sampling`` section may change (the rest describes the trained model);
    anything else raises :class:`ncsn_core.ConfigError`.
    """
    items = list(overrides or [])
    for item in items:
        if not item.strip().startswith("sampling."):
            raise ConfigError(f"--set {item!r}: only sampling.* settings can be changed at generation time")
    if steps_per_level is not None:
        items.append(f"sampling.steps_per_level={int(steps_per_level)}")
    return apply_overrides(config, items, "--set") if items else config


@dataclass(frozen=True)
class PinnedCheckpoint:
    """One checkpoint *file* and its SHA-256: what every actor of a job loads."""

    uri: str
    sha256: str
    step: int

    def identity(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "step": self.step}


def pin_checkpoint(uri: str, *, endpoint_url: str | None = None) -> tuple[Checkpoint, PinnedCheckpoint]:
    """Resolve a run folder / checkpoint folder / ``.pt`` URI to one file, load and verify it."""
    data, location = read_checkpoint_bytes(uri, endpoint_url=endpoint_url)
    checkpoint = load_checkpoint(data, name=location.uri)
    if checkpoint.config.model.kind != "ncsn":
        raise CheckpointError(
            f"{location.uri}: a {checkpoint.config.model.kind!r} model; generation needs an image model (ncsn)"
        )
    return checkpoint, PinnedCheckpoint(location.uri, hashlib.sha256(data).hexdigest(), checkpoint.step)


def load_pinned(pinned: PinnedCheckpoint, *, endpoint_url: str | None = None) -> Checkpoint:
    """Load the pinned file, refusing it if its bytes changed since the driver pinned it."""
    try:
        data = Storage.from_uri(pinned.uri, endpoint_url=endpoint_url).read_bytes()
    except StorageError as err:
        raise CheckpointError(str(err)) from err
    if hashlib.sha256(data).hexdigest() != pinned.sha256:
        raise CheckpointError(f"{pinned.uri}: the checkpoint file changed while the job was running")
    return load_checkpoint(data, name=pinned.uri)


def default_run_uri() -> str:
    """The default training run folder (``runs/digits``, relative to the current directory)."""
    return DEFAULT_RUN


def run_name(checkpoint_uri: str) -> str:
    """``digits`` for ``runs/digits``, ``runs/digits/checkpoint_000003`` or ``.../checkpoint.pt``."""
    parts = [p for p in checkpoint_uri.rstrip("/").split("/") if p]
    while parts and (parts[-1].endswith(".pt") or parts[-1].startswith("checkpoint_")):
        parts.pop()
    return parts[-1] if parts else "samples"


# --------------------------------------------------------------------------- the sampler


def _device(use_gpu: bool) -> torch.device:
    if use_gpu:
        if not torch.cuda.is_available():
            raise GenerationError("use_gpu is set but this worker sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


class Sampler:
    """A checkpoint's network plus sampler settings, loaded once; seeds in, uint8 images out.

    Shapes: ``sample(seeds)`` returns ``(len(seeds), H, W, C)`` uint8; ``inpaint`` takes
    ``known`` ``(B, C, H, W)`` floats in ``[0, 1]`` and a bool ``mask`` of the same shape
    (True = known pixel) and returns ``(B, H, W, C)`` uint8.
    """

    def __init__(self, checkpoint: Checkpoint, settings: SamplerSettings, device: torch.device | str = "cpu"):
        self.settings = settings
        self.device = torch.device(device)
        model = checkpoint.build_model(use_ema=settings.use_ema, device=self.device)
        self.score_fn = make_score_fn(model, precision=settings.precision, compile=settings.compile)
        self.sigmas = checkpoint.sigmas.to(self.device)
        cfg = checkpoint.config.data
        self.shape = (cfg.channels, cfg.image_size, cfg.image_size)  # (C, H, W)
        self._clamp = (0.0, 1.0) if settings.clamp else None

    def _start(self, seeds: list[int]) -> tuple[torch.Tensor, PerSampleNoise]:
        noise = PerSampleNoise(seeds, self.shape, device=self.device)
        x0 = initial_samples(
            (len(seeds), *self.shape), kind=self.settings.init, sigma_max=float(self.sigmas[0]), noise=noise
        )
        return x0, noise

    def sample(self, seeds: list[int]) -> np.ndarray:
        x0, noise = self._start(seeds)
        s = self.settings
        x = annealed_langevin(
            self.score_fn,
            x0,
            self.sigmas,
            steps_per_level=s.steps_per_level,
            eps=s.eps,
            final_denoise=s.final_denoise,
            clamp=self._clamp,
            noise=noise,
        )
        return to_uint8(x)

    def inpaint(self, seeds: list[int], known: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        x0, noise = self._start(seeds)
        x = annealed_langevin_inpaint(
            self.score_fn,
            x0,
            self.sigmas,
            known=known.to(self.device),
            mask=mask.to(self.device),
            steps_per_level=self.settings.steps_per_level,
            eps=self.settings.eps,
            clamp=self._clamp,
            noise=noise,
        )
        return to_uint8(x)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _status(unit_name: str, count: int, started: float) -> dict[str, np.ndarray]:
    return {
        "name": np.array([unit_name]),
        "count": np.array([count], dtype=np.int64),
        "seconds": np.array([time.perf_counter() - started]),
        "pid": np.array([os.getpid()], dtype=np.int64),
    }


class _ShardActor:
    """Shared set-up of the Ray Data callable classes: model, output storage, fault injection."""

    def __init__(
        self,
        *,
        checkpoint: dict[str, Any],
        settings: dict[str, Any],
        batch_size: int,
        out_uri: str,
        endpoint_url: str | None,
        use_gpu: bool,
        threads: int,
        fail_after_shards: int | None = None,
    ):
        if not use_gpu:
            torch.set_num_threads(max(1, threads))
        pinned = PinnedCheckpoint(**checkpoint)
        self.sampler = Sampler(load_pinned(pinned, endpoint_url=endpoint_url), SamplerSettings(**settings), _device(use_gpu))
        self.batch_size = batch_size
        self.out = Storage.from_uri(out_uri, endpoint_url=endpoint_url)
        self.endpoint_url = endpoint_url
        self.fail_after_shards = fail_after_shards
        self.shards_written = 0

    def _written(self) -> None:
        self.shards_written += 1
        if self.fail_after_shards is not None and self.shards_written >= self.fail_after_shards:
            raise RuntimeError(f"injected failure after {self.shards_written} shard(s) (--fail-after-shards, testing)")


class GenerateShards(_ShardActor):
    """Ray Data callable class: one descriptor row (a seed range) in, one status row out.

    Input batch columns: ``name``, ``first``, ``last`` (inclusive seed range). Output:
    ``name``, ``count``, ``seconds``, ``pid``. The shard is written to storage as one object.
    """

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (name,), (first,), (last,) = batch["name"], batch["first"], batch["last"]
        started = time.perf_counter()
        seeds = list(range(int(first), int(last) + 1))
        images = [img for chunk in _chunks(seeds, self.batch_size) for img in self.sampler.sample(chunk)]
        table = pa.table(
            {"seed": pa.array(seeds, pa.int64()), "image": pa.array([png_bytes(i) for i in images], pa.binary())},
            schema=GENERATE_SCHEMA,
        )
        write_table(self.out, str(name), table)
        self._written()
        return _status(str(name), len(seeds), started)


def inpaint_seed(seed: int, source_id: int, k: int) -> int:
    """The seed of inpainting ``k`` of source image ``source_id``: a hash, independent of K."""
    digest = hashlib.sha256(f"ncsn-inpaint:{seed}:{source_id}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def image_mask(kind: str, shape: tuple[int, int, int], *, seed: int, source_id: int, file_mask: np.ndarray | None) -> torch.Tensor:
    """The ``(C, H, W)`` bool known-pixel mask for one source image (random masks seeded per id)."""
    c, h, w = shape
    if file_mask is not None:
        return torch.from_numpy(file_mask).view(1, h, w).expand(c, h, w).clone()
    generator = torch.Generator().manual_seed(inpaint_seed(seed, source_id, -1))
    return make_mask(kind, (1, c, h, w), generator=generator)[0]


class InpaintShards(_ShardActor):
    """Ray Data callable class for inpainting: rows ``[start, stop)`` of the source dataset.

    Input batch columns: ``name``, ``start``, ``stop`` (row positions in the dataset's shard
    order). Constructor extras: the dataset URI, its shard list, the mask and K.
    """

    def __init__(self, *, data_uri: str, data_shards: list[dict[str, Any]], mask: dict[str, Any], samples_per_image: int, seed: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.data = Storage.from_uri(data_uri, endpoint_url=self.endpoint_url)
        self.data_shards = data_shards
        self.offsets = np.cumsum([0] + [s["num_rows"] for s in data_shards])
        self.mask_kind = mask["kind"]
        self.file_mask = None if mask.get("array") is None else np.asarray(mask["array"], dtype=bool)
        self.k = samples_per_image
        self.seed = seed
        self._cache: tuple[int, pa.Table] | None = None

    def _shard_table(self, index: int) -> pa.Table:
        if self._cache is None or self._cache[0] != index:
            data = self.data.read_bytes(self.data_shards[index]["path"])
            self._cache = (index, pq.read_table(io.BytesIO(data), schema=DATASET_SCHEMA))
        return self._cache[1]

    def _rows(self, start: int, stop: int) -> tuple[list[int], list[bytes]]:
        ids: list[int] = []
        pngs: list[bytes] = []
        for index in range(len(self.data_shards)):
            lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
            if hi <= start or lo >= stop:
                continue
            table = self._shard_table(index).slice(max(start, lo) - lo, min(stop, hi) - max(start, lo))
            ids += table.column("id").to_pylist()
            pngs += table.column("image").to_pylist()
        return ids, pngs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (name,), (start,), (stop,) = batch["name"], batch["start"], batch["stop"]
        started = time.perf_counter()
        shape = self.sampler.shape
        ids, pngs = self._rows(int(start), int(stop))
        originals = torch.from_numpy(np.stack([decode_png(b, shape[0]) for b in pngs])).permute(0, 3, 1, 2).float() / 255
        masks = torch.stack(
            [image_mask(self.mask_kind, shape, seed=self.seed, source_id=i, file_mask=self.file_mask) for i in ids]
        )
        pairs = [(r, k) for r in range(len(ids)) for k in range(self.k)]
        results: dict[tuple[int, int], np.ndarray] = {}
        for chunk in _chunks(pairs, self.batch_size):
            rows = [r for r, _ in chunk]
            seeds = [inpaint_seed(self.seed, ids[r], k) for r, k in chunk]
            images = self.sampler.inpaint(seeds, originals[rows], masks[rows])
            results.update(zip(chunk, images))
        occluded = torch.where(masks, originals, torch.full_like(originals, OCCLUDED_FILL))
        mask_u8 = to_uint8(masks[:, :1].float())
        table = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "seeds": pa.array([[inpaint_seed(self.seed, i, k) for k in range(self.k)] for i in ids], pa.list_(pa.int64())),
                "mask": pa.array([png_bytes(m) for m in mask_u8], pa.binary()),
                "occluded": pa.array([png_bytes(o) for o in to_uint8(occluded)], pa.binary()),
                "inpaintings": pa.array(
                    [[png_bytes(results[(r, k)]) for k in range(self.k)] for r in range(len(ids))], pa.list_(pa.binary())
                ),
                "original": pa.array(pngs, pa.binary()),
            },
            schema=INPAINT_SCHEMA,
        )
        write_table(self.out, str(name), table)
        self._written()
        return _status(str(name), len(ids), started)


# --------------------------------------------------------------------------- Ray plumbing


def ensure_ray(*, num_cpus: int | None = None, object_store_memory: int = 300 * 1024**2) -> bool:
    """Start or join Ray (see :func:`ncsn_ray.raycluster.init_ray`); True if this call started it.

    On a laptop the embedded instance gets ``num_cpus`` (default: all cores) and a modest
    object store: only small status rows pass through it.
    """
    from .raycluster import init_ray

    return init_ray(num_cpus=num_cpus or os.cpu_count() or 1, object_store_memory=object_store_memory,
                    log=lambda *a: None)


@dataclass
class ActorPlan:
    """How many sampling actors, and what each reserves.

    ``num_actors``: a fixed pool; ``min_actors``/``max_actors``: an autoscaling pool; neither:
    one actor per GPU (``use_gpu``) or ``max(1, (CPUs - 1) // cpus_per_actor)`` actors.
    """

    num_actors: int | None = None
    min_actors: int | None = None
    max_actors: int | None = None
    use_gpu: bool = False
    cpus_per_actor: float = 1.0

    def validate(self) -> None:
        if self.num_actors is not None and (self.min_actors is not None or self.max_actors is not None):
            raise GenerationError("give either --num-actors or --min-actors/--max-actors, not both")
        for name in ("num_actors", "min_actors", "max_actors"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise GenerationError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if (self.min_actors is None) != (self.max_actors is None):
            raise GenerationError("--min-actors and --max-actors go together")
        if self.min_actors is not None and self.min_actors > self.max_actors:
            raise GenerationError("--min-actors must not exceed --max-actors")
        if not self.cpus_per_actor > 0:
            raise GenerationError(f"--cpus-per-actor must be positive, got {self.cpus_per_actor}")
        if self.use_gpu and not os.environ.get("RAY_ADDRESS") and not torch.cuda.is_available():
            raise GenerationError("--use-gpu: this machine has no CUDA GPU (and no RAY_ADDRESS names a cluster)")

    def strategy(self, pending: int):
        """The ``ActorPoolStrategy`` for ``pending`` shards (never more actors than shards).

        One shard in flight per actor: shards are long, and queueing more on one actor while
        another idles would only unbalance the tail of the job.
        """
        import ray

        if self.min_actors is not None:
            hi = max(1, min(self.max_actors, pending))
            lo = min(self.min_actors, hi)
            return ray.data.ActorPoolStrategy(min_size=lo, max_size=hi, max_tasks_in_flight_per_actor=1), f"{lo}-{hi}"
        size = self.num_actors
        if size is None:
            resources = ray.cluster_resources()
            if self.use_gpu:
                size = int(resources.get("GPU", 0))
                if size < 1:
                    raise GenerationError("--use-gpu: the cluster has no GPU now; give --num-actors or --min/--max-actors")
            else:
                size = max(1, int((resources.get("CPU", 1) - 1) // self.cpus_per_actor))
        size = max(1, min(size, pending))
        return ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1), str(size)

    def remote_args(self) -> dict[str, Any]:
        return {"num_cpus": self.cpus_per_actor, **({"num_gpus": 1} if self.use_gpu else {})}


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """Prints ``done/total``, throughput and time left as shards complete (driver side)."""

    def __init__(self, total: int, done: int, unit: str, log: Callable[[str], None], prefix: str = LOG_PREFIX):
        self.total, self.done, self.unit, self.log, self.prefix = total, done, unit, log, prefix
        self.fresh = 0
        self.started = time.perf_counter()
        self.actor_seconds = 0.0  # time spent inside the actors' calls (sampling, encoding, writing)
        self.actors: set[int] = set()  # process ids of the actors that returned shards

    def stats(self) -> dict[str, Any]:
        return {"actor_seconds": round(self.actor_seconds, 3), "actors_used": len(self.actors)}

    def update(self, count: int) -> None:
        self.done += count
        self.fresh += count
        elapsed = time.perf_counter() - self.started
        rate = self.fresh / elapsed if elapsed > 0 else float("nan")
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        self.log(
            f"{self.prefix} {self.done}/{self.total} {self.unit} ({100.0 * self.done / self.total:.1f}%), "
            f"{rate:.2f} {self.unit}/s, {_format_seconds(left)} left"
        )


def _run_pipeline(
    actor_cls: type,
    constructor_kwargs: dict[str, Any],
    pending: list[WorkUnit],
    plan: ActorPlan,
    progress: Progress,
    log: Callable[[str], None],
) -> None:
    """Run the actor pool over the pending shards, starting (and then stopping) Ray if needed."""
    import ray

    started_ray = ensure_ray()
    try:
        if plan.use_gpu and ray.cluster_resources().get("GPU", 0) < 1:
            if started_ray and not os.environ.get("RAY_ADDRESS"):
                raise GenerationError("--use-gpu: Ray sees no GPU on this machine; drop --use-gpu to sample on CPUs")
            log(f"{progress.prefix} the cluster has no GPU right now: waiting for the autoscaler to add GPU nodes")
        _execute(actor_cls, constructor_kwargs, pending, plan, progress, log)
    finally:
        if started_ray:
            ray.shutdown()


def _execute(
    actor_cls: type,
    constructor_kwargs: dict[str, Any],
    pending: list[WorkUnit],
    plan: ActorPlan,
    progress: Progress,
    log: Callable[[str], None],
) -> None:
    import ray
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # the driver prints its own progress lines
    items = [{"name": u.name, "start": u.start, "stop": u.stop, "first": u.first, "last": u.last} for u in pending]
    strategy, size = plan.strategy(len(pending))
    log(f"{progress.prefix} {len(pending)} shard(s) to compute on {size} actor(s) ({plan.remote_args()} each)")
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        actor_cls,
        batch_size=1,
        compute=strategy,
        fn_constructor_kwargs=constructor_kwargs,
        **plan.remote_args(),
    )
    for row in dataset.iter_rows():
        progress.update(int(row["count"]))
        progress.actor_seconds += float(row["seconds"])
        progress.actors.add(int(row["pid"]))


def _endpoint(endpoint_url: str | None) -> str | None:
    return endpoint_url or endpoint_from_env()


# --------------------------------------------------------------------------- generation


@dataclass
class GenerateOptions:
    """Options of ``jobs/generate.py`` (generation mode); see its ``--help``."""

    n: int
    checkpoint: str | None = None
    out: str | None = None
    seed: int = 0
    batch_size: int | None = None  # default: the checkpoint config's sampling.batch_size
    shard_size: int = 1000
    steps_per_level: int | None = None
    use_ema: bool = True
    overrides: list[str] = field(default_factory=list)
    actors: ActorPlan = field(default_factory=ActorPlan)
    endpoint_url: str | None = None
    fail_after_shards: int | None = None  # testing: actors raise after this many shards


def _common_checks(n: int, seed: int, shard_size: int, batch_size: int | None, what: str = "--n") -> None:
    if n < 1:
        raise GenerationError(f"{what} must be at least 1, got {n}")
    if seed < 0:
        raise GenerationError(f"--seed must be non-negative, got {seed}")
    if shard_size < 1:
        raise GenerationError(f"--shard-size must be at least 1, got {shard_size}")
    if batch_size is not None and batch_size < 1:
        raise GenerationError(f"--batch-size must be at least 1, got {batch_size}")


def _constructor_kwargs(pinned: PinnedCheckpoint, settings: SamplerSettings, batch_size: int, out: Storage, endpoint: str | None, plan: ActorPlan, fail_after: int | None) -> dict[str, Any]:
    return {
        "checkpoint": asdict(pinned),
        "settings": settings.to_dict(),
        "batch_size": batch_size,
        "out_uri": out.uri,
        "endpoint_url": endpoint,
        "use_gpu": plan.use_gpu,
        "threads": max(1, int(round(plan.cpus_per_actor))),
        "fail_after_shards": fail_after,
    }


def generate_samples(options: GenerateOptions, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate ``options.n`` samples (seeds ``seed .. seed + n - 1``) into ``options.out``.

    Everything that can be checked before Ray starts is checked first (arguments, the
    checkpoint, the output folder). Returns a summary dict (``status`` is ``"complete"``,
    or ``"already complete"`` when the job had finished before).
    """
    _common_checks(options.n, options.seed, options.shard_size, options.batch_size)
    options.actors.validate()
    endpoint = _endpoint(options.endpoint_url)
    checkpoint_uri = options.checkpoint or default_run_uri()
    if options.checkpoint is None and not Storage.from_uri(checkpoint_uri).exists():
        raise GenerationError(
            f"no --checkpoint given and the default training run {checkpoint_uri!r} does not exist "
            "(train first with `python jobs/train.py`, or pass --checkpoint URI)"
        )
    checkpoint, pinned = pin_checkpoint(checkpoint_uri, endpoint_url=endpoint)
    config = override_sampling(checkpoint.config, options.overrides, steps_per_level=options.steps_per_level)
    settings = SamplerSettings.from_config(config, use_ema=options.use_ema)
    batch_size = options.batch_size or config.sampling.batch_size
    out = Storage.from_uri(options.out or f"runs/samples/{run_name(checkpoint_uri)}", endpoint_url=endpoint)
    cfg = checkpoint.config.data
    image_shape = (cfg.channels, cfg.image_size, cfg.image_size)
    units = plan_units("generate", options.n, options.shard_size, offset=options.seed)
    identity = {
        "checkpoint": pinned.identity(),
        "sampler": settings.to_dict(),
        "n": options.n,
        "seed": options.seed,
        "batch_size": batch_size,
        "shard_size": options.shard_size,
        "image_shape": list(image_shape),
    }
    spec = make_job_spec("generate", identity, _job_info(pinned, options.actors))
    state = open_sample_set(out, spec)
    summary = {"out": out.uri, "checkpoint": pinned.uri, "step": pinned.step, "n": options.n}
    if state == "complete":
        log(f"{LOG_PREFIX} {out.uri} already holds this complete sample set ({options.n} samples): nothing to do")
        return {**summary, "status": "already complete", "computed": 0}
    done = finished_units(out, units)
    pending = [u for u in units if u.name not in done]
    done_count = sum(u.count for u in units if u.name in done)
    log(
        f"{LOG_PREFIX} checkpoint {pinned.uri} (step {pinned.step}, sha256 {pinned.sha256[:12]}), "
        f"{options.n} samples of {image_shape} into {out.uri}; T={settings.steps_per_level}, eps={settings.eps:g}, "
        f"batch {batch_size}, shards of {options.shard_size}"
        + (f"; resuming: {len(done)}/{len(units)} shards already done" if state == "resume" else "")
    )
    started = time.perf_counter()
    stats: dict[str, Any] = {}
    if pending:
        kwargs = _constructor_kwargs(pinned, settings, batch_size, out, endpoint, options.actors, options.fail_after_shards)
        progress = Progress(options.n, done_count, "samples", log)
        _run_pipeline(GenerateShards, kwargs, pending, options.actors, progress, log)
        stats = progress.stats()
    _write_grid(out, units, image_shape[0])
    extra = {"grid": "grid.png", **_manifest_extra(pinned, checkpoint, settings)}
    manifest = write_manifest(out, spec, units, image_shape=image_shape, extra=extra)
    seconds = time.perf_counter() - started
    log(f"{LOG_PREFIX} done: {manifest['count']} samples in {out.uri} ({seconds:.1f} s this run); manifest written")
    computed = sum(u.count for u in pending)
    return {**summary, "status": "complete", "computed": computed, "seconds": round(seconds, 3), **stats}


def _job_info(pinned: PinnedCheckpoint, plan: ActorPlan) -> dict[str, Any]:
    """Job-spec ``info`` (not compared on re-runs): where the checkpoint was, when, versions."""
    import importlib.metadata

    try:
        ray_version = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        ray_version = "?"
    return {
        "checkpoint_uri": pinned.uri,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": "cuda" if plan.use_gpu else "cpu",
        "torch": torch.__version__,
        "ray": ray_version,
    }


def _manifest_extra(pinned: PinnedCheckpoint, checkpoint: Checkpoint, settings: SamplerSettings) -> dict[str, Any]:
    """Top-level manifest fields for readers: which checkpoint (and weights) and sampler."""
    weights = "ema" if settings.use_ema and checkpoint.ema_state is not None else "model"
    return {"checkpoint": {**asdict(pinned), "weights": weights}, "sampler": settings.to_dict()}


def _first_rows(out: Storage, units: list[WorkUnit], schema: pa.Schema, count: int) -> list[dict[str, Any]]:
    """The first ``count`` rows of the sample set, reading as few shards as needed."""
    rows: list[dict[str, Any]] = []
    for unit in units:
        if len(rows) >= count:
            break
        table = pq.read_table(io.BytesIO(out.read_bytes(unit.name)), schema=schema)
        rows += table.slice(0, count - len(rows)).to_pylist()
    return rows


def _write_grid(out: Storage, units: list[WorkUnit], channels: int) -> None:
    """``grid.png``: the first :data:`GRID_IMAGES` samples, in seed order."""
    rows = _first_rows(out, units, GENERATE_SCHEMA, GRID_IMAGES)
    images = np.stack([decode_png(row["image"], channels) for row in rows])
    _write_png(out, "grid.png", image_grid(images, scale=_figure_scale(images.shape[1])))


def _figure_scale(height: int) -> int:
    return max(1, 48 // max(1, height))


def _write_png(out: Storage, name: str, image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    out.write_bytes(name, buffer.getvalue())


# --------------------------------------------------------------------------- inpainting


@dataclass
class InpaintOptions:
    """Options of ``jobs/generate.py --mode inpaint``; see its ``--help``."""

    data: str
    checkpoint: str | None = None
    out: str | None = None
    mask: str = "half"  # half | center | random | URI of a PNG (non-zero = known pixel)
    samples_per_image: int = 4
    limit: int | None = None
    seed: int = 0
    batch_size: int | None = None
    shard_size: int = 100
    steps_per_level: int | None = None
    use_ema: bool = True
    overrides: list[str] = field(default_factory=list)
    actors: ActorPlan = field(default_factory=ActorPlan)
    endpoint_url: str | None = None
    fail_after_shards: int | None = None


def load_mask_file(uri: str, height: int, width: int, *, endpoint_url: str | None = None) -> np.ndarray:
    """A PNG mask as ``(H, W)`` bool, True = known pixel (any non-zero value in any channel)."""
    try:
        data = Storage.from_uri(uri, endpoint_url=endpoint_url).read_bytes()
    except StorageError as err:
        raise GenerationError(f"--mask {uri}: cannot read the mask file ({err})") from err
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise GenerationError(f"--mask {uri}: not a readable image ({err})") from err
    if arr.shape != (height, width):
        raise GenerationError(
            f"--mask {uri}: the mask is {arr.shape[1]}x{arr.shape[0]} (W x H) but the images are {width}x{height}"
        )
    known = arr > 0
    if known.all() or not known.any():
        raise GenerationError(f"--mask {uri}: the mask must have both known (non-zero) and unknown (zero) pixels")
    return known


def _mask_spec(mask: str, height: int, width: int, endpoint: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(actor mask argument, job-spec identity)`` for a mask kind or a mask file."""
    if mask in MASK_KINDS:
        return {"kind": mask, "array": None}, {"kind": mask}
    array = load_mask_file(mask, height, width, endpoint_url=endpoint)
    digest = hashlib.sha256(np.packbits(array).tobytes() + str(array.shape).encode()).hexdigest()
    return {"kind": "file", "array": array}, {"kind": "file", "sha256": digest}


def inpaint_images(options: InpaintOptions, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Inpaint the first ``limit`` images of a prepared dataset, K times each (paper Fig. 6)."""
    if options.samples_per_image < 1:
        raise GenerationError(f"--samples-per-image must be at least 1, got {options.samples_per_image}")
    if options.limit is not None and options.limit < 1:
        raise GenerationError(f"--limit must be at least 1, got {options.limit}")
    _common_checks(1, options.seed, options.shard_size, options.batch_size)
    options.actors.validate()
    endpoint = _endpoint(options.endpoint_url)
    data = Storage.from_uri(options.data, endpoint_url=endpoint)
    dataset: DatasetManifest = read_manifest(data)
    checkpoint_uri = options.checkpoint or default_run_uri()
    checkpoint, pinned = pin_checkpoint(checkpoint_uri, endpoint_url=endpoint)
    cfg = checkpoint.config.data
    image_shape = (cfg.channels, cfg.image_size, cfg.image_size)
    if (dataset.channels, dataset.height, dataset.width) != image_shape:
        raise GenerationError(
            f"{data.uri}: images are {dataset.channels}x{dataset.height}x{dataset.width} (CxHxW) but the checkpoint "
            f"models {image_shape[0]}x{image_shape[1]}x{image_shape[2]}"
        )
    total = min(options.limit or dataset.num_rows, dataset.num_rows)
    if total < 1:
        raise GenerationError(f"{data.uri}: the dataset has no rows")
    config = override_sampling(checkpoint.config, options.overrides, steps_per_level=options.steps_per_level)
    settings = SamplerSettings.from_config(config, use_ema=options.use_ema)
    mask_arg, mask_identity = _mask_spec(options.mask, image_shape[1], image_shape[2], endpoint)
    batch_size = options.batch_size or config.sampling.batch_size
    out = Storage.from_uri(options.out or f"runs/inpaint/{run_name(checkpoint_uri)}", endpoint_url=endpoint)
    units = plan_units("inpaint", total, options.shard_size)
    shards = [asdict(s) for s in dataset.shards]
    identity = {
        "checkpoint": pinned.identity(),
        "sampler": settings.to_dict(),
        "data": {"name": dataset.name, "num_rows": dataset.num_rows, "shards": shards},
        "images": total,
        "samples_per_image": options.samples_per_image,
        "mask": mask_identity,
        "seed": options.seed,
        "batch_size": batch_size,
        "shard_size": options.shard_size,
        "image_shape": list(image_shape),
    }
    info = {**_job_info(pinned, options.actors), "data_uri": data.uri, "mask_uri": None if options.mask in MASK_KINDS else options.mask}
    spec = make_job_spec("inpaint", identity, info)
    state = open_sample_set(out, spec)
    summary = {"out": out.uri, "checkpoint": pinned.uri, "step": pinned.step, "images": total}
    if state == "complete":
        log(f"{LOG_PREFIX} {out.uri} already holds these inpaintings ({total} images): nothing to do")
        return {**summary, "status": "already complete", "computed": 0}
    done = finished_units(out, units)
    pending = [u for u in units if u.name not in done]
    log(
        f"{LOG_PREFIX} inpainting {total} images of {data.uri} ({options.mask} mask, K={options.samples_per_image}) "
        f"with {pinned.uri} (step {pinned.step}) into {out.uri}"
        + (f"; resuming: {len(done)}/{len(units)} shards already done" if state == "resume" else "")
    )
    started = time.perf_counter()
    if pending:
        kwargs = _constructor_kwargs(pinned, settings, batch_size, out, endpoint, options.actors, options.fail_after_shards)
        kwargs.update(
            data_uri=data.uri, data_shards=shards, mask=mask_arg, samples_per_image=options.samples_per_image, seed=options.seed
        )
        progress = Progress(total, sum(u.count for u in units if u.name in done), "images", log)
        _run_pipeline(InpaintShards, kwargs, pending, options.actors, progress, log)
    _write_inpaint_figure(out, units, image_shape[0])
    extra = {"figure": "figure.png", **_manifest_extra(pinned, checkpoint, settings)}
    manifest = write_manifest(out, spec, units, image_shape=image_shape, extra=extra)
    seconds = time.perf_counter() - started
    log(f"{LOG_PREFIX} done: {manifest['count']} images inpainted x{options.samples_per_image} in {out.uri}; manifest written")
    return {**summary, "status": "complete", "computed": sum(u.count for u in pending), "seconds": round(seconds, 3)}


def _write_inpaint_figure(out: Storage, units: list[WorkUnit], channels: int) -> None:
    """``figure.png``, the paper's Fig. 6 layout: one row per image, occluded | K inpaintings | original."""
    rows = _first_rows(out, units, INPAINT_SCHEMA, FIGURE_ROWS)
    tiles = [decode_png(png, channels) for row in rows for png in [row["occluded"], *row["inpaintings"], row["original"]]]
    images = np.stack(tiles)
    ncol = len(rows[0]["inpaintings"]) + 2
    _write_png(out, "figure.png", image_grid(images, nrow=ncol, scale=_figure_scale(images.shape[1])))
