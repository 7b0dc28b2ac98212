"""Training, driver side: check everything that can be checked, then run Ray Train.

``run(TrainOptions(...))`` is what ``jobs/train.py`` calls. Before any worker starts it
checks the config, the dataset (manifest present, image shape as the config says; the
default digits data is prepared into ``runs/data/digits`` if missing), the storage location
(writable) and an existing run's compatibility with the config; any problem is a
:class:`~ncsn_ray.errors.UserError` naming it. Then a ``ray.train.torch.TorchTrainer``
(Train V2) runs :func:`~ncsn_ray.train.loop.train_loop_per_worker` on ``num_workers``
DDP workers (a number, or ``(MIN, MAX)`` for an elastic group that grows and shrinks with
the cluster: :mod:`ncsn_ray.train.elastic`), reading the Parquet shards through Ray Data and
checkpointing into ``{storage}/{name}``. Re-running with the same storage and name resumes.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ncsn_core import apply_overrides, load_config
from ncsn_core.config import check_run_name, resolve_auto
from ncsn_core.config import Config

from .. import configs
from .tracking import parse_tracking
from .checkpoints import list_checkpoints, newest_valid_checkpoint, set_aside
from ..console import Log
from ..data.format import DatasetManifest, dataset_max_distance, read_manifest, verify_shards
from ..errors import UserError, begin_work, preliminary_work
from ..io.layout import DEFAULT_STORAGE, MANIFEST, STOPPED_FILE, default_data_uri, existing_name
from ..cluster import FAKE_GPUS_ENV
from ..io.storage import Storage
from ..data.ingest import fits_in_memory
from ..testing import faults
from .elastic import (DEFAULT_RESIZE_CHECK_S, ELASTIC_MAX_FAILURES, ELASTIC_START_TIMEOUT_S, RoomWatch,
                      describe_workers, is_elastic, worker_range)
from .loop import NonFiniteLossError, WorkerOptions, train_loop_per_worker

__all__ = ["TrainOptions", "run", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = "digits"  # a shipped config (ncsn_ray/configs/digits.yaml)
AUTO_PREPARED = ("digits", "mnist", "cifar10", "celeba", "celeba64")
IMAGE_MODELS = ("ncsn", "ncsnv2", "unet", "mlp")
CACHE_LIMIT_BYTES = 1 << 30  # decoded datasets up to this size train in memory (data_cache "auto")
HEALTH_CHECK_INTERVAL_S = 0.5  # Ray Train controller's poll of its workers, seconds (Ray's default: 2; see _fit)



@dataclass(kw_only=True)
class TrainOptions:
    """What ``jobs/train.py`` asks for; see its ``--help`` for each option."""

    config: str = DEFAULT_CONFIG
    data: str | None = None  # prepared dataset URI (None: the config's data.uri, else runs/data/<dataset>)
    storage: str = DEFAULT_STORAGE
    name: str | None = None  # run name (None: the config's name)
    num_workers: int | tuple[int, int] = 1  # a fixed group, or (MIN, MAX): elastic (ncsn_ray.train.elastic)
    resize_check_s: float = DEFAULT_RESIZE_CHECK_S  # elastic: seconds between Ray's checks for a new group size
    batch_per_worker: int | None = None  # examples a worker holds at once (gradient accumulation); None: its whole share
    eval_every: int | None = None  # score every K-th checkpoint (overrides training.eval_every; 0: never)
    eval_n: int | None = None  # samples per evaluation (overrides training.eval_n)
    eval_metric: str | None = None  # digits | fid (overrides training.eval_metric)
    inception_weights: str | None = None  # for eval_metric fid: a path or URI (default: the torch hub cache)
    use_gpu: bool = False
    cpus_per_worker: float | None = None
    steps: int | None = None
    checkpoint_every: int | None = None
    overrides: list[str] = field(default_factory=list)
    max_failures: int | None = None  # None: 3 for a fixed group, ELASTIC_MAX_FAILURES for an elastic one; -1: no limit
    data_cache: str = "auto"
    endpoint_url: str | None = None
    preview: bool = True
    tracking: str = "tensorboard"  # comma-separated: tensorboard ({run}/tensorboard), mlflow; or none (ncsn_ray.train.tracking)
    placement_strategy: str = "PACK"
    verbose: bool = False  # show Ray Train's own INFO lines
    allow_config_change: bool = False  # resume with other learning settings (lr, batch size, loss, ...)
    teacher: str | None = None  # distil a consistency model from this run or checkpoint (config: the recipe)


def _load_config(options: TrainOptions, log: Log) -> Config:
    """The run's config: the ``--config`` file (or, distilling, the student's config from the
    teacher and the recipe ``--config``), with the options' overrides."""
    overrides = list(options.overrides)
    if options.steps is not None:
        overrides.append(f"training.steps={options.steps}")
    if options.checkpoint_every is not None:
        overrides.append(f"training.checkpoint_every={options.checkpoint_every}")
    for key in ("eval_every", "eval_n", "eval_metric"):
        if getattr(options, key) is not None:
            overrides.append(f"training.{key}={getattr(options, key)}")
    if options.teacher is not None:
        from .distill import student_config

        return student_config(options.teacher, options.config, overrides, endpoint_url=options.endpoint_url, log=log)
    config = load_config(configs.resolve(options.config))
    if overrides:
        config = apply_overrides(config, overrides, source=f"{options.config} with overrides")
    if config.model.kind not in IMAGE_MODELS:
        raise UserError(f"{options.config}: this job trains image models (model.kind: ncsn, ncsnv2, unet or mlp); "
                        "the toy has its own job")
    return config


