"""The README's first look, timed as a user meets it: train the default, then sample 64.

Runs ``python jobs/train.py`` and then ``python jobs/generate.py --n 64`` as subprocesses
in a fresh temporary folder (so the digits are prepared, Ray starts and the run is
trained from nothing, as on a fresh clone; the install is not timed), and prints:

* the wall time of each command and their total, with the training's time to its first
  step and its steady images/s (from the run's ``metrics.jsonl``);
* this machine's plain-loop speed: the default network trained by a bare PyTorch loop
  (``benchmarks/bench_train.py``'s, measured before and after, averaged), and the total
  normalised to the reference machine of the five-minute target (a plain loop of 307 img/s:
  ``total x plain / 307``);
* the quality of the trained run with its config's sampler, as the mean ± standard deviation
  over ``--seed-sets`` disjoint sets of ``--n`` samples (seeds 0-511, 512-1023, 1024-1535 by
  default), on the offline digits metric, against issue 34's targets
  (:data:`ncsn_ray.evaluate.digits.QUALITY_TARGETS`): fidelity (Fréchet distance at most 1.5x
  real digits', precision at least 0.87, confidence at least 0.92) and coverage (recall at
  least 0.87, no class above 13%), near copies no more than real digits' own rate, at most 35
  network evaluations per sample;
* the largest resident memory of one process of the two commands (Ray's included).

    python benchmarks/bench_first_look.py [--keep DIR] [--n 512] [--seed-sets 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_train import yardstick_images_per_s  # noqa: E402
from benchmarks.machine import describe, machine_facts  # noqa: E402
from ncsn_ray.data.format import read_manifest  # noqa: E402
from ncsn_ray.data.ingest import read_images  # noqa: E402
from ncsn_ray.evaluate.digits import QUALITY_TARGETS, target_verdicts  # noqa: E402
from ncsn_ray.evaluate.spread import format_spread  # noqa: E402
from ncsn_ray.io.storage import Storage  # noqa: E402
from ncsn_ray.tune.trial import draw_and_score  # noqa: E402

REFERENCE_PLAIN_IMAGES_PER_S = 307.0  # the machine the five-minute target was set on
TARGET_S = 300.0
MAX_NFE = 35


def timed(command: list[str], cwd: Path, log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {done.returncode}; its output is in {log}")
    return seconds


def plain_speed(folder: Path) -> float:
    data = Storage.from_uri(str(folder / "runs" / "data" / "digits"))
    return yardstick_images_per_s(read_images(data, read_manifest(data)))


def quality_of(run: Path, n: int, sets: int) -> tuple[dict, dict]:
    """``(means, spread)`` of the digits metric over ``sets`` disjoint seed sets of ``n`` samples
    of the run's newest checkpoint, with its config's sampler."""
    result = draw_and_score(str(run), [], n, "digits", seed_sets=sets)
    spread = {("fd_ratio" if key == "score" else key): entry for key, entry in result.spread.items()}
    means = {key: entry["mean"] for key, entry in spread.items()}
    return {**means, "nfe": result.nfe}, spread


def describe_quality(means: dict, spread: dict, n: int, sets: int) -> str:
    """One line per target: the mean ± std, the target and its verdict."""
    verdicts = target_verdicts(means)
    names = {"fd_ratio": "FD / real", "precision": "precision", "recall": "recall", "confidence": "confidence",
             "max_class_share": "largest class", "near_copy_share": "near copies"}
    lines = [f"quality over {sets} seed sets of {n} samples ({means['nfe']} NFE, target <= {MAX_NFE}: "
             f"{'met' if means['nfe'] <= MAX_NFE else 'MISSED'}):"]
    for key, (sense, bound) in QUALITY_TARGETS.items():
        percent = key in ("max_class_share", "near_copy_share")
        limit = (f"real digits' {100 * means[bound]:.2f}%" if isinstance(bound, str)
                 else f"{100 * bound:g}%" if percent else f"{bound:g}")
        lines.append(f"  {names[key]:14s} {format_spread(spread[key], 2 if percent else 3, percent=percent):>18s}  "
                     f"(target {sense} {limit}: {'met' if verdicts[key] else 'MISSED'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", default=None, help="run in this folder and keep it (default: a temporary folder)")
    p.add_argument("--n", type=int, default=512, help="samples per seed set scored for quality")
    p.add_argument("--seed-sets", type=int, default=3, help="disjoint seed sets scored (default: %(default)s)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    facts = machine_facts()
    print(describe(facts), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        wall_start = time.time()
        train_s = timed([sys.executable, str(ROOT / "jobs" / "train.py")], folder, folder / "train.log")
        generate_s = timed([sys.executable, str(ROOT / "jobs" / "generate.py"), "--n", "64"], folder,
                           folder / "generate.log")
        run = folder / "runs" / "digits"
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        windows = [r for r in records if "images_per_s" in r][1:]
        first_step_s = records[0]["loop_started_at"] - wall_start
        train_images_per_s = sum(r["images_per_s"] for r in windows) / max(len(windows), 1)
        print(f"train {train_s:.1f} s (first step after {first_step_s:.1f} s, {train_images_per_s:.0f} img/s), "
              f"generate --n 64 {generate_s:.1f} s", flush=True)

        peak_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        plain_before = plain_speed(folder)
        means, spread = quality_of(run, args.n, args.seed_sets)
        plain = (plain_before + plain_speed(folder)) / 2
    total = train_s + generate_s
    normalised = total * plain / REFERENCE_PLAIN_IMAGES_PER_S
    verdicts = target_verdicts(means)
    quality = {"n": args.n, "seed_sets": args.seed_sets, "nfe": means["nfe"],
               **{key: {"mean": round(e["mean"], 4), "std": round(e["std"], 4), "values": [round(v, 4) for v in e["values"]]}
                  for key, e in spread.items()}}
    result = {
        "benchmark": "first_look", "machine": facts, "train_s": round(train_s, 1), "generate_64_s": round(generate_s, 1),
        "time_to_first_step_s": round(first_step_s, 1), "train_images_per_s": round(train_images_per_s, 1),
        "total_s": round(total, 1), "plain_images_per_s": round(plain, 1),
        "normalised_total_s": round(normalised, 1), "target_s": TARGET_S, "peak_process_rss_mib": round(peak_rss_mib),
        "quality": quality, "quality_targets": {k: bool(v) for k, v in verdicts.items()},
        "quality_targets_met": all(verdicts.values()) and means["nfe"] <= MAX_NFE,
    }
    print(f"\nfirst look: train {train_s:.1f} s + generate 64 {generate_s:.1f} s = {total:.1f} s on this machine "
          f"(plain loop {plain:.0f} img/s)")
    print(f"normalised to a {REFERENCE_PLAIN_IMAGES_PER_S:.0f} img/s machine: {total:.1f} x {plain:.0f} / "
          f"{REFERENCE_PLAIN_IMAGES_PER_S:.0f} = {normalised:.1f} s against the {TARGET_S:.0f} s target "
          f"({'met' if normalised <= TARGET_S else 'missed'})")
    print(f"largest resident memory of one process: {peak_rss_mib:.0f} MiB")
    print(describe_quality(means, spread, args.n, args.seed_sets))
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
