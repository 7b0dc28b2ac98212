"""Generate samples (or inpaint dataset images) from an NCSN checkpoint with Ray Data.

Generation (seeds ``seed .. seed + n - 1``, one row per seed, Parquet shards by seed range)::

    python jobs/generate.py --checkpoint URI --n N --out URI [--batch-size B] [--shard-size S]
        [--num-actors K | --min-actors A --max-actors B] [--cpus-per-actor C] [--use-gpu]
        [--seed S] [--steps-per-level T] [--ema | --no-ema] [--set sampling.key=value ...]
        [--s3-endpoint URL] [--json]

Inpainting (paper Fig. 6: occluded | K inpaintings | original)::

    python jobs/generate.py --mode inpaint --checkpoint URI --data URI --out URI
        [--mask half|center|random|FILE] [--samples-per-image K] [--limit M] [...]

Without ``--checkpoint`` the newest checkpoint of the default training run ``runs/digits``
is used; without ``--out`` samples go to ``runs/samples/<run>`` (``runs/inpaint/<run>``).
``--n 50000`` makes an FID sample set. Re-running an interrupted command computes only the
missing shards; re-running a finished one does nothing. Under ``ray job submit`` the same
command runs on the cluster.

Exit status: 0 done, 2 bad input (message on stderr, nothing published), 1 the run failed
part-way (finished shards are kept; re-run the same command to resume).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ncsn_ray.generation import (  # noqa: E402
    USER_ERRORS,
    ActorPlan,
    GenerateOptions,
    InpaintOptions,
    generate_samples,
    inpaint_images,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1]
    )
    parser.add_argument("--mode", choices=("generate", "inpaint"), default="generate")
    parser.add_argument("--checkpoint", help="training run folder (newest checkpoint), checkpoint_* folder or .pt file (default: runs/digits)")
    parser.add_argument("--out", help="sample-set folder URI (default: runs/samples/<run> or runs/inpaint/<run>)")
    parser.add_argument("--n", type=int, help="generate: number of samples (required)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, help="images per sampler call (default: the checkpoint's sampling.batch_size)")
    parser.add_argument("--shard-size", type=int, help="seeds (generate, default 1000) or images (inpaint, default 100) per shard")
    parser.add_argument("--steps-per-level", type=int, help="override the checkpoint's T (quick looks)")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="sample with the EMA weights (default: on)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="sampling.KEY=VALUE",
                        help="override the checkpoint's sampling settings, e.g. sampling.eps=2e-5, sampling.final_denoise=true, "
                             "sampling.precision=bf16, sampling.compile=true (repeatable)")
    actors = parser.add_argument_group("actors (default: one per GPU with --use-gpu, else CPUs - 1, at least 1)")
    actors.add_argument("--num-actors", type=int, help="fixed actor pool size")
    actors.add_argument("--min-actors", type=int, help="autoscaling pool: minimum")
    actors.add_argument("--max-actors", type=int, help="autoscaling pool: maximum")
    actors.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs each actor reserves (default: %(default)s)")
    actors.add_argument("--use-gpu", action="store_true", help="one GPU per actor")
    inpaint = parser.add_argument_group("inpainting (--mode inpaint)")
    inpaint.add_argument("--data", help="prepared dataset URI (from jobs/prepare_data.py)")
    inpaint.add_argument("--mask", default="half", help="half | center | random | URI of a PNG whose non-zero pixels are KNOWN (default: %(default)s)")
    inpaint.add_argument("--samples-per-image", type=int, default=4, help="inpaintings per image, K (default: %(default)s)")
    inpaint.add_argument("--limit", type=int, help="inpaint only the first M images")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    parser.add_argument("--fail-after-shards", type=int, help=argparse.SUPPRESS)  # testing: actors fail mid-run
    args = parser.parse_args(argv)
    if args.mode == "generate":
        if args.n is None:
            parser.error("--n is required (number of samples)")
        if args.data is not None:
            parser.error("--data is for --mode inpaint")
    elif args.data is None:
        parser.error("--mode inpaint needs --data URI (a prepared dataset)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = ActorPlan(args.num_actors, args.min_actors, args.max_actors, args.use_gpu, args.cpus_per_actor)
    common = dict(
        checkpoint=args.checkpoint,
        out=args.out,
        seed=args.seed,
        batch_size=args.batch_size,
        steps_per_level=args.steps_per_level,
        use_ema=args.ema,
        overrides=args.overrides,
        actors=plan,
        endpoint_url=args.s3_endpoint,
        fail_after_shards=args.fail_after_shards,
    )
    try:
        if args.mode == "generate":
            summary = generate_samples(GenerateOptions(n=args.n, shard_size=args.shard_size or 1000, **common))
        else:
            summary = inpaint_images(
                InpaintOptions(
                    data=args.data,
                    mask=args.mask,
                    samples_per_image=args.samples_per_image,
                    limit=args.limit,
                    shard_size=args.shard_size or 100,
                    **common,
                )
            )
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the pipeline failed part-way (an actor died, storage went away, ...)
        traceback.print_exc()
        print(
            f"error: the {args.mode} job failed part-way ({type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}). "
            "Finished shards are kept and no manifest was written; re-run the same command to resume.",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