def _resolve_data(options: TrainOptions, config: Config, log: Log) -> tuple[Storage, DatasetManifest]:
    """The training data and its manifest, preparing the default location if needed."""
    data_uri = options.data or config.data.uri
    default_location = data_uri is None
    if default_location:
        data_uri = str(Path(default_data_uri(config.data.dataset)).resolve())
    data = Storage.from_uri(data_uri, endpoint_url=options.endpoint_url)
    if default_location and existing_name(data, MANIFEST) is None:
        if config.data.dataset not in AUTO_PREPARED:
            raise UserError(f"no dataset given and data.dataset {config.data.dataset!r} cannot be prepared automatically")
        from ..data.prepare import ensure_prepared

        log(f"[train] preparing {config.data.dataset} into {data_uri}")
        with preliminary_work():
            ensure_prepared(config.data.dataset, data_uri, endpoint_url=options.endpoint_url, log=log)
    manifest = read_manifest(data)
    verify_shards(data, manifest)
    expected = (config.data.image_size, config.data.image_size, config.data.channels)
    if (manifest.height, manifest.width, manifest.channels) != expected:
        raise UserError(
            f"{data.uri} holds {manifest.height}x{manifest.width}x{manifest.channels} images but the config "
            f"expects {expected[0]}x{expected[1]}x{expected[2]} (data.image_size, data.channels)"
        )
    return data, manifest


