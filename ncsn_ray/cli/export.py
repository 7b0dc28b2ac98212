"""Export a run's network as a safetensors weights file that other tools load.

    python jobs/export.py --checkpoint runs/digits --out digits.safetensors [--ema | --no-ema]
    python jobs/export.py --checkpoint s3://bucket/runs/cifar10/checkpoint_00300000 --out s3://bucket/cifar10.safetensors

--checkpoint is a run folder (its newest checkpoint), a checkpoint_* folder or a .pt file.
The file holds the network's tensors under this project's names (ncsn_core.build_model(config)
loads them) and, as metadata, the run's config and noise ladder as JSON, which weights were
taken (the EMA by default when the run has one) and the step. Only the network is written:
no optimiser state, nothing that executes when loaded. jobs/import_checkpoint.py --format
safetensors turns it back into a run folder that jobs/generate.py samples from.

Exit status: 0 done, 2 bad input (no checkpoint there, --ema on a run without EMA, an --out
that is not *.safetensors), 1 failed part-way (re-run).
"""

from __future__ import annotations

import argparse

from ncsn_ray.cli import PROGRESS, job_main, job_parser, storage_and_summary_flags


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser(__doc__, "export")
    parser.add_argument("--checkpoint", required=True, help="run folder, checkpoint_* folder or .pt file (path or URI)")
    parser.add_argument("--out", required=True, help="the .safetensors file to write (path or URI)")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                        help="export the EMA weights (default: when the run has them) or, with --no-ema, the trained ones")
    storage_and_summary_flags(parser, "a JSON summary")
    return parser


def run(args: argparse.Namespace) -> dict:
    from ncsn_ray.train.export import ExportOptions, run as export

    options = ExportOptions(checkpoint=args.checkpoint, out=args.out, ema=args.ema, endpoint_url=args.s3_endpoint)
    return export(options, log=PROGRESS)


main = job_main("export", lambda argv: build_parser().parse_args(argv), run)
