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
* the quality of 512 samples of the trained run with its config's sampler (the offline
  digits metric against the four targets: Fréchet distance at most 3x real digits,
  confidence at least 0.9, no class above 15%, no near copies).

    python benchmarks/bench_first_look.py [--keep DIR] [--n 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
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
from ncsn_ray.evaluate import digits  # noqa: E402
from ncsn_ray.io.storage import Storage  # noqa: E402
from ncsn_ray.tune.trial import digits_score, draw  # noqa: E402

REFERENCE_PLAIN_IMAGES_PER_S = 307.0  # the machine the five-minute target was set on
TARGET_S = 300.0


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


def target_verdicts(q: dict) -> dict[str, bool]:
    """Each of issue 25's four quality targets, met or not (near copies: none at all)."""
    return {"fd_ratio": q["fd_ratio"] <= 3, "confidence": q["confidence"] >= 0.9, "max_class": q["max_class"] <= 0.15,
            "near_copies": q["near_copies"] == 0}


def targets_met(q: dict) -> bool:
    return all(target_verdicts(q).values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", default=None, help="run in this folder and keep it (default: a temporary folder)")
    p.add_argument("--n", type=int, default=512, help="samples scored for quality")
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

        plain_before = plain_speed(folder)
        images, setup, sampler, sampling_s = draw(str(run), [], args.n)
        ratio, extra = digits_score(images)
        real_near_copies = digits.score_with_calibration(images)[1]["real"]["digits_near_copy_share"]
        plain = (plain_before + plain_speed(folder)) / 2
    total = train_s + generate_s
    normalised = total * plain / REFERENCE_PLAIN_IMAGES_PER_S
    quality = {"fd_ratio": round(ratio, 3), "confidence": round(extra["confidence"], 4),
               "max_class": round(extra["max_class_share"], 4), "near_copies": round(extra["near_copy_share"], 4),
               "real_digits_near_copies": round(real_near_copies, 4), "n": args.n, "nfe": sampler.nfe_per_sample}
    result = {
        "benchmark": "first_look", "machine": facts, "train_s": round(train_s, 1), "generate_64_s": round(generate_s, 1),
        "time_to_first_step_s": round(first_step_s, 1), "train_images_per_s": round(train_images_per_s, 1),
        "total_s": round(total, 1), "plain_images_per_s": round(plain, 1),
        "normalised_total_s": round(normalised, 1), "target_s": TARGET_S, "quality": quality,
        "quality_targets_met": targets_met(quality),
    }
    print(f"\nfirst look: train {train_s:.1f} s + generate 64 {generate_s:.1f} s = {total:.1f} s on this machine "
          f"(plain loop {plain:.0f} img/s)")
    print(f"normalised to a {REFERENCE_PLAIN_IMAGES_PER_S:.0f} img/s machine: {total:.1f} x {plain:.0f} / "
          f"{REFERENCE_PLAIN_IMAGES_PER_S:.0f} = {normalised:.1f} s against the {TARGET_S:.0f} s target "
          f"({'met' if normalised <= TARGET_S else 'missed'})")
    verdict = {key: "met" if ok else "MISSED" for key, ok in target_verdicts(quality).items()}
    copies = round(quality["near_copies"] * args.n)
    print(f"quality of {args.n} samples ({quality['nfe']} NFE): FD {ratio:.2f}x real (<= 3x: {verdict['fd_ratio']}), "
          f"confidence {quality['confidence']:.3f} (>= 0.9: {verdict['confidence']}), largest class "
          f"{quality['max_class']:.1%} (<= 15%: {verdict['max_class']}), near copies {copies} of {args.n} = "
          f"{quality['near_copies']:.1%} (none: {verdict['near_copies']}; real digits by the same rule: "
          f"{real_near_copies:.1%})")
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