# Training settings a resumed run may change freely (they do not change what is learnt).
OPERATIONAL = {"steps", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every", "eval_n", "eval_metric"}


def _resolve_auto(config: Config, data: Storage, manifest: DatasetManifest, log: Log) -> Config:
    """Replace ``auto`` values by NCSNv2's rules (:func:`ncsn_core.config.resolve_auto`)."""
    distance, over = (None, 0)
    if config.noise.sigma_max == "auto":
        distance, over = dataset_max_distance(data, manifest)
    resolved, chosen = resolve_auto(config, max_distance=distance,
                                    dimension=manifest.channels * manifest.height * manifest.width)
    pretty = ", ".join(f"{key} = {value:.4g}" for key, value in chosen.items())
    log(f"[train] auto settings: {pretty}" + (f" (sigma_max: the largest distance between {over} training images)"
                                               if distance is not None else ""))
    return resolved


def _setting_changes(old: Config, new: Config) -> dict[str, list[Any]]:
    """``{"training.lr": [old, new], ...}``: the learning settings that differ."""
    changes = {}
    for section in ("training", "data"):
        before, after = asdict(getattr(old, section)), asdict(getattr(new, section))
        for key in sorted(set(before) | set(after)):
            if section == "training" and key in OPERATIONAL:
                continue
            if section == "data" and key == "uri":
                continue
            if before.get(key) != after.get(key):
                changes[f"{section}.{key}"] = [before.get(key), after.get(key)]
    return changes


@dataclass
class Resume:
    """What the run resumes from: the step (0: a fresh run), the checkpoint folder the workers
    fall back to, and the learning settings changed since (with ``allow_config_change``)."""

    step: int = 0
    uri: str | None = None
    changes: dict[str, list[Any]] = field(default_factory=dict)


def _check_run_compatible(run: Storage, config: Config, allow_config_change: bool, log: Log) -> Resume:
    """Where the run in ``run`` resumes; refuse a run made with another model, or with other
    learning settings unless ``allow_config_change``. A corrupt newest checkpoint is skipped
    (kept for inspection) in favour of the newest one that verifies."""
    point = newest_valid_checkpoint(run)
    for uri, why in point.corrupt:
        kept = set_aside(run, uri.rstrip("/").rsplit("/", 1)[-1])
        log(f"[train] {uri} is corrupt ({why}); moved to {kept} for inspection, not resumed from")
    if point.checkpoint is None:
        if point.corrupt:
            raise UserError(f"{run.uri}: no checkpoint verifies; move the run aside or use another run name")
        return Resume()
    ckpt = point.checkpoint
    for section in ("model", "noise"):
        if asdict(getattr(ckpt.config, section)) != asdict(getattr(config, section)):
            raise UserError(
                f"{run.uri} holds a run trained with different {section} settings "
                f"({asdict(getattr(ckpt.config, section))}); use another run name or storage location"
            )
    # A consistency model is defined by its teacher's bytes and the distillation, not where the file lies.
    theirs, ours = ({k: v for k, v in asdict(c.consistency).items() if k != "teacher"} for c in (ckpt.config, config))
    if theirs != ours:
        changed = sorted(k for k in ours if theirs.get(k) != ours[k])
        raise UserError(f"{run.uri} holds a run with other consistency settings ({', '.join(changed)} differ"
                        + ("; the teacher's checkpoint is another file than the one it was distilled from"
                           if "teacher_sha256" in changed else "")
                        + "); use another run name, or the teacher checkpoint it was distilled from")
    if (ckpt.config.data.channels, ckpt.config.data.image_size) != (config.data.channels, config.data.image_size):
        raise UserError(f"{run.uri} holds a run on images of another shape; use another run name or storage location")
    changes = _setting_changes(ckpt.config, config)
    if changes and not allow_config_change:
        listing = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
        raise UserError(f"{run.uri} was trained with other settings ({listing}); resuming would change them "
                        "silently. Pass --allow-config-change to resume with the new ones (recorded in metrics.jsonl), "
                        "or use another run name")
    log(f"[train] found checkpoint at step {ckpt.step} in {point.uri}: the run will resume from it"
        + (f" with changed settings {changes}" if changes else ""))
    return Resume(ckpt.step, point.uri, changes)


def _worker_resources(options: TrainOptions, total_cpus: float, streaming: bool, log: Log) -> tuple[float, int]:
    """``(CPUs reserved per worker, torch threads per worker)``.

    When the data streams through Ray Data on a small CPU-only machine, a worker reserves
    less than a whole CPU so that Ray Data keeps one for loading (a trainer whose workers
    reserve every CPU starves its own ingest and hangs); its torch threads still use the
    cores it shares. In-memory training reads its data in the worker and needs no such room.
    An elastic group (whose size, and so its share of the cluster, changes) gives each worker
    as many torch threads as the CPUs it reserves (at least one).
    """
    _, most = worker_range(options.num_workers)
    cpus = options.cpus_per_worker
    if cpus is None:
        cpus = 1.0
        if streaming and not options.use_gpu and total_cpus - most * cpus < 1:
            cpus = max(0.1, (total_cpus - 1) / most) if total_cpus > 1 else 0.5
            log(f"[train] {total_cpus:g} CPUs: reserving {cpus:.2g} CPU per worker to leave room for data loading")
    if options.use_gpu:
        threads = 0
    elif is_elastic(options.num_workers):
        threads = max(1, int(cpus))
    else:
        threads = max(1, int(total_cpus // most))
    return cpus, threads


def _check_evaluation(config: Config, manifest: DatasetManifest, data_uri: str, options: TrainOptions, log: Log) -> None:
    """Evaluations during training that cannot run are bad input, found before any work."""
    tc = config.training
    if tc.eval_every == 0:
        return
    if tc.eval_metric == "digits" and (manifest.channels, manifest.height, manifest.width) != (1, 8, 8):
        raise UserError(f"training.eval_metric digits scores 8x8 grey digits; {data_uri} holds "
                        f"{manifest.channels}x{manifest.height}x{manifest.width} images (use --eval-metric fid)")
    if tc.eval_metric == "fid":
        from ..evaluate.weights import resolve_inception_weights

        resolve_inception_weights(options.inception_weights, endpoint_url=options.endpoint_url, log=log)
    log(f"[train] quality: {tc.eval_metric} of {tc.eval_n} samples at every "
        f"{'' if tc.eval_every == 1 else f'{tc.eval_every}th '}checkpoint (a separate actor; the best is kept in best/)")


def _shares(batch_size: int, num_workers: int | tuple[int, int], batch_per_worker: int | None) -> str:
    """How the global batch is shared, for the start line (e.g. ``"10-11 each, in 2 micro-batches of
    at most 6"``; empty when every worker takes an equal share whole). Every worker count in the
    range must get at least one example; ``batch_per_worker`` must be at least 1.

    Worker ``r`` of ``W`` takes rows ``[floor(r B / W), floor((r + 1) B / W))`` of each global
    batch (:func:`~ncsn_ray.data.global_batches.worker_rows`) and weights its loss by its share,
    so the learning dynamics are the global batch's for every ``W``; with ``batch_per_worker``
    it accumulates its share in ``ceil(share / batch_per_worker)`` near-equal parts."""
    low, high = worker_range(num_workers)
    if high > batch_size:
        raise UserError(f"training.batch_size {batch_size} cannot give each of {high} workers an example; "
                        f"use at most {batch_size} workers or a larger batch")
    if batch_per_worker is not None and batch_per_worker < 1:
        raise UserError(f"--batch-per-worker must be at least 1, got {batch_per_worker}")
    smallest, largest = batch_size // high, -(-batch_size // low)
    if low == high and batch_size % low == 0 and batch_per_worker is None:
        return ""
    text = f"{smallest} each" if smallest == largest else f"{smallest}-{largest} each"
    if batch_per_worker is not None:
        parts = -(-largest // batch_per_worker)
        if parts > 1:
            text += f", in up to {parts} micro-batches of at most {batch_per_worker}"
    return text


def run(options: TrainOptions, *, log: Log = print) -> dict[str, Any]:
    """Train (or resume) the run ``{storage}/{name}``; returns ``{"step", "run", ...}``."""
    low, high = worker_range(options.num_workers)
    if not 1 <= low <= high:
        raise UserError(f"the number of workers must be at least 1 (MIN <= MAX), got {options.num_workers}")
    trackers = parse_tracking(options.tracking)
    tracking_env = {}
    if "mlflow" in trackers:
        from .mlflow_log import check_mlflow_settings

        tracking_env = check_mlflow_settings()
    if options.data_cache not in ("auto", "on", "off"):
        raise UserError(f"data cache must be auto, on or off, got {options.data_cache!r}")
    config = _load_config(options, log)
    name = check_run_name(options.name, "--name") if options.name is not None else config.name
    data, manifest = _resolve_data(options, config, log)
    if config.has_auto():
        config = _resolve_auto(config, data, manifest, log)
    shares = _shares(config.training.batch_size, options.num_workers, options.batch_per_worker)
    for count in range(low, high + 1):  # every worker's data must hold its share of a step
        if manifest.num_rows // count < -(-config.training.batch_size // count):
            raise UserError(
                f"batch size {config.training.batch_size} over {count} worker(s) needs at least "
                f"{-(-config.training.batch_size // count) * count} images; {data.uri} has {manifest.num_rows}"
            )
    _check_evaluation(config, manifest, data.uri, options, log)
    in_memory = fits_in_memory(manifest, options.data_cache, CACHE_LIMIT_BYTES)
    if in_memory:  # the workers read every shard whole: check them against the manifest first
        verify_shards(data, manifest, contents=True)
    run_location = Storage.from_uri(options.storage, endpoint_url=options.endpoint_url).child(name)
    run_location.check_writable()
    resume = _check_run_compatible(run_location, config, options.allow_config_change, log)
    start_step = resume.step
    if start_step >= config.training.steps:
        log(f"[train] {run_location.uri} is already at step {start_step} >= {config.training.steps}: nothing to do")
        return {"step": start_step, "run": run_location.uri, "status": "already complete"}

    from ..cluster import cluster_cpus, init_ray

    started = time.perf_counter()
    begin_work()
    started_ray = init_ray(log=log)
    try:
        cpus, threads = _worker_resources(options, cluster_cpus(), not in_memory, log)
        worker = WorkerOptions(
            run_uri=run_location.uri, endpoint_url=options.endpoint_url,
            use_gpu=options.use_gpu and not os.environ.get(FAKE_GPUS_ENV),
            torch_threads=threads, data_uri=data.uri, in_memory=in_memory, preview=options.preview,
            tracking=trackers, tracking_env=tracking_env,
            verbose=options.verbose, resume_uri=resume.uri, config_changes=resume.changes,
            batch_per_worker=options.batch_per_worker, elastic=is_elastic(options.num_workers),
            inception_weights=options.inception_weights,
        )
        log(f"[train] config {options.config} (name {name}): {config.training.steps} steps, global batch "
            f"{config.training.batch_size} over {describe_workers(options.num_workers)}"
            + (f" ({shares})" if shares else "")
            + (f", {config.training.precision}" if config.training.precision != "fp32" else "")
            + f", data {data.uri} "
            f"({manifest.num_rows} images, {'in memory, step-addressed' if in_memory else 'streamed by Ray Data'}), "
            f"run folder {run_location.uri}")
        if is_elastic(options.num_workers):
            log(f"[train] elastic: the group grows towards {high} workers as nodes join and goes on with fewer (at "
                f"least {low}) when one is lost, each time from the newest checkpoint (checked every "
                f"{options.resize_check_s:g} s; a lost node counts against --max-failures "
                f"{_max_failures(options)})")
        _fit(options, config, name, run_location, data, manifest, worker, cpus, log)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    final = list_checkpoints(run_location)
    step = final[-1][0] if final else start_step
    seconds = time.perf_counter() - started
    log(f"[train] done at step {step} ({seconds:.0f} s); checkpoints in {run_location.uri}")
    return {"step": step, "run": run_location.uri, "status": "complete", "seconds": round(seconds, 1)}


def _max_failures(options: TrainOptions) -> int:
    """``--max-failures``, or its default: 3 for a fixed group, :data:`ELASTIC_MAX_FAILURES` for
    an elastic one (whose lost nodes are failures to Ray); -1 is no limit."""
    if options.max_failures is not None:
        return options.max_failures
    return ELASTIC_MAX_FAILURES if is_elastic(options.num_workers) else 3


def _fit(options: TrainOptions, config: Config, name: str, run_location: Storage, data: Storage,
         manifest: DatasetManifest, worker: WorkerOptions, cpus_per_worker: float, log: Log = print) -> None:
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchConfig, TorchTrainer

    from ..data.ingest import build_train_dataset

    # Ray Train's preemption watcher only logs node drains (recovery from a preempted node
    # works without it), and in Ray 2.60 it logs an error line at every start
    # (ray-project/ray#53727). Off unless the user turns it on.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # Ray Train's controller looks at its workers every HEALTH_CHECK_INTERVAL_S (Ray's default
    # 2 s) and notices a started group, a finished one and a failed worker only then: a job
    # waits about two intervals for nothing. An 8-step job on 2 cores of an AMD EPYC took 21.9 s
    # at 2 s (mean of 3), 19.3 s at 1 s, 18.3 s at 0.5 s (mean of 3), 16.4 s at 0.25 s. The poll is one
    # small RPC per worker; Ray passes the variable on to its controller. Set it to override.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(HEALTH_CHECK_INTERVAL_S))
    low, high = worker_range(options.num_workers)
    if low != high:
        # After a lost node Ray's elastic policy may ask for the old size once more (its view
        # of the nodes is up to 20 s old); placing that group waits this long before Ray
        # retries with the size the remaining nodes hold. Ray's default, 60 s, is lost time
        # at every preemption; the wait covers only placing the group's resources, which the
        # policy has just seen free. Ray passes the variable on to its controller.
        os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(ELASTIC_START_TIMEOUT_S))
    storage = Storage.from_uri(options.storage, endpoint_url=options.endpoint_url)
    # Tests on a simulated cluster: reserve the (declared, not real) GPUs, train on the CPU
    # with gloo (the workers' own device choice is the CPU: ``worker.use_gpu`` is False).
    simulated = options.use_gpu and bool(os.environ.get(FAKE_GPUS_ENV))
    streaming: dict[str, Any] = {}
    if not worker.in_memory:  # the in-memory path reads the shards in the workers: no pipeline to start
        streaming = dict(
            datasets={"train": build_train_dataset(data, manifest)},
            # Our own ingest options (Train's defaults copy a deprecated Ray Data field and warn).
            # One worker reads the whole dataset: no split, so no split-coordinator actor to start.
            dataset_config=ray.train.DataConfig(
                datasets_to_split="all" if worker_range(options.num_workers)[1] > 1 else [],
                execution_options=ExecutionOptions(preserve_order=False),
            ),
        )
    elastic = {"num_workers": (low, high), "elastic_resize_monitor_interval_s": options.resize_check_s} \
        if low != high else {"num_workers": low}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "options": asdict(worker)},
        torch_config=TorchConfig(backend="gloo") if simulated else None,
        scaling_config=ray.train.ScalingConfig(
            **elastic, use_gpu=options.use_gpu,
            resources_per_worker={"CPU": cpus_per_worker}, placement_strategy=options.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=storage.fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.training.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=_max_failures(options)),
            logging_config=ray.train.LoggingConfig(log_level="INFO" if options.verbose else "WARNING"),
            worker_runtime_env=faults.runtime_env(),  # empty unless a reliability test asks for a fault
        ),
        **streaming,
    )
    if run_location.exists(STOPPED_FILE):
        run_location.delete(STOPPED_FILE)  # from an earlier attempt
    watch = RoomWatch(low, {"CPU": cpus_per_worker, **({"GPU": 1.0} if options.use_gpu else {})}, log)
    watch.start()
    try:
        trainer.fit()
    finally:
        watch.stop()
    if run_location.exists(STOPPED_FILE):
        raise NonFiniteLossError(run_location.read_json(STOPPED_FILE)["error"])
