"""Annealed Langevin throughput relative to bare network throughput, in one run.

For each config: time ``annealed_langevin`` (L levels x T steps at batch B) and time the
same number L*T of bare forward passes of the same network at batch B, both under
``torch.inference_mode``. The ratio (sampler images/s) / (bare images/s) says what the loop
around the network costs: 1.0 means nothing. Runs alternate and the best of ``--repeats``
is kept for each side, to damp a noisy machine.

    python benchmarks/bench_sampler.py [--configs digits-ncsn,mnist] [--device cpu|cuda]
        [--batch-size B] [--steps-per-level T] [--repeats R] [--precision fp32|bf16] [--compile]

Prints one line per config and, last, one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.machine import describe, forward_flops, machine_facts  # noqa: E402
from ncsn_core import annealed_langevin, build_model, geometric_sigmas, initial_samples, load_config, make_score_fn  # noqa: E402
from ncsn_ray import configs  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_config(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    config = load_config(configs.resolve(name))
    if config.has_auto():
        raise SystemExit(f"{name}: its auto values come from a dataset; choose a config without them (e.g. digits-ncsn)")
    model = build_model(config).to(device).eval()
    score_fn = make_score_fn(model, precision=args.precision, compile=args.compile)
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels).to(device)
    batch = args.batch_size or (config.sampling.batch_size if device.type == "cuda" else 16)
    shape = (batch, config.data.channels, config.data.image_size, config.data.image_size)
    steps = config.noise.num_levels * args.steps_per_level
    g = torch.Generator(device=device).manual_seed(0)
    x0 = initial_samples(shape, generator=g, device=device)
    levels = torch.zeros(batch, dtype=torch.long, device=device)

    def run_sampler() -> float:
        _sync(device)
        t = time.perf_counter()
        annealed_langevin(score_fn, x0, sigmas, steps_per_level=args.steps_per_level, eps=config.sampling.eps, generator=g)
        _sync(device)
        return time.perf_counter() - t

    @torch.inference_mode()
    def run_bare() -> float:
        x = x0.clone()
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            score_fn(x, levels)
        _sync(device)
        return time.perf_counter() - t

    run_bare(), run_sampler()  # warm-up (and compilation)
    sampler_times, bare_times = [], []
    for _ in range(args.repeats):
        bare_times.append(run_bare())
        sampler_times.append(run_sampler())
    t_bare, t_sampler = min(bare_times), min(sampler_times)
    result = {
        "config": name,
        "device": str(device),
        "batch_size": batch,
        "forward_passes": steps,
        "bare_seconds": round(t_bare, 4),
        "sampler_seconds": round(t_sampler, 4),
        "bare_images_per_s": round(batch / t_bare, 3),
        "sampler_images_per_s": round(batch / t_sampler, 3),
        "ratio": round(t_bare / t_sampler, 4),
    }
    # Compute efficiency: the network's counted FLOP per forward pass, at the sampler's rate.
    flop = forward_flops(model, (x0[:1], levels[:1]))
    result["mflop_per_forward"] = round(flop / 1e6, 2)
    result["sampler_gflops"] = round(steps * batch / t_sampler * flop / 1e9, 2)
    peak = machine_facts()["fp32_peak_gflops"] if device.type == "cpu" else None
    result["fraction_of_fp32_peak"] = round(result["sampler_gflops"] / peak, 4) if peak else None
    print(
        f"{name:>7} {device}: batch {batch}, {steps} steps: sampler {result['sampler_images_per_s']:.3f} img/s "
        f"({t_sampler:.3f}s) / bare network {result['bare_images_per_s']:.3f} img/s ({t_bare:.3f}s) "
        f"= ratio {result['ratio']:.3f}; {result['mflop_per_forward']:.1f} MFLOP per forward, sampler at "
        f"{result['sampler_gflops']:.1f} GFLOP/s" + (f" ({100 * result['fraction_of_fp32_peak']:.1f}% of the CPU's "
                                                      f"fp32 peak {peak:.0f})" if peak else ""),
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="digits-ncsn,mnist", help="configs without auto values")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's (16 on CPU)")
    parser.add_argument("--steps-per-level", type=int, default=None, help="default: 100 on CUDA, 2 on CPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.steps_per_level is None:
        args.steps_per_level = 100 if device.type == "cuda" else 2
    if device.type == "cpu":
        print(describe(), flush=True)
    results = [bench_config(name.strip(), args, device) for name in args.configs.split(",") if name.strip()]
    print(json.dumps({"benchmark": "sampler_vs_bare_network", "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
