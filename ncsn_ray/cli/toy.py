"""Reproduce the paper's Section 3 toy experiments (Fig. 2 and Fig. 3) in under a minute.

    python jobs/toy.py [--out runs/toy] [--n 1280] [--seed 0] [--json]

Fig. 3 compares plain and annealed Langevin dynamics on a two-mode Gaussian mixture (the
mode weights 1/5 : 4/5), annealed with the paper's ladder (sigma 10 -> 0.1, toy.yaml) and
with the authors' code's (sigma 20 -> 1, toy-original.yaml); Fig. 2 shows that sliced score
matching learns scores only near the data. With --json the last line printed is one JSON
object with the fraction of samples in the lower-left mode for ``exact``, ``langevin``,
``annealed`` (paper's ladder) and ``annealed_original`` (authors' code), plus score-error
figures.

Exit status: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse

from ncsn_ray.cli import PROGRESS, job_main, job_parser


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser(__doc__, "toy")
    parser.add_argument("--config", default=None, help="toy config, the paper's ladder: a shipped name or a YAML path (default: toy)")
    parser.add_argument("--original-config", default=None, help="the authors' code's ladder "
                        "(default: toy-original)")
    parser.add_argument("--out", default="runs/toy", help="folder for the PNG figures (default: %(default)s)")
    parser.add_argument("--n", type=int, default=1280, help="samples per method (default: %(default)s)")
    parser.add_argument("--ssm-steps", type=int, default=1500, help="training steps for Fig. 2 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n < 10:
        parser.error("--n must be at least 10")
    if args.ssm_steps < 1:
        parser.error("--ssm-steps must be at least 1")
    return args


def options_from(args: argparse.Namespace):
    from ncsn_ray.toy import ToyOptions

    paths = {"config": args.config, "original_config": args.original_config}
    return ToyOptions(**{k: v for k, v in paths.items() if v}, out=args.out, n=args.n,
                      ssm_steps=args.ssm_steps, seed=args.seed)


def run(args: argparse.Namespace) -> dict:
    from ncsn_ray import toy

    return toy.run(options_from(args), log=PROGRESS)


main = job_main("toy", parse_args, run)
