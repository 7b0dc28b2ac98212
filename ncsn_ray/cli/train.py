"""Train a Noise Conditional Score Network with Ray Train (DDP), checkpointing to object storage.

    python jobs/train.py [--config YAML] [--data URI] [--storage URI] [--name NAME]
        [--num-workers N | --num-workers MIN-MAX] [--use-gpu] [--steps N] [--set section.key=value ...]

With no arguments: the digits config, digits prepared into runs/data/digits if missing, an
embedded local Ray instance, CPU workers, local storage in runs/. Under ``ray job submit``
the same command attaches to the cluster. Re-running with the same --storage and --name
resumes from the newest checkpoint; --steps is the total number of optimiser steps of the
run, so a larger value continues it. --num-workers 2-8 makes the worker group elastic: it
starts once 2 workers fit, grows towards 8 as nodes join and goes on with fewer when a node
is lost (spot instances), each time from the newest checkpoint, with the same global batch.

Progress (step, loss and loss per sigma, images/s, time left) is printed and appended to
<storage>/<name>/metrics.jsonl; each checkpoint redraws <storage>/<name>/loss.png and writes
a sample grid to <storage>/<name>/samples/. With --eval-every K (the digits default: every
checkpoint) a separate actor samples and scores every K-th checkpoint while training goes on:
the scores join metrics.jsonl and loss.png, and the best checkpoint is kept in
<storage>/<name>/best/ (generate.py --pick best).

Exit status: 0 done, 2 bad input (nothing started), 1 failed part-way (re-run to resume).
"""

from __future__ import annotations

import argparse

from ncsn_ray.cli import PROGRESS, job_main, job_parser, storage_and_summary_flags


