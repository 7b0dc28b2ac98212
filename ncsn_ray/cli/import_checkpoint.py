"""Import a published checkpoint of the original NCSN or NCSNv2 code, or a safetensors
weights file, as a run of this project.

    python jobs/import_checkpoint.py --format ncsn --config cifar10 \
        --in checkpoint.pth --out s3://bucket/runs/ncsn-cifar10-original [--step N]
    python jobs/import_checkpoint.py --format safetensors --in digits.safetensors --out runs/digits-copy

--in is the authors' checkpoint.pth (ermongroup/ncsn: [state_dict, optimizer_state_dict];
ermongroup/ncsnv2 with --format ncsnv2: [state_dict, optimizer_state_dict, epoch, step,
ema_state]; network wrapped in DataParallel), a local path or a storage URI; it is loaded
with torch.load(..., weights_only=True). --config must describe the same network and noise
ladder (the paper configs do). The run folder --out then works with jobs/generate.py
--checkpoint and jobs/evaluate.py like a run trained here.

--format safetensors reads a file of jobs/export.py (its config, noise ladder and step are in
its metadata; --config overrides them, for a file made elsewhere with this project's tensor
names). Loading a safetensors file executes no code.

Exit status: 0 done, 2 bad input (a file that does not match the config names the first
mismatched tensor and its shapes; nothing is written).
"""

from __future__ import annotations

import argparse

from ncsn_ray.cli import PROGRESS, job_main, job_parser, storage_and_summary_flags


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser(__doc__, "import_checkpoint")
    parser.add_argument("--format", choices=("ncsn", "ncsnv2", "safetensors"), default="ncsn",
                        help="where the checkpoint comes from (ncsn: ermongroup/ncsn; ncsnv2: ermongroup/ncsnv2; "
                        "safetensors: jobs/export.py)")
    parser.add_argument("--config", help="this project's config describing the same network, a shipped name (cifar10) or a YAML path (required for ncsn "
                        "and ncsnv2; a safetensors file of jobs/export.py carries its own)")
    parser.add_argument("--in", dest="source", required=True, help="the checkpoint file (path or URI)")
    parser.add_argument("--out", required=True, help="run folder to create (path or URI)")
    parser.add_argument("--step", type=int, help="step to record (default: the optimiser's step count in the file)")
    storage_and_summary_flags(parser, "a JSON summary")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.step is not None and args.step < 0:
        parser.error(f"--step must be non-negative, got {args.step}")
    return args


def options_from(args: argparse.Namespace):
    from ncsn_ray.train.import_original import ImportOptions

    return ImportOptions(format=args.format, config=args.config, source=args.source, out=args.out, step=args.step,
                         endpoint_url=args.s3_endpoint)


def run(args: argparse.Namespace) -> dict:
    from ncsn_ray.train import import_original as import_checkpoint

    return import_checkpoint.run(options_from(args), log=PROGRESS)


main = job_main("import_checkpoint", parse_args, run)
