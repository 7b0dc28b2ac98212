"""Find the cheapest sampler setting that holds quality: Ray Tune trials over sampler settings
of one checkpoint, each drawing --n samples and scoring them; prints the quality-versus-cost
front and, last, the --set flags to pass to jobs/generate.py.

    python jobs/tune_sampler.py [--checkpoint URI] [--metric digits|fid|kid] [--n N] [--seed-sets K]
        [--budget-nfe B] [--tolerance 0.1] [--space quick|full] [--out URI]
        [--reference URI] [--inception-weights PATH] [--use-gpu] [--max-concurrent K]
        [--s3-endpoint URL] [--json]

What is tried depends on the network: annealed Langevin at several T, Euler and Heun steps of
the probability-flow ODE, the predictor-corrector (every network, along its trained ladder),
EDM's rho-schedule and stochastic sampler (NCSNv2, whose score exists at any sigma). Settings
costing more than --budget-nfe network evaluations per sample are left out. Each trial draws
seeds 0..n-1 exactly as `jobs/generate.py --n N --set ...` would, so the score it reports is
the one those flags give. Trials run in parallel, one CPU each (one GPU with --use-gpu).

Metrics (lower is better): digits (8x8 grey models, offline: the classifier-feature Frechet
distance over that of real digits at the same n), fid and kid (torch-fidelity, against the
prepared dataset --reference, its features cached as jobs/evaluate.py caches them). Scores
at small n are biased upward; compare settings at the same n, and confirm the chosen one at
the n you publish. With --seed-sets K each trial scores K disjoint sets of --n seeds
(0..Kn-1) and reports the means and their spread. Every trial also measures recall (the
share of the real data the samples cover: the digits classifier's or Inception's k-NN
recall), and the recommendation is never a setting whose recall is more than 0.03 below the
best trial's: a Frechet distance can improve while coverage falls.

Output in --out (default runs/tune/<run>): trials.parquet (every trial), _front.png,
_manifest.json (written last). Re-running an interrupted search resumes it (finished trials
are kept); re-running a finished one prints its result.

Exit status: 0 done, 2 bad input (nothing written), 1 failed part-way (re-run to resume).
"""

from __future__ import annotations

import argparse

from ncsn_ray.cli import PROGRESS, job_main, job_parser, storage_and_summary_flags


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser(__doc__, "tune_sampler")
    parser.add_argument("--checkpoint", help="run folder, checkpoint folder or .pt URI (default: runs/digits)")
    parser.add_argument("--metric", default="digits", help="digits, fid or kid (default: %(default)s)")
    parser.add_argument("--n", type=int, default=256, help="samples per seed set (default: %(default)s)")
    parser.add_argument("--seed-sets", type=int, default=1, help="disjoint sets of --n seeds each trial draws and "
                        "scores; its numbers are their means, with the spread (default: %(default)s)")
    parser.add_argument("--budget-nfe", type=int, default=None,
                        help="most network evaluations per sample a setting may cost (default: no bound)")
    parser.add_argument("--tolerance", type=float, default=0.1,
                        help="recommend the cheapest setting within this fraction of the best score "
                             "(default: %(default)s)")
    parser.add_argument("--space", choices=("quick", "full"), default="quick",
                        help="search space: quick (about 20 settings) or full (about 50)")
    parser.add_argument("--out", help="where the search's results go (default: runs/tune/<run>)")
    parser.add_argument("--reference", help="prepared dataset URI for --metric fid or kid")
    parser.add_argument("--inception-weights", help="InceptionV3 weights file for fid/kid (local path or URI)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per trial")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as resources allow)")
    storage_and_summary_flags(parser, "the summary as JSON")
    return parser


def run(args: argparse.Namespace) -> dict:
    from ncsn_ray.tune import job as tune_job
    from ncsn_ray.tune.job import TuneOptions

    options = TuneOptions(checkpoint=args.checkpoint, metric=args.metric, n=args.n, budget_nfe=args.budget_nfe,
                          tolerance=args.tolerance, out=args.out, reference=args.reference,
                          inception_weights=args.inception_weights, size=args.space, use_gpu=args.use_gpu,
                          max_concurrent=args.max_concurrent, endpoint_url=args.s3_endpoint,
                          seed_sets=args.seed_sets)
    return tune_job.run(options, log=PROGRESS)


main = job_main("tune", lambda argv: build_parser().parse_args(argv), run)