def build_parser() -> argparse.ArgumentParser:
    p = job_parser(__doc__, "train")
    p.add_argument("--config", default=None, help="a shipped config's name (digits, mnist, cifar10, celeba, *-v2, ...) or a YAML file's path (default: digits)")
    add_run_flags(p)
    return p


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a training run, which ``ncsn-train`` and ``ncsn-distill`` share."""
    p.add_argument("--data", default=None, help="prepared dataset URI (default: data.uri of the config, else runs/data/<dataset>)")
    p.add_argument("--storage", default="runs", help="where runs live: s3://bucket/prefix, gs://..., or a local path (default: runs)")
    p.add_argument("--name", default=None, help="run name (default: the config's name); re-running with the same storage and name resumes")
    p.add_argument("--num-workers", type=_workers, default=1, metavar="N|MIN-MAX",
                   help="training workers (DDP ranks), default 1; MIN-MAX (e.g. 2-8): an elastic group that starts "
                        "once MIN fit, grows towards MAX as nodes join and goes on with fewer when one is lost, each "
                        "time from the newest checkpoint; the global batch stays the config's")
    p.add_argument("--resize-check", type=float, default=None, metavar="S",
                   help="elastic groups: seconds between Ray's checks for room to grow (default 30; Ray's own is 60; "
                        "a check that finds no change costs nothing, a resize costs a restart and the steps since "
                        "the last checkpoint)")
    p.add_argument("--batch-per-worker", type=int, default=None, metavar="N",
                   help="examples a worker holds at once: its share of the global batch is accumulated in parts of N "
                        "(no all-reduce until the last); the global batch and the learning dynamics stay the config's")
    p.add_argument("--eval-every", type=int, default=None, metavar="K",
                   help="sample and score every K-th checkpoint on a separate actor while training goes on; the best "
                        "checkpoint is kept in <run>/best (default: the config's training.eval_every; digits: 1)")
    p.add_argument("--no-eval", action="store_true", help="no evaluations during training")
    p.add_argument("--eval-n", type=int, default=None, metavar="N", help="samples per evaluation (training.eval_n)")
    p.add_argument("--eval-metric", choices=("digits", "fid"), default=None,
                   help="digits (8x8 grey data, offline) or fid against the training data (training.eval_metric)")
    p.add_argument("--inception-weights", default=None, help="InceptionV3 weights for --eval-metric fid (path or URI; "
                   "default: torch hub cache, else download)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL backend")
    p.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs reserved per worker (default: 1, less if the "
                   "cluster is too small to leave a CPU for data loading)")
    p.add_argument("--steps", type=int, default=None, help="total optimiser steps of the run (overrides training.steps)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (overrides training.checkpoint_every)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--max-failures", type=int, default=None,
                   help="worker failures to recover from (from the latest checkpoint): default 3, or 20 with an elastic "
                        "--num-workers MIN-MAX (where each lost node is one); -1: no limit")
    p.add_argument("--data-cache", choices=["auto", "on", "off"], default="auto",
                   help="train from the whole decoded dataset held in each worker, with step-addressed batches that make resumption exact (auto: if under 1 GiB; off: stream through Ray Data)")
    p.add_argument("--no-preview", action="store_true", help="skip the sample grid written at each checkpoint")
    p.add_argument("--tracking", default="tensorboard", metavar="{tensorboard,mlflow,none}",
                   help="experiment tracking, comma-separated: TensorBoard event files in <run>/tensorboard (default), "
                        "mlflow (the server at $MLFLOW_TRACKING_URI; pip install 'ncsn-on-ray[mlflow]'), or none")
    p.add_argument("--placement-strategy", choices=["PACK", "SPREAD"], default="PACK",
                   help="PACK workers onto few nodes (default) or SPREAD them across nodes")
    p.add_argument("--allow-config-change", action="store_true", help="resume a run with other learning settings "
                   "(lr, batch size, loss, ...) than its checkpoint's; recorded in metrics.jsonl")
    p.add_argument("--verbose", action="store_true", help="also show Ray Train's own INFO lines")
    storage_and_summary_flags(p)


def _workers(text: str) -> int | tuple[int, int]:
    """``--num-workers``: N or MIN-MAX (argparse reports a ValueError as a usage error)."""
    from ncsn_ray.train.elastic import parse_workers

    try:
        return parse_workers(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    return check_run_flags(parser, parser.parse_args(argv))


def check_run_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Usage errors (exit 2) in the flags of :func:`add_run_flags`."""
    for flag in ("steps", "checkpoint_every", "batch_per_worker", "eval_every"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.eval_n is not None and args.eval_n < 2:
        parser.error(f"--eval-n must be at least 2, got {args.eval_n}")
    if args.no_eval and args.eval_every is not None:
        parser.error("--no-eval and --eval-every contradict each other")
    if args.max_failures is not None and args.max_failures < -1:
        parser.error(f"--max-failures must be -1 (no limit) or more, got {args.max_failures}")
    if args.resize_check is not None:
        if not args.resize_check >= 0:
            parser.error(f"--resize-check must be non-negative, got {args.resize_check}")
        if isinstance(args.num_workers, int):
            parser.error("--resize-check applies to an elastic group: give --num-workers MIN-MAX")
    if args.cpus_per_worker is not None and not args.cpus_per_worker > 0:
        parser.error(f"--cpus-per-worker must be positive, got {args.cpus_per_worker}")
    return args


def options_from(args: argparse.Namespace, **extra):
    """The :class:`~ncsn_ray.train.job.TrainOptions` of the flags (``extra``: more fields)."""
    from ncsn_ray.train.job import TrainOptions

    return TrainOptions(
        **({"config": args.config} if getattr(args, "config", None) else {}), **extra, data=args.data, storage=args.storage, name=args.name, num_workers=args.num_workers,
        batch_per_worker=args.batch_per_worker,
        eval_every=0 if args.no_eval else args.eval_every, eval_n=args.eval_n, eval_metric=args.eval_metric,
        inception_weights=args.inception_weights,
        use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker, steps=args.steps,
        checkpoint_every=args.checkpoint_every, overrides=args.overrides, max_failures=args.max_failures,
        data_cache=args.data_cache, endpoint_url=args.s3_endpoint, preview=not args.no_preview,
        tracking=args.tracking,
        placement_strategy=args.placement_strategy, verbose=args.verbose,
        allow_config_change=args.allow_config_change,
        **({} if args.resize_check is None else {"resize_check_s": args.resize_check}),
    )


def run(args: argparse.Namespace) -> dict:
    from ncsn_ray.train import job as train

    return train.run(options_from(args), log=PROGRESS)


main = job_main("train", parse_args, run)
