"""How feature extraction for FID/IS/KID scales with actors.

    python benchmarks/bench_evaluate.py [--n 192] [--shard-size 16] [--actors 1,2] [--cpus-per-actor 1]
        [--inception-weights PATH] [--json]

Writes a sample set of ``--n`` 8x8 digits (upsampled to 299x299 inside the network, so the
cost per image is that of any image size) and a reference of the same size to a temporary
folder, then times ``evaluate_on_ray`` (metrics ``isc``: features of the samples only, no
reference cache involved) with each pool size in ``--actors``, on one embedded Ray instance.
Printed per pool size: images/s of feature extraction and the speed-up over one actor, with
the machine named. Without ``--inception-weights`` the network has random weights (the real
file cannot always be downloaded): the cost is the same, the scores meaningless.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=192)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--actors", default="1,2")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import ray

    from machine import describe
    from ncsn_ray.testing.inception import random_inception_weights
    from ncsn_ray.cluster import init_ray
    from ncsn_ray.evaluate.job import evaluate_on_ray
    from ncsn_ray.io.storage import Storage
    from support.data import digits_uint8, write_sample_set

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        folder = Path(tmp)
        weights = args.inception_weights or str(random_inception_weights(folder))
        samples = folder / "samples"
        images = digits_uint8(args.n) if args.n <= 1797 else digits_uint8(1797).repeat(-(-args.n // 1797), 0)[:args.n]
        write_sample_set(Storage.from_uri(str(samples)), images, shard_size=args.shard_size)
        print(f"[bench] {describe()}; {args.n} images in shards of {args.shard_size}, {args.cpus_per_actor:g} CPU per "
              f"actor, {args.batch_size} images per network pass", flush=True)
        init_ray(log=lambda *_: None)
        try:
            for actors in [int(a) for a in args.actors.split(",")]:
                started = time.perf_counter()
                result = evaluate_on_ray(str(samples), None, metrics="isc", inception_weights=weights,
                                         batch_size=args.batch_size, num_actors=actors,
                                         cpus_per_actor=args.cpus_per_actor, log=lambda *_: None)
                seconds = time.perf_counter() - started
                extraction = result["feature_extraction"]["sample_seconds"]
                rows.append({"actors": actors, "used": result["feature_extraction"]["actors"],
                             "extraction_s": extraction, "job_s": round(seconds, 2),
                             "images_per_s": round(args.n / extraction, 2)})
                (samples / "_scores.json").unlink()
        finally:
            ray.shutdown()
    base = rows[0]["images_per_s"]
    print(f"{'actors':>6} {'used':>5} {'extraction s':>13} {'images/s':>9} {'x 1 actor':>10} {'whole job s':>12}")
    for row in rows:
        row["speedup"] = round(row["images_per_s"] / base, 2)
        print(f"{row['actors']:>6} {row['used']:>5} {row['extraction_s']:>13.1f} {row['images_per_s']:>9.1f} "
              f"{row['speedup']:>10.2f} {row['job_s']:>12.1f}")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
