"""Prepare a dataset as Parquet shards plus a manifest (written last) in object storage.

Usage::

    python jobs/prepare_data.py --dataset digits --out runs/data/digits
    python jobs/prepare_data.py --dataset mnist --out s3://bucket/data/mnist [--root DIR] [--s3-endpoint URL]
    python jobs/prepare_data.py --dataset imagefolder --root DIR --image-size 32 [--channels 1|3] --out URI

Datasets: digits (scikit-learn, offline), mnist, cifar10 (train splits), celeba (train split,
centre crop 140, resized to 32), imagefolder (any folder of images; labels from sub-folders).
Re-running over a complete dataset does nothing; re-running after an interruption completes
it. Exit status: 0 done, 1 error (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ncsn_ray.sources import DATASETS, SourceError, SourceUsageError, static_spec  # noqa: E402

DEFAULT_SHARD_SIZE = 10_000  # = ncsn_ray.prepare.DEFAULT_SHARD_SIZE (not imported: --help stays fast)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_data.py",
        description="Write a dataset as Parquet shards (id, PNG image, label) and a manifest, to a local path, s3:// or gs://.",
    )
    p.add_argument("--dataset", required=True, choices=DATASETS, help="which source to prepare")
    p.add_argument("--out", required=True, metavar="URI", help="output folder: local path, s3://bucket/prefix or gs://bucket/prefix")
    p.add_argument(
        "--shard-size",
        type=int,
        default=None,
        metavar="N",
        help=f"rows per shard (default {DEFAULT_SHARD_SIZE}, or the size an interrupted run used)",
    )
    p.add_argument(
        "--root",
        default=None,
        metavar="DIR",
        help="imagefolder: the folder of images; mnist/cifar10/celeba: where torchvision's files are or will be "
        "downloaded (default $NCSN_DATA_ROOT or ~/.cache/ncsn_ray/data)",
    )
    p.add_argument("--image-size", type=int, default=None, metavar="S", help="imagefolder: resize to S x S (required)")
    p.add_argument("--channels", type=int, default=None, choices=(1, 3), help="imagefolder: 1 grey or 3 RGB (default 3)")
    p.add_argument(
        "--s3-endpoint",
        default=None,
        metavar="URL",
        help="S3-compatible endpoint (MinIO, Ceph, R2); default $AWS_ENDPOINT_URL. Credentials: standard AWS chain only",
    )
    p.add_argument("--no-download", action="store_true", help="never download; read only what is under --root")
    return p


def main(argv: list[str] | None = None) -> int:
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
    # Imported after parsing: they pull in torch, which takes seconds to load.
    from ncsn_ray.datasets import DatasetError
    from ncsn_ray.prepare import PrepareError, prepare_dataset
    from ncsn_ray.storage import StorageError

    log = functools.partial(print, flush=True)
    try:
        prepare_dataset(
            args.dataset,
            args.out,
            shard_size=args.shard_size,
            root=args.root,
            image_size=args.image_size,
            channels=args.channels,
            endpoint_url=args.s3_endpoint,
            download=not args.no_download,
            log=log,
        )
    except SourceUsageError as err:
        parser.error(str(err))  # exits 2
    except (SourceError, PrepareError, StorageError, DatasetError) as err:
        print(f"prepare_data.py: error: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("prepare_data.py: interrupted; re-run the same command to complete the dataset", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
