"""Generate samples (or inpaint dataset images) from an NCSN checkpoint with Ray Data.

Generation (seeds ``seed .. seed + n - 1``, one row per seed, Parquet shards by seed range)::

    python jobs/generate.py --n N [--checkpoint URI] [--out URI] [--batch-size B] [--shard-size S]
        [--num-actors K | --min-actors A --num-actors B] [--cpus-per-actor C] [--use-gpu]
        [--seed S] [--steps-per-level T] [--ema | --no-ema] [--set sampling.key=value ...]
        [--s3-endpoint URL] [--json]

Inpainting (paper Fig. 6: occluded | K inpaintings | original)::

    python jobs/generate.py --mode inpaint --data URI [--checkpoint URI] [--out URI]
        [--mask half|center|random|FILE] [--samples-per-image K] [--limit M] [...]

Inpainting uses the same sampler as generation (any ``sampling.method``) and, on 8x8 grey
digits, prints and records (``_scores.json``) its label agreement, diversity and known-pixel
change.

Without ``--checkpoint`` the newest checkpoint of the default training run ``runs/digits``
is used; without ``--out`` samples go to ``runs/samples/<run>`` (``runs/inpaint/<run>``).
``--n 50000`` makes an FID sample set. The sampler is the checkpoint config's ``sampling``
section (``sampling.method``: the paper's annealed Langevin, or a fast sampler: euler, heun,
edm, pc); the manifest records it and its network evaluations per sample. Progress (samples done, samples/s, time left) is
printed while it runs. Re-running an interrupted command computes only the missing shards;
re-running a finished one does nothing. Under ``ray job submit`` the same command runs on
the cluster.

Exit status: 0 done, 2 bad input (nothing published), 1 failed part-way (finished shards
are kept; re-run the same command to resume).
"""

from __future__ import annotations

import argparse

