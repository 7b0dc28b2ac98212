"""Generation pipeline throughput relative to calling the core sampler directly.

Same model, batch size, steps and seeds on both sides:

* direct: one process, one thread (what one actor gets), ``ncsn_core.initial_samples`` +
  ``annealed_langevin`` with ``PerSampleNoise`` on each batch of seeds; nothing written;
* pipeline: ``ncsn_ray.generation.generate_samples`` (Ray Data actor pool, PNG encoding,
  Parquet shards written to a local folder, manifest) with 1 actor, then with 2 actors.

Ray is started (and a small warm-up job run) before anything is timed, so cluster start-up
is excluded; creating the actor pool and loading the model in each actor are part of every
pipeline run, as they are for a real job. Ratios are (pipeline samples/s) / (direct
samples/s): 1.0 for one actor means the pipeline costs nothing; 2.0 is the ideal for two
actors on two free cores. ``in-actor`` counts only the time actors spent inside their calls
(sampling, encoding, writing), i.e. the steady state without pool start-up.

    python benchmarks/bench_generate.py [--checkpoint URI] [--config digits] [--n 64]
        [--batch-size 16] [--shard-size 16] [--steps-per-level 5] [--repeats 2]

Without ``--checkpoint`` the config's network with random weights is used (the speed does
not depend on the weights). Prints one line per measurement and, last, a JSON object.
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

import torch  # noqa: E402

from ncsn_core import (  # noqa: E402
    PerSampleNoise,
    annealed_langevin,
    build_model,
    geometric_sigmas,
    initial_samples,
    load_config,
    make_score_fn,
    save_checkpoint,
)
from ncsn_ray.generation import ActorPlan, GenerateOptions, ensure_ray, generate_samples, pin_checkpoint  # noqa: E402


def random_checkpoint(config_name: str, folder: Path) -> str:
    config = load_config(ROOT / "jobs" / "configs" / f"{config_name}.yaml")
    torch.manual_seed(0)
    model = build_model(config)
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    path = folder / "run" / "checkpoint_000000" / "checkpoint.pt"
    save_checkpoint(path, model=model, config=config, sigmas=sigmas, step=0)
    return str(path)


def time_direct(checkpoint_uri: str, args: argparse.Namespace) -> float:
    """Seconds for the core sampler on all ``n`` seeds, batch by batch, one thread."""
    checkpoint, _ = pin_checkpoint(checkpoint_uri)
    model = checkpoint.build_model(use_ema=True)
    score_fn = make_score_fn(model)
    sigmas = checkpoint.sigmas
    cfg = checkpoint.config
    shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    eps = cfg.sampling.eps

    def run(seeds: list[int]) -> None:
        noise = PerSampleNoise(seeds, shape)
        x0 = initial_samples((len(seeds), *shape), kind=cfg.sampling.init, noise=noise)
        annealed_langevin(score_fn, x0, sigmas, steps_per_level=args.steps_per_level, eps=eps, noise=noise)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(list(range(min(args.batch_size, args.n))))  # warm-up
        started = time.perf_counter()
        for shard in range(0, args.n, args.shard_size):
            seeds = list(range(shard, min(shard + args.shard_size, args.n)))
            for b in range(0, len(seeds), args.batch_size):
                run(seeds[b : b + args.batch_size])
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)


def time_pipeline(checkpoint_uri: str, args: argparse.Namespace, actors: int, out: Path) -> dict:
    options = GenerateOptions(
        n=args.n,
        checkpoint=checkpoint_uri,
        out=str(out),
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        steps_per_level=args.steps_per_level,
        actors=ActorPlan(num_actors=actors),
    )
    started = time.perf_counter()
    summary = generate_samples(options, log=lambda _msg: None)
    return {"seconds": time.perf_counter() - started, **summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint URI (default: the config's network, random weights)")
    parser.add_argument("--config", default="digits")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--steps-per-level", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the best time of each side is kept")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        tmp_path = Path(tmp)
        checkpoint_uri = args.checkpoint or random_checkpoint(args.config, tmp_path)
        import ray

        started_ray = ensure_ray(num_cpus=2, object_store_memory=150_000_000)
        try:
            # Warm-up: worker processes, imports, file caches. Not timed.
            warm = GenerateOptions(n=2, checkpoint=checkpoint_uri, out=str(tmp_path / "warm"), batch_size=2,
                                   shard_size=2, steps_per_level=1, actors=ActorPlan(num_actors=1))
            generate_samples(warm, log=lambda _msg: None)
            directs, ones, twos = [], [], []
            for r in range(args.repeats):  # alternate, keep the best of each (a busy machine only slows runs down)
                directs.append(time_direct(checkpoint_uri, args))
                ones.append(time_pipeline(checkpoint_uri, args, 1, tmp_path / f"one-{r}"))
                twos.append(time_pipeline(checkpoint_uri, args, 2, tmp_path / f"two-{r}"))
            direct_s = min(directs)
            one = min(ones, key=lambda run: run["seconds"])
            two = min(twos, key=lambda run: run["seconds"])
        finally:
            if started_ray:
                ray.shutdown()

    n = args.n
    direct = n / direct_s
    rows = {
        "direct_samples_per_s": direct,
        "one_actor_samples_per_s": n / one["seconds"],
        "one_actor_in_actor_samples_per_s": n / one["actor_seconds"],
        "two_actors_samples_per_s": n / two["seconds"],
        "two_actors_in_actor_samples_per_s_each": n / two["actor_seconds"],
    }
    ratios = {
        "one_actor_vs_direct": rows["one_actor_samples_per_s"] / direct,
        "one_actor_in_actor_vs_direct": rows["one_actor_in_actor_samples_per_s"] / direct,
        "two_actors_vs_direct": rows["two_actors_samples_per_s"] / direct,
    }
    print(f"settings: n={n}, batch {args.batch_size}, shards of {args.shard_size}, T={args.steps_per_level}, "
          f"config {args.config}, checkpoint {'given' if args.checkpoint else 'random weights'}")
    print(f"direct core sampler, 1 thread : {n} samples in {direct_s:.2f} s = {direct:.2f} samples/s")
    print(f"pipeline, 1 actor             : {n} samples in {one['seconds']:.2f} s = {rows['one_actor_samples_per_s']:.2f} "
          f"samples/s -> ratio {ratios['one_actor_vs_direct']:.3f}")
    print(f"  in-actor time only          : {one['actor_seconds']:.2f} s = {rows['one_actor_in_actor_samples_per_s']:.2f} "
          f"samples/s -> ratio {ratios['one_actor_in_actor_vs_direct']:.3f}")
    print(f"pipeline, 2 actors            : {n} samples in {two['seconds']:.2f} s = {rows['two_actors_samples_per_s']:.2f} "
          f"samples/s -> ratio {ratios['two_actors_vs_direct']:.3f} (ideal 2.0 on 2 free cores; "
          f"{two['actors_used']} actors returned shards)")
    result = {
        "n": n,
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "steps_per_level": args.steps_per_level,
        "config": args.config,
        "direct_seconds": round(direct_s, 4),
        "one_actor_seconds": round(one["seconds"], 4),
        "one_actor_actor_seconds": one["actor_seconds"],
        "two_actors_seconds": round(two["seconds"], 4),
        "two_actors_actor_seconds": two["actor_seconds"],
        "two_actors_used": two["actors_used"],
        **{k: round(v, 4) for k, v in rows.items()},
        **{k: round(v, 4) for k, v in ratios.items()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
