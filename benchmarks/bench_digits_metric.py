"""The offline digits metric at scale: wall time and peak memory against the number of samples.

With ``--inception-prc N ...`` also the Inception path's precision and recall (torch-fidelity's
``prc_features_to_metric`` with this project's settings, :func:`ncsn_ray.evaluate.scores.metric_kwargs`)
on N random 2048-d feature rows against N reference rows: the features' own memory
(2 x N x 2048 float32) plus the distance blocks, without the Inception network (its weights
cannot be downloaded everywhere; extraction is measured by bench_evaluate.py).

``evaluate.py --metrics digits`` scores a whole sample set in one process: precision and recall
compare every sample with every other (k-nearest-neighbour radii), which is quadratic in n, and
near copies compare every sample with the 1797 training digits. For each ``--n`` this runs the
metric in a fresh process on n images (real digits, each with a little noise, so no two are
equal) and prints its wall time and the process's peak resident memory (``ru_maxrss``), with
the machine, so a user can see what a 50,000-sample set costs before asking for one.

    python benchmarks/bench_digits_metric.py [--n 1000 10000 50000] [--inception-prc 10000 50000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, machine_facts  # noqa: E402

CHILD = """
import json, resource, sys, time
import numpy as np
from ncsn_ray.evaluate import digits
n = int(sys.argv[1])
real, _ = digits.digits_uint8()
rng = np.random.default_rng(0)
images = np.clip(real[rng.integers(0, len(real), n)].astype(np.int16) + rng.integers(-12, 13, (n, 8, 8)), 0, 255)
images = images.astype(np.uint8)
digits.judge()  # the classifier's training is not the metric's cost
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
scores = digits.score(images)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "seconds": round(seconds, 2), "peak_rss_mib": round(peak / 1024),
                  "rss_before_mib": round(before / 1024), "recall": scores["digits_recall"]}))
"""

PRC_CHILD = """
import json, resource, sys, time
import torch
from torch_fidelity.metric_prc import prc_features_to_metric
from ncsn_ray.evaluate.scores import metric_kwargs
n = int(sys.argv[1])
generator = torch.Generator().manual_seed(0)
samples = torch.randn(n, 2048, generator=generator)
reference = torch.randn(n, 2048, generator=generator) + 0.05
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
scores = prc_features_to_metric(samples, reference, **metric_kwargs(n, n, 1000))
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "seconds": round(seconds, 2), "peak_rss_mib": round(peak / 1024),
                  "rss_before_mib": round(before / 1024), "recall": scores["recall"]}))
"""


def measure(child: str, n: int, what: str) -> dict:
    done = subprocess.run([sys.executable, "-c", child, str(n)], capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed at n = {n}: {done.stderr[-2000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{what}, n = {n:>6}: {row['seconds']:7.1f} s, peak resident memory {row['peak_rss_mib']:>6} MiB "
          f"({row['rss_before_mib']} MiB before scoring)", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--inception-prc", type=int, nargs="*", default=[], metavar="N",
                        help="also the Inception path's precision/recall on N random feature rows")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    facts = machine_facts()
    print(describe(facts), flush=True)
    rows = [measure(CHILD, n, "digits metric") for n in args.n]
    prc_rows = [measure(PRC_CHILD, n, "Inception precision/recall") for n in args.inception_prc]
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": facts, "rows": rows, "inception_prc": prc_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
