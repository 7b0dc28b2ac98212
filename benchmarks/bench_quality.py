"""The default run's sample quality, as one command: train, generate, score.

Runs what a user runs, through the same library calls as ``jobs/train.py``,
``jobs/generate.py`` and ``jobs/evaluate.py --metrics digits`` (embedded Ray, a local
folder as object storage, the offline digits), in a fresh folder:

1. train the config (default ``ncsn_ray/configs/digits.yaml``) for its ``training.steps``;
2. generate ``--n`` samples (default 256) from the newest checkpoint;
3. score them with the offline digits metric (``ncsn_ray.evaluate.digits``) and print the
   calibration rows at the same n: real digits, a Gaussian fitted to the pixels, uniform
   noise.

The metric's targets for the default (issue 9): Fréchet distance at most 3x the real
digits' at the same n, mean classifier confidence >= 0.9, no class above 15%, no near
copies of training images. Prints the wall-clock time of each stage and, last, one JSON
object with everything measured.

``--per-level N`` also runs the same chain for seeds ``0 .. N-1`` in this process and prints,
after each noise level, the class shares and mean confidence of the classifier on the
Tweedie estimate ``x + sigma_i^2 s(x, i)``: where the chain decides which digit a sample
becomes, and whether the last levels still change it (docs/results/quality-history.md).

    python benchmarks/bench_quality.py [--config digits] [--n 256]
        [--set training.steps=500] [--sample-set sampling.steps_per_level=50] [--keep DIR]
        [--per-level 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ncsn_core import load_config  # noqa: E402
from ncsn_ray import configs  # noqa: E402
from ncsn_ray.evaluate import digits as digits_quality  # noqa: E402
from ncsn_ray.evaluate import job as evaluate  # noqa: E402
from ncsn_ray.sample import generate  # noqa: E402
from ncsn_ray.train import job as train  # noqa: E402
from ncsn_ray.evaluate.job import EvaluateOptions  # noqa: E402
from ncsn_ray.sample.generate import GenerateOptions  # noqa: E402
from ncsn_ray.data.prepare import ensure_prepared  # noqa: E402
from ncsn_ray.sample.job import SamplingOptions, resolve_sampling  # noqa: E402
from ncsn_ray.sample.sampler import Sampler  # noqa: E402
from ncsn_ray.train.job import TrainOptions  # noqa: E402

TARGETS = {"fd_ratio": 3.0, "confidence": 0.9, "max_class_share": 0.15}


def stage(name: str, body):
    print(f"[bench_quality] {name} ...", flush=True)
    started = time.perf_counter()
    result = body()
    seconds = time.perf_counter() - started
    print(f"[bench_quality] {name}: {seconds:.1f} s", flush=True)
    return result, seconds


def per_level_table(run_uri: str, sample_overrides: list[str], n: int) -> list[dict]:
    """Class shares of the Tweedie estimate after each level, for seeds ``0 .. n-1`` (the
    generation job's chain: its checkpoint and sampler settings, resolved as it resolves them)."""
    setup = resolve_sampling(SamplingOptions(checkpoint=run_uri, overrides=list(sample_overrides)))
    sampler = Sampler.from_checkpoint(setup.checkpoint, setup.settings)
    rows = []
    for level, (sigma, images) in enumerate(sampler.denoised_per_level(list(range(n)))):
        classes, confidence = digits_quality.classify(images)
        shares = np.bincount(classes, minlength=10) / len(classes)
        rows.append({"level": level, "sigma": round(sigma, 4), "confidence": round(float(confidence.mean()), 3),
                     "class_shares": [round(float(v), 4) for v in shares]})
        print(f"[bench_quality]   level {level:2d}  sigma {sigma:6.3f}  confidence {confidence.mean():.3f}  "
              f"classes 0-9 (%) {' '.join(f'{100 * v:4.1f}' for v in shares)}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "ncsn_ray" / "configs" / "digits.yaml"))
    parser.add_argument("--n", type=int, default=256, help="samples to generate and score")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="training config overrides")
    parser.add_argument("--sample-set", dest="sample_overrides", action="append", default=[],
                        help="sampling.* overrides for generation")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--per-level", type=int, default=0, metavar="N",
                        help="also print the class shares after each noise level for N seeds")
    args = parser.parse_args(argv)
    if args.per_level < 0:
        parser.error(f"--per-level must be 0 (off) or a number of seeds, got {args.per_level}")

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.keep or scratch)
        quiet = lambda message: None  # noqa: E731 - the stage lines are the progress
        args.config = configs.resolve(args.config)
        load_config(args.config)  # a bad path or key fails here, before anything runs
        ensure_prepared("digits", str(work / "data"), log=quiet)
        trained, train_s = stage("train", lambda: train.run(TrainOptions(
            config=args.config, data=str(work / "data"), storage=str(work / "runs"), overrides=args.overrides,
            preview=False), log=quiet))
        samples = str(work / "samples")
        _, sample_s = stage(f"generate {args.n}", lambda: generate.run(GenerateOptions(
            n=args.n, checkpoint=trained["run"], out=samples, overrides=args.sample_overrides), log=quiet))
        lines: list[str] = []
        scores, _ = stage("score", lambda: evaluate.run(EvaluateOptions(samples=samples, metrics="digits",
                                                                        use_ray=False), log=lines.append))
        for line in lines[:-1]:  # the metric table with its calibration rows (the last line is the file path)
            print(line)
        levels = None
        if args.per_level > 0:
            levels, _ = stage(f"per-level class shares of {args.per_level} samples",
                              lambda: per_level_table(trained["run"], args.sample_overrides, args.per_level))
    calibration = scores["digits"]["calibration"]
    scores = scores["metrics"]
    real_fd = calibration["real"]["digits_fd"]
    result = {
        "config": args.config, "overrides": args.overrides, "sample_overrides": args.sample_overrides,
        "steps": trained["step"], "train_seconds": round(train_s, 1), "n": args.n,
        "generate_seconds": round(sample_s, 1),
        "fd": round(scores["digits_fd"], 3), "real_fd": round(real_fd, 3),
        "fd_ratio": round(scores["digits_fd"] / real_fd, 2),
        "confidence": round(scores["digits_confidence"], 3),
        "max_class_share": round(scores["digits_max_class_share"], 3),
        "near_copy_share": round(scores["digits_near_copy_share"], 3),
        "inception_score_analogue": round(scores["digits_is"], 2),
    }
    met = (result["fd_ratio"] <= TARGETS["fd_ratio"] and result["confidence"] >= TARGETS["confidence"]
           and result["max_class_share"] <= TARGETS["max_class_share"] and result["near_copy_share"] == 0)
    print(f"[bench_quality] FD {result['fd']} = {result['fd_ratio']}x real ({result['real_fd']}), confidence "
          f"{result['confidence']}, largest class {100 * result['max_class_share']:.1f}%, near copies "
          f"{100 * result['near_copy_share']:.1f}%: targets {'met' if met else 'NOT met'}")
    print(json.dumps({**result, "targets_met": met, **({"per_level": levels} if levels else {})}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
