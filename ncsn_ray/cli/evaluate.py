"""Score a sample set: FID, Inception Score, KID and precision/recall against a prepared
dataset (FID also against published statistics), FD-DINOv2, or the offline digits metric.

    python jobs/evaluate.py --samples URI --reference URI [--metrics fid,isc,kid,prc,fd-dinov2]
        [--inception-weights PATH] [--use-gpu] [--num-actors N] [--num-cpus N] [--batch-size B]
        [--reference-limit N] [--no-ray] [--s3-endpoint URL] [--json]
    python jobs/evaluate.py --samples URI --reference-stats fid_stats_cifar10_train.npz --metrics fid,isc
    python jobs/evaluate.py --samples runs/samples/digits --metrics digits
    python jobs/evaluate.py --samples runs/s0,runs/s1,runs/s2 --metrics digits   # mean ± std over 3 sets
    python jobs/evaluate.py --samples runs/inpaint/digits --metrics inpaint      # an inpainting set

Both URIs are read straight from storage (s3://, gs://, local). The sample set must be
complete (made by jobs/generate.py; its manifest exists). fid, kid, prc and fd-dinov2 need
--reference with the samples' image size and channels (fid can use --reference-stats
instead); isc needs none. The reference's features are cached in
<reference>/_fidelity-cache/. prc: precision and recall (k = 3 nearest neighbours in
Inception features), which FID mixes: "samples look real" and "samples cover the data".
fd-dinov2: the Frechet distance in DINOv2 ViT-B/14 features (needs facebookresearch/dinov2
in the torch hub cache, or the internet). digits (8x8 grey samples, no reference, works
offline): the Frechet distance in the feature space of a digits classifier trained on
scikit-learn's digits, its confidence, precision and recall there, the class shares and
near copies, printed beside the same numbers for real digits, a Gaussian fitted to their
pixels and uniform noise. inpaint (an inpainting set of 8x8 grey digits, from generate.py
--mode inpaint; no other metric applies to one): the digits classifier's label agreement
between each completion and its original, the diversity of the K completions in the unknown
pixels, and the change in the known pixels (must be 0). Scores go to <samples>/_scores.json;
below 50,000 samples they are also reported with their n (fid@2000), not comparable with
published 50k numbers.

The images' features are extracted on a Ray Data actor pool that streams the shards from
storage (--num-actors actors of --num-cpus CPUs, or one GPU each with --use-gpu); only the
features reach the driver, which computes the scores with torch-fidelity's functions. Under
``ray job submit`` the actors spread over the cluster; on a laptop an embedded Ray instance
runs them. --no-ray runs torch-fidelity's own calculate_metrics in this process (same scores).

Several sample sets (--samples A,B,C: e.g. one model's disjoint seed ranges, made with
generate.py --seed 0, --seed 512, --seed 1024) are each scored and written as one set is,
then every metric is printed as mean ± std over the sets (the spread a single number hides);
every set is checked before any is scored.

Offline: pass the InceptionV3 weights with --inception-weights (a local file or a storage
URI of torch-fidelity's weights-inception-2015-12-05-6726825d.pth) or put that file in the
torch hub cache ($TORCH_HOME/hub/checkpoints/).

Exit status: 0 done, 2 bad input (no scores written), 1 failed part-way.
"""

from __future__ import annotations

import argparse

from ncsn_ray.cli import PROGRESS, job_main, job_parser, storage_and_summary_flags

METRICS = "fid,isc,kid"


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser(__doc__, "evaluate")
    parser.add_argument("--samples", required=True, help="sample-set URI (from jobs/generate.py), or several separated "
                        "by commas: each is scored, then every metric is reported as mean ± std over the sets")
    parser.add_argument("--reference", help="prepared dataset URI (from jobs/prepare_data.py); needed by fid, isc, kid")
    parser.add_argument("--metrics", default=METRICS, help="comma-separated subset of fid,isc,kid,prc,fd-dinov2,digits, or "
                        "inpaint for an inpainting set (default: %(default)s)")
    parser.add_argument("--reference-stats", help="score FID against published statistics: an .npz with mu and sigma "
                        "(pytorch-fid, TTUR) or pool_3 activations (score_sde); path or URI")
    parser.add_argument("--inception-weights", help="InceptionV3 weights file (local path or URI); default: torch hub "
                        "cache, else download")
    parser.add_argument("--dinov2-weights", help="DINOv2 ViT-B/14 weights (dinov2_vitb14_pretrain.pth; path or URI) "
                        "for fd-dinov2; default: torch hub cache, else download")
    parser.add_argument("--use-gpu", action="store_true", help="run Inception on a GPU")
    parser.add_argument("--num-actors", type=int, default=None, help="feature-extraction actors (default: one per GPU "
                        "with --use-gpu, else one per --num-cpus CPUs of the cluster)")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs each actor reserves (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per Inception batch (default: %(default)s)")
    parser.add_argument("--reference-limit", type=int, default=None,
                        help="score against the first N reference images only (default: all)")
    parser.add_argument("--no-ray", action="store_true", help="run torch-fidelity in this process instead of on a "
                        "Ray actor pool (same scores)")
    storage_and_summary_flags(parser, "the scores as JSON")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.num_cpus > 0:
        parser.error(f"--num-cpus must be positive, got {args.num_cpus}")
    if args.reference_limit is not None and args.reference_limit < 2:
        parser.error(f"--reference-limit must be at least 2, got {args.reference_limit}")
    if args.num_actors is not None and args.num_actors < 1:
        parser.error(f"--num-actors must be at least 1, got {args.num_actors}")
    wanted = [m.strip() for m in args.metrics.split(",") if m.strip()]
    compared = [m for m in wanted if m in ("fid", "kid", "prc", "fd-dinov2")
                and not (m == "fid" and args.reference_stats)]
    if compared and not args.reference:
        parser.error(f"--metrics {', '.join(compared)} need --reference URI (a prepared dataset)"
                     + (" or, for fid, --reference-stats FILE" if "fid" in compared else ""))
    return args


def options_from(args: argparse.Namespace):
    from ncsn_ray.evaluate.job import EvaluateOptions

    return EvaluateOptions(
        samples=args.samples, reference=args.reference, metrics=args.metrics, inception_weights=args.inception_weights,
        endpoint_url=args.s3_endpoint, batch_size=args.batch_size, reference_limit=args.reference_limit,
        use_gpu=args.use_gpu, num_cpus=args.num_cpus, use_ray=not args.no_ray, num_actors=args.num_actors,
        reference_stats=args.reference_stats, dinov2_weights=args.dinov2_weights,
    )


def run(args: argparse.Namespace) -> dict:
    from ncsn_ray.evaluate import job as evaluate

    return evaluate.run(options_from(args), log=PROGRESS)


main = job_main("evaluate", parse_args, run)
