"""The training job behind ``jobs/train.py``: arguments, up-front validation, Ray Train.

Everything that can be checked before workers start is checked here, and fails with one
clear line and exit status 1 (2 for usage errors): the config, the dataset (manifest
present, image shape as the config says), the storage location (writable), and an existing
run's compatibility with the config.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from ncsn_core import ConfigError, apply_overrides, load_config
from ncsn_core.checkpoint import CheckpointError

from .checkpoints import list_checkpoints, load_checkpoint_uri
from .datasets import DatasetError, read_manifest
from .storage import Storage, StorageError
from .training import TrainOptions, train_loop_per_worker

__all__ = ["build_parser", "main", "JobError"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "jobs" / "configs" / "digits.yaml"
DEFAULT_STORAGE = "runs"


class JobError(RuntimeError):
    """An expected failure: printed as one line, exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jobs/train.py",
        description="Train a Noise Conditional Score Network with Ray Train (DDP). With no arguments: the digits "
        "config, digits prepared into runs/data/digits if missing, embedded Ray, CPU workers, local storage in runs/.",
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="config YAML (default: jobs/configs/digits.yaml)")
    p.add_argument("--data", default=None, help="prepared dataset URI (default: data.uri of the config, else runs/data/<dataset>)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="where runs live: s3://bucket/prefix, gs://..., or a local path (default: runs)")
    p.add_argument("--name", default=None, help="run name (default: the config's name); re-running with the same storage and name resumes")
    p.add_argument("--num-workers", type=int, default=1, help="training workers (DDP ranks), default 1")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL backend")
    p.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs reserved per worker (default: 1, less if the cluster is too small to leave a CPU for data loading)")
    p.add_argument("--steps", type=int, default=None, help="total optimiser steps of the run (overrides training.steps)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (overrides training.checkpoint_every)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--max-failures", type=int, default=3, help="worker failures to recover from (from the latest checkpoint), default 3")
    p.add_argument("--data-cache", choices=["auto", "on", "off"], default="auto", help="keep each worker's decoded data shard in memory (auto: if under 1 GiB)")
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL (MinIO, Ceph, R2); default: AWS_ENDPOINT_URL")
    p.add_argument("--no-preview", action="store_true", help="skip the sample grid written at each checkpoint")
    p.add_argument("--placement-strategy", choices=["PACK", "SPREAD"], default="PACK",
                   help="PACK workers onto few nodes (default) or SPREAD them across nodes")
    p.add_argument("--inject-failure-at-step", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--debug-rank-digests", action="store_true", help=argparse.SUPPRESS)
    return p


def _check_run_compatible(run: Storage, config, endpoint_url: str | None, log) -> int:
    """Step of the newest checkpoint in ``run`` (0 if none); refuse a run made with another model."""
    checkpoints = list_checkpoints(run)
    if not checkpoints:
        return 0
    ckpt, uri = load_checkpoint_uri(run.uri, endpoint_url=endpoint_url)
    for section in ("model", "noise"):
        if asdict(getattr(ckpt.config, section)) != asdict(getattr(config, section)):
            raise JobError(
                f"{run.uri} holds a run trained with different {section} settings "
                f"({asdict(getattr(ckpt.config, section))}); use another --name or --storage"
            )
    if (ckpt.config.data.channels, ckpt.config.data.image_size) != (config.data.channels, config.data.image_size):
        raise JobError(f"{run.uri} holds a run on images of another shape; use another --name or --storage")
    log(f"[train] found checkpoint at step {ckpt.step} in {uri}: the run will resume from it")
    return ckpt.step


def _resolve_data(args, config, log):
    """``(Storage, manifest)`` of the training data, preparing the default location if needed."""
    data_uri = args.data or config.data.uri
    default_location = data_uri is None
    if default_location:
        data_uri = str(Path(DEFAULT_STORAGE, "data", config.data.dataset).resolve())
    data = Storage.from_uri(data_uri, endpoint_url=args.s3_endpoint)
    if default_location and not data.is_file("manifest.json"):
        if config.data.dataset not in ("digits", "mnist", "cifar10", "celeba"):
            raise JobError(f"no --data given and data.dataset {config.data.dataset!r} cannot be prepared automatically")
        from .prepare import ensure_prepared

        log(f"[train] preparing {config.data.dataset} into {data_uri}")
        ensure_prepared(config.data.dataset, data_uri, endpoint_url=args.s3_endpoint, log=log)
    manifest = read_manifest(data)
    expected = (config.data.image_size, config.data.image_size, config.data.channels)
    if (manifest.height, manifest.width, manifest.channels) != expected:
        raise JobError(
            f"{data.uri} holds {manifest.height}x{manifest.width}x{manifest.channels} images but the config "
            f"expects {expected[0]}x{expected[1]}x{expected[2]} (data.image_size, data.channels)"
        )
    return data, manifest


def run(args: argparse.Namespace, log=print) -> dict:
    if args.num_workers < 1:
        raise JobError("--num-workers must be at least 1")
    config = load_config(args.config)
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"training.steps={args.steps}")
    if args.checkpoint_every is not None:
        overrides.append(f"training.checkpoint_every={args.checkpoint_every}")
    if overrides:
        config = apply_overrides(config, overrides, source=f"{args.config} with --set/--steps")
    if config.model.kind != "ncsn":
        raise JobError(f"{args.config}: jobs/train.py trains image models (model.kind: ncsn); use jobs/toy.py for the toy")
    name = args.name or config.name
    data, manifest = _resolve_data(args, config, log)
    per_worker = config.training.batch_size // args.num_workers
    if per_worker < 1 or manifest.num_rows // args.num_workers < per_worker:
        raise JobError(
            f"batch size {config.training.batch_size} over {args.num_workers} worker(s) needs at least "
            f"{max(per_worker, 1) * args.num_workers} images; {data.uri} has {manifest.num_rows}"
        )
    storage = Storage.from_uri(args.storage, endpoint_url=args.s3_endpoint)
    run_location = storage.child(name)
    run_location.check_writable()
    start_step = _check_run_compatible(run_location, config, args.s3_endpoint, log)
    if start_step >= config.training.steps:
        log(f"[train] {run_location.uri} is already at step {start_step} >= {config.training.steps}: nothing to do")
        return {"step": start_step, "run": run_location.uri}

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from .raycluster import cluster_cpus, init_ray
    from .train_data import build_train_dataset

    init_ray(log=log)
    total_cpus = cluster_cpus()
    cpus_per_worker = args.cpus_per_worker
    if cpus_per_worker is None:
        cpus_per_worker = 1.0
        if not args.use_gpu and total_cpus - args.num_workers * cpus_per_worker < 1:
            cpus_per_worker = max(0.1, (total_cpus - 1) / args.num_workers) if total_cpus > 1 else 0.5
            log(f"[train] {total_cpus:g} CPUs: reserving {cpus_per_worker:.2g} CPU per worker to leave room for data loading")
    torch_threads = 0 if args.use_gpu else max(1, int(total_cpus // args.num_workers))
    options = TrainOptions(
        run_uri=run_location.uri,
        endpoint_url=args.s3_endpoint,
        use_gpu=args.use_gpu,
        torch_threads=torch_threads,
        cache_data=args.data_cache,
        inject_failure_at_step=args.inject_failure_at_step,
        preview=not args.no_preview,
        rank_digests=args.debug_rank_digests,
    )
    log(f"[train] config {args.config} (name {name}): {config.training.steps} steps, global batch "
        f"{config.training.batch_size} over {args.num_workers} worker(s), data {data.uri} ({manifest.num_rows} images), "
        f"run folder {run_location.uri}")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "options": asdict(options), "manifest": {"num_rows": manifest.num_rows}},
        scaling_config=ray.train.ScalingConfig(
            num_workers=args.num_workers, use_gpu=args.use_gpu, resources_per_worker={"CPU": cpus_per_worker},
            placement_strategy=args.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=storage.fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.training.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=args.max_failures),
        ),
        datasets={"train": build_train_dataset(data, manifest)},
    )
    try:
        result = trainer.fit()
    except Exception as err:  # Ray wraps worker errors; show the cause in one place
        raise JobError(f"training failed: {_root_message(err)}") from err
    final = list_checkpoints(run_location)
    step = final[-1][0] if final else start_step
    log(f"[train] done at step {step}; checkpoints in {run_location.uri}")
    return {"step": step, "run": run_location.uri, "result": str(getattr(result, "path", ""))}


def _root_message(err: BaseException) -> str:
    text = str(err)
    for marker in ("NonFiniteLossError: ", "ValueError: ", "CheckpointError: "):
        if marker in text:
            return text.split(marker, 1)[1].splitlines()[0]
    return text.strip().splitlines()[-1] if text.strip() else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ConfigError, DatasetError, StorageError, CheckpointError, JobError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
