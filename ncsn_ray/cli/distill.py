"""Distil a trained run into a consistency model: one or two network evaluations per sample.

    python jobs/distill.py --checkpoint RUN [--data URI] [--storage URI] [--name NAME]
        [--recipe auto|default|ncsnv2|YAML] [--num-workers N] [--use-gpu] [--steps N] [--set section.key=value ...]

The teacher (--checkpoint: a run folder, meaning its newest checkpoint, a checkpoint folder or
a .pt file; --set consistency.teacher_weights=trained for its trained weights instead of its
EMA) must be a network that takes any sigma (model.kind ncsnv2, mlp, unet: the digits default,
NCSNv2); an NCSN network, conditioned on the index of its trained levels, is refused by name.
The student is a consistency function f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma)
with f(x, sigma_min) = x exactly, F a network of the teacher's kind started from its weights,
trained by consistency distillation (Song et al. 2023): one Heun step of the teacher's
probability-flow ODE between neighbouring sigmas of an N-sigma rho-schedule (N = 6), a
stop-gradient target and iCT's pseudo-Huber distance. The recipe holds every setting and the
student's config records it all: ncsn_ray/configs/distill/default.yaml, or ncsnv2.yaml for an
NCSNv2 teacher (its 2-step sampler re-noises higher); --recipe auto, the default, picks.

The student is a run like any trained one: the same Ray Train job (DDP over the Parquet shards,
checkpoints in <storage>/<name>, exact resumption by re-running the same command, worker
failures recovered, progress with ETA, TensorBoard/MLflow, quality during training with
--eval-every), and generate.py, evaluate.py, export.py, --pick best and tune_sampler.py use it
like any run. It samples with sampling.method=consistency: sampling.steps K network evaluations
per sample (2 by default; --set sampling.steps=1 for one).

Exit status: 0 done, 2 bad input (nothing started: a missing teacher, a teacher that cannot be
distilled, data of another image shape than the teacher's), 1 failed part-way (re-run to resume).
"""

from __future__ import annotations

import argparse

from ncsn_ray.cli import PROGRESS, job_main, job_parser
from ncsn_ray.cli.train import add_run_flags, check_run_flags, options_from


def build_parser() -> argparse.ArgumentParser:
    p = job_parser(__doc__, "distill")
    p.add_argument("--checkpoint", required=True, help="the teacher: a run folder (its newest checkpoint), a "
                   "checkpoint folder or a .pt file, local or in object storage")
    p.add_argument("--recipe", default="auto", help="a shipped distillation recipe's name (default, ncsnv2), a YAML "
                   "file with training, sampling and consistency sections, or auto: ncsnv2 for an NCSNv2 teacher, "
                   "default for others (default: %(default)s)")
    add_run_flags(p)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    return check_run_flags(parser, parser.parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    from ncsn_ray.train import job as train

    return train.run(options_from(args, config=args.recipe, teacher=args.checkpoint), log=PROGRESS)


main = job_main("distill", parse_args, run)
