"""Prepare a dataset as Parquet shards plus a manifest (written last) in object storage.

    python jobs/prepare_data.py --dataset digits --out runs/data/digits
    python jobs/prepare_data.py --dataset mnist --out s3://bucket/data/mnist [--root DIR] [--s3-endpoint URL]
    python jobs/prepare_data.py --dataset imagefolder --root DIR --image-size 32 [--channels 1|3] --out URI

Datasets: digits (scikit-learn, offline), mnist, cifar10 (train splits), celeba (train split,
centre crop 140, resized to 32), imagefolder (any folder of images; labels from sub-folders).
Re-running over a complete dataset does nothing; re-running after an interruption completes
it.

Exit status: 0 done, 2 bad input (nothing published), 1 failed part-way (re-run to complete).
"""

from __future__ import annotations

import argparse

from ncsn_ray.cli import PROGRESS, job_main, job_parser, storage_and_summary_flags
from ncsn_ray.data.sources import DATASETS, SourceUsageError, static_spec

DEFAULT_SHARD_SIZE = 10_000  # = ncsn_ray.data.prepare.DEFAULT_SHARD_SIZE (not imported: --help stays fast)


def build_parser() -> argparse.ArgumentParser:
    p = job_parser(__doc__, "prepare_data")
    p.add_argument("--dataset", required=True, choices=DATASETS, help="which source to prepare")
    p.add_argument("--out", required=True, metavar="URI", help="output folder: local path, s3://bucket/prefix or gs://bucket/prefix")
    p.add_argument("--shard-size", type=int, default=None, metavar="N",
                   help=f"rows per shard (default {DEFAULT_SHARD_SIZE}, or the size an interrupted run used)")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="imagefolder: the folder of images; mnist/cifar10/celeba: where torchvision's files are or will "
                   "be downloaded (default $NCSN_DATA_ROOT or ~/.cache/ncsn_ray/data)")
    p.add_argument("--image-size", type=int, default=None, metavar="S", help="imagefolder: resize to S x S (required)")
    p.add_argument("--channels", type=int, default=None, choices=(1, 3), help="imagefolder: 1 grey or 3 RGB (default 3)")
    p.add_argument("--no-download", action="store_true", help="never download; read only what is under --root")
    storage_and_summary_flags(p)  # credentials: the standard AWS chain only
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # option checks that need no heavy import, so that a usage error is reported at once
        static_spec(args.dataset, image_size=args.image_size, channels=args.channels)
    except SourceUsageError as err:
        parser.error(str(err))
    if args.dataset == "imagefolder" and args.root is None:
        parser.error("imagefolder needs --root DIR (the folder of images)")
    if args.shard_size is not None and args.shard_size < 1:
        parser.error(f"--shard-size must be at least 1, got {args.shard_size}")
    return args


def options_from(args: argparse.Namespace):
    from ncsn_ray.data.prepare import PrepareOptions

    return PrepareOptions(dataset=args.dataset, out=args.out, shard_size=args.shard_size, root=args.root,
                          image_size=args.image_size, channels=args.channels, endpoint_url=args.s3_endpoint,
                          download=not args.no_download)


def run(args: argparse.Namespace) -> dict:
    from ncsn_ray.data import prepare

    return prepare.run(options_from(args), log=PROGRESS)


main = job_main("prepare_data", parse_args, run)
