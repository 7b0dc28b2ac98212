"""Score a sample set with FID, Inception Score and KID against a prepared dataset.

    python jobs/evaluate.py --samples URI --reference URI [--metrics fid,isc,kid]
        [--inception-weights PATH] [--use-gpu] [--num-cpus N] [--batch-size B]
        [--no-ray] [--s3-endpoint URL] [--json]

Both URIs are read straight from storage (s3://, gs://, local). The sample set must be
complete (made by jobs/generate.py; its manifest exists) and its images must have the
reference's size and channels. Reference features are cached in
``<reference>/fidelity-cache/``; scores go to ``<samples>/scores.json``.

The work runs as one Ray task (``--num-cpus`` CPUs, one GPU with ``--use-gpu``), so under
``ray job submit`` it lands on a worker with those resources rather than on the head node;
on a laptop an embedded Ray instance runs it. ``--no-ray`` runs it in this process.

Offline: pass the InceptionV3 weights with ``--inception-weights`` (a local file or a
storage URI of torch-fidelity's weights-inception-2015-12-05-6726825d.pth) or put that file
in the torch hub cache ($TORCH_HOME/hub/checkpoints/).

Exit status: 0 done, 2 bad input (message on stderr, no scores written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ncsn_ray.evaluation import METRICS, USER_ERRORS, evaluate, evaluate_on_ray  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1]
    )
    parser.add_argument("--samples", required=True, help="sample-set URI (from jobs/generate.py)")
    parser.add_argument("--reference", required=True, help="prepared dataset URI (from jobs/prepare_data.py)")
    parser.add_argument("--metrics", default=",".join(METRICS), help="comma-separated subset of %(default)s")
    parser.add_argument("--inception-weights", help="InceptionV3 weights file (local path or URI); default: torch hub cache, else download")
    parser.add_argument("--use-gpu", action="store_true", help="run Inception on a GPU")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs the evaluation task reserves (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per Inception batch (default: %(default)s)")
    parser.add_argument("--reference-limit", type=int, default=None,
                        help="score against the first N reference images only (default: all)")
    parser.add_argument("--no-ray", action="store_true", help="run in this process instead of a Ray task")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL)")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON on the last line")
    args = parser.parse_args(argv)
    options = dict(metrics=args.metrics, inception_weights=args.inception_weights, endpoint_url=args.s3_endpoint,
                   batch_size=args.batch_size, reference_limit=args.reference_limit)
    try:
        if args.no_ray:
            result = evaluate(args.samples, args.reference, device="cuda" if args.use_gpu else None, **options)
        else:
            result = evaluate_on_ray(args.samples, args.reference, num_cpus=args.num_cpus, use_gpu=args.use_gpu, **options)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
