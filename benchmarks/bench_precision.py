"""What bf16 training and gradient accumulation change in memory and throughput.

    python benchmarks/bench_precision.py [--config digits-ncsnv2] [--batch 64] [--micro 16] [--steps 20]
        [--device cpu|cuda] [--image-size N] [--json]

Each setting runs in its own fresh Python process (so that one setting's memory high-water
mark is not another's): the config's network and optimiser, ``--steps`` training steps of
``ncsn_core.train_step`` on random images of the config's shape at the global batch
``--batch``, after 3 warm-up steps. Settings: fp32 and bf16, each on the whole batch and
accumulated in micro-batches of ``--micro``.

Printed per setting: images/s and its ratio to fp32 on the whole batch (same run, same
machine), and the memory the training step needs beyond the model and optimiser: on CUDA
``torch.cuda.max_memory_allocated`` minus the allocation before the first step; on the CPU
the growth of the process's peak resident set (``ru_maxrss``) over the same span, which
also counts allocator caching, so read it as an upper bound.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SETTINGS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(config_name: str, batch: int, micro: int | None, precision: str, steps: int, device_name: str,
            image_size: int | None) -> dict:
    """One setting, in this process: ``{"images_per_s", "step_memory_mib", ...}``."""
    import torch

    from ncsn_core import LOSSES, apply_overrides, build_model, geometric_sigmas, load_config, make_optimizer, train_step
    from ncsn_ray import configs

    config = load_config(configs.resolve(config_name))
    if image_size:
        config = apply_overrides(config, [f"data.image_size={image_size}"])
    if config.has_auto():  # the ladder's values do not change the cost of a step
        config = apply_overrides(config, ["noise.sigma_max=1.0", "noise.num_levels=10", "sampling.eps=1e-5"])
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = build_model(config).to(device)
    optimizer = make_optimizer(model.parameters(), lr=1e-4)
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels).to(device)
    shape = (batch, config.data.channels, config.data.image_size, config.data.image_size)
    x = torch.rand(shape, device=device)
    parts = batch // micro if micro else 1

    def step() -> None:
        train_step(model, optimizer, LOSSES["dsm"], x, sigmas, micro_batches=parts, precision=precision)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _peak_rss_mib()
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        memory = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        memory = _peak_rss_mib() - before
    seconds = time.perf_counter() - started
    return {"precision": precision, "micro_batch": micro or batch, "micro_batches": parts,
            "images_per_s": round(steps * batch / seconds, 1), "step_memory_mib": round(memory, 1),
            "parameters": sum(p.numel() for p in model.parameters())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="digits-ncsnv2")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--micro", type=int, default=16, help="micro-batch of the accumulated settings")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=None, help="override data.image_size (e.g. 32)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", nargs=2, metavar=("PRECISION", "ACCUMULATE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch % args.micro:
        parser.error(f"--micro {args.micro} must divide --batch {args.batch}")
    if args.one:  # a child process: one setting, a JSON line out
        precision, accumulate = args.one[0], args.one[1] == "1"
        print(json.dumps(measure(args.config, args.batch, args.micro if accumulate else None, precision,
                                 args.steps, args.device, args.image_size)))
        return 0

    from machine import describe

    print(f"[bench] {describe()}; config {args.config}"
          + (f" at {args.image_size}x{args.image_size}" if args.image_size else "")
          + f", global batch {args.batch}, {args.steps} timed steps, device {args.device}", flush=True)
    rows = []
    for precision, accumulate in SETTINGS:
        command = [sys.executable, __file__, "--one", precision, "1" if accumulate else "0", "--config", args.config,
                   "--batch", str(args.batch), "--micro", str(args.micro), "--steps", str(args.steps),
                   "--device", args.device] + (["--image-size", str(args.image_size)] if args.image_size else [])
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"{'precision':9} {'micro-batch':>11} {'images/s':>9} {'x fp32':>7} {'step memory MiB':>16} {'x fp32':>7}")
    for row in rows:
        row["speed_ratio"] = round(row["images_per_s"] / base["images_per_s"], 3)
        row["memory_ratio"] = round(row["step_memory_mib"] / max(base["step_memory_mib"], 1e-9), 3)
        print(f"{row['precision']:9} {row['micro_batch']:>11} {row['images_per_s']:>9.1f} {row['speed_ratio']:>7.2f} "
              f"{row['step_memory_mib']:>16.1f} {row['memory_ratio']:>7.2f}")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