from ncsn_ray.cli import PROGRESS, job_main, job_parser, storage_and_summary_flags


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser(__doc__, "generate")
    parser.add_argument("--mode", choices=("generate", "inpaint"), default="generate")
    parser.add_argument("--checkpoint", help="training run folder (newest checkpoint), checkpoint_* folder or .pt file "
                        "(default: runs/digits)")
    parser.add_argument("--pick", choices=("newest", "best"), default="newest",
                        help="of a run folder: its newest checkpoint (default) or the best-scored one (kept in "
                             "<run>/best by train.py --eval-every; recorded in the manifest as picked)")
    parser.add_argument("--out", help="sample-set folder URI (default: runs/samples/<run> or runs/inpaint/<run>)")
    parser.add_argument("--n", type=int, help="generate: number of samples (required)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, help="images per sampler call (default: the checkpoint's sampling.batch_size)")
    parser.add_argument("--shard-size", type=int, help="seeds (generate) or images (inpaint) per shard (default: about "
                        "n/8, a whole number of batches, at most 1000 seeds or 100 images; inpaint: at least a batch "
                        "of completions)")
    parser.add_argument("--steps-per-level", type=int, help="override the checkpoint's T (quick looks)")
    parser.add_argument("--trajectory", type=int, default=0, metavar="K",
                        help="generate: also draw _annealing.png, the first 8 samples forming over K frames from "
                        "noise to image (paper Fig. 4)")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                        help="sample with the EMA weights when the checkpoint has them (default: the config's "
                        "sampling.ema: off in the paper configs, as the paper sampled, on in digits)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="sampling.KEY=VALUE",
                        help="override the checkpoint's sampling settings, e.g. sampling.method=heun (or "
                             "annealed_langevin, euler, edm, pc), sampling.steps=11, sampling.eps=2e-5, "
                             "sampling.final_denoise=true, sampling.precision=bf16 (repeatable)")
    actors = parser.add_argument_group("actors (default: one per GPU with --use-gpu, else one per CPU)")
    actors.add_argument("--num-actors", type=int, help="fixed actor pool size; with --min-actors, the pool's maximum")
    actors.add_argument("--min-actors", type=int, help="a pool that grows and shrinks with the cluster: its minimum "
                        "(the maximum is --num-actors, or --max-actors)")
    actors.add_argument("--max-actors", type=int, help="the growing pool's maximum (the same as --num-actors beside "
                        "--min-actors; alone: a pool of 1 to this many)")
    actors.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs (and torch threads) each actor reserves "
                        "(default: %(default)s)")
    actors.add_argument("--use-gpu", action="store_true", help="one GPU per actor")
    inpaint = parser.add_argument_group("inpainting (--mode inpaint)")
    inpaint.add_argument("--data", help="prepared dataset URI (from jobs/prepare_data.py)")
    inpaint.add_argument("--mask", default="half", help="half | center | random | URI of a PNG whose non-zero pixels are "
                         "KNOWN (default: %(default)s)")
    inpaint.add_argument("--samples-per-image", type=int, default=4, help="inpaintings per image, K (default: %(default)s)")
    inpaint.add_argument("--limit", type=int, help="inpaint only the first M images")
    inpaint.add_argument("--renoise", choices=("level", "step"), default="level",
                         help="annealed Langevin: fresh noise on the known pixels once per level (NCSN, default) or "
                         "before every step (NCSNv2); the fast samplers draw it after every update")
    storage_and_summary_flags(parser, "a JSON summary")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mode == "generate":
        if args.n is None:
            parser.error("--n is required (number of samples)")
        if args.n < 1:
            parser.error(f"--n must be at least 1, got {args.n}")
        if args.data is not None:
            parser.error("--data is for --mode inpaint")
    elif args.data is None:
        parser.error("--mode inpaint needs --data URI (a prepared dataset)")
    for flag in ("batch_size", "shard_size", "steps_per_level", "num_actors", "min_actors", "max_actors", "limit"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}")
    if args.trajectory == 1 or args.trajectory < 0:
        parser.error(f"--trajectory needs at least 2 frames, got {args.trajectory}")
    if args.samples_per_image < 1:
        parser.error(f"--samples-per-image must be at least 1, got {args.samples_per_image}")
    if args.num_actors is not None and args.max_actors is not None:
        parser.error("--num-actors and --max-actors both name a pool size: give one")
    if args.min_actors is not None:  # a growing pool: --num-actors (or --max-actors) is its maximum
        if args.num_actors is None and args.max_actors is None:
            parser.error("--min-actors needs the pool's maximum: --num-actors N (or --max-actors N)")
        args.max_actors, args.num_actors = args.max_actors or args.num_actors, None
        if args.min_actors > args.max_actors:
            parser.error(f"--min-actors {args.min_actors} exceeds the maximum {args.max_actors}")
    elif args.max_actors is not None:
        args.min_actors = 1
    return args


def options_from(args: argparse.Namespace):
    from ncsn_ray.sample.inpaint import InpaintOptions
    from ncsn_ray.sample.generate import GenerateOptions
    from ncsn_ray.sample.pipeline import ActorPlan

    common = dict(
        checkpoint=args.checkpoint, out=args.out, seed=args.seed, batch_size=args.batch_size,
        shard_size=args.shard_size, steps_per_level=args.steps_per_level, use_ema=args.ema, pick=args.pick,
        overrides=args.overrides, endpoint_url=args.s3_endpoint,
        actors=ActorPlan(args.num_actors, args.min_actors, args.max_actors, args.use_gpu, args.cpus_per_actor),
    )
    if args.mode == "generate":
        return GenerateOptions(n=args.n, trajectory=args.trajectory, **common)
    return InpaintOptions(data=args.data, mask=args.mask, samples_per_image=args.samples_per_image, limit=args.limit,
                          renoise=args.renoise, **common)


def run(args: argparse.Namespace) -> dict:
    from ncsn_ray.sample import generate

    from ncsn_ray.sample import inpaint

    job = generate if args.mode == "generate" else inpaint
    return job.run(options_from(args), log=PROGRESS)


main = job_main(lambda args: args.mode, parse_args, run)
