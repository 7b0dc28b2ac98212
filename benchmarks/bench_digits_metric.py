"""The offline digits metric at scale: wall time and peak memory against the number of samples.

``evaluate.py --metrics digits`` scores a whole sample set in one process: precision and recall
compare every sample with every other (k-nearest-neighbour radii), which is quadratic in n, and
near copies compare every sample with the 1797 training digits. For each ``--n`` this runs the
metric in a fresh process on n images (real digits, each with a little noise, so no two are
equal) and prints its wall time and the process's peak resident memory (``ru_maxrss``), with
the machine, so a user can see what a 50,000-sample set costs before asking for one.

    python benchmarks/bench_digits_metric.py [--n 1000 10000 50000] [--json out.json]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    facts = machine_facts()
    print(describe(facts), flush=True)
    rows = []
    for n in args.n:
        done = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"the metric failed at n = {n}: {done.stderr[-2000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"n = {n:>6}: {row['seconds']:7.1f} s, peak resident memory {row['peak_rss_mib']:>6} MiB "
              f"({row['rss_before_mib']} MiB before scoring)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": facts, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
