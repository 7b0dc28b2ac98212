"""Generation pipeline throughput relative to calling the core sampler directly, in one run.

Same model, batch size, steps and seeds on both sides:

* direct: one process calling :class:`ncsn_ray.sample.sampler.Sampler` (``ncsn_core``'s annealed
  Langevin with ``PerSampleNoise``) batch by batch; nothing written;
* pipeline: ``ncsn_ray.sample.generate.run`` (what ``jobs/generate.py`` runs: Ray Data actor pool,
  PNG encoding, Parquet shards written to a local folder, manifest).

Two comparisons, each on the same cores:

1. one actor (1 CPU, 1 torch thread) vs the direct sampler on 1 thread: what the pipeline
   costs (goal >= 0.9);
2. the default command (its default actor pool and shard size on this machine) vs the
   direct sampler given every core as torch threads: whether the default uses the machine
   at least as well as the simplest alternative (> 1 means it uses it better).

Ray is started (and a small warm-up job run) before anything is timed, so cluster start-up
is excluded; creating the actor pool and loading the model in each actor are part of every
pipeline run, as they are for a real job. ``in-actor`` counts only the time actors spent
inside their calls (sampling, encoding, writing).

    python benchmarks/bench_generate.py [--checkpoint URI] [--config digits] [--n 64]
        [--batch-size 16] [--steps-per-level 5] [--repeats 2]
    python benchmarks/bench_generate.py --checkpoint runs/digits --n 512 --sampler-ratio [--set sampling.method=pc ...]

Without ``--checkpoint`` the config's network with random weights is used (the speed does
not depend on the weights). Prints one line per measurement and, last, a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ncsn_core import build_model, geometric_sigmas, load_config, save_checkpoint  # noqa: E402
from ncsn_ray import configs  # noqa: E402
from ncsn_ray.sample import generate  # noqa: E402
from ncsn_ray.train.checkpoints import pin_checkpoint  # noqa: E402
from ncsn_ray.sample.generate import GenerateOptions, default_shard_size  # noqa: E402
from ncsn_ray.cluster import init_ray  # noqa: E402
from ncsn_ray.sample.pipeline import ActorPlan  # noqa: E402
from ncsn_ray.sample.sampler import Sampler, SamplerSettings, override_sampling  # noqa: E402


ALD = "sampling.method=annealed_langevin"  # the pipeline comparison times the paper's sampler at T steps


def sampler_ratio(checkpoint_uri: str, n: int, tmp_path: Path, fast: list[str]) -> dict:
    """``jobs/generate.py --n n`` as a user runs it (default actors, batch and shards) with the
    checkpoint config's sampler (changed by the ``fast`` overrides), against the same command
    with annealed Langevin at the config's T; samples/s of each and their ratio (the same
    cores, one run)."""
    rows = {}
    for name, overrides in (("config_sampler", fast), ("annealed_langevin", [ALD])):
        options = GenerateOptions(n=n, checkpoint=checkpoint_uri, out=str(tmp_path / f"ratio-{name}"),
                                  overrides=overrides)
        started = time.perf_counter()
        summary = generate.run(options, log=lambda _msg: None)
        seconds = time.perf_counter() - started
        manifest = json.loads((tmp_path / f"ratio-{name}" / "_manifest.json").read_text())
        rows[name] = {"seconds": round(seconds, 2), "samples_per_s": round(n / seconds, 3),
                      "nfe_per_sample": manifest["nfe_per_sample"], "method": manifest["sampler"].get(
                          "method", "annealed_langevin"), "actors_used": summary.get("actors_used")}
        print(f"generate.py --n {n}, {rows[name]['method']} ({rows[name]['nfe_per_sample']} NFE/sample): "
              f"{seconds:.1f} s = {n / seconds:.2f} samples/s", flush=True)
    ratio = rows["config_sampler"]["samples_per_s"] / rows["annealed_langevin"]["samples_per_s"]
    print(f"throughput ratio, config sampler / annealed Langevin: {ratio:.2f} "
          f"(NFE ratio {rows['annealed_langevin']['nfe_per_sample'] / rows['config_sampler']['nfe_per_sample']:.1f})")
    return {"sampler_ratio": round(ratio, 3), **rows}


def random_checkpoint(config_name: str, folder: Path) -> str:
    config = load_config(configs.resolve(config_name))
    if config.has_auto():
        raise SystemExit(f"{config_name}: its auto values come from a dataset; pass --checkpoint of a trained run "
                         "or a config without auto values (e.g. digits-ncsn)")
    torch.manual_seed(0)
    model = build_model(config)
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    path = folder / "run" / "checkpoint_000000" / "checkpoint.pt"
    save_checkpoint(path, model=model, config=config, sigmas=sigmas, step=0)
    return str(path)


def time_direct(checkpoint_uri: str, args: argparse.Namespace, shard_size: int, threads: int) -> float:
    """Seconds for the sampler on all ``n`` seeds, shard by shard, batch by batch, ``threads`` threads."""
    checkpoint, _ = pin_checkpoint(checkpoint_uri)
    config = override_sampling(checkpoint.config, [ALD], steps_per_level=args.steps_per_level)
    sampler = Sampler.from_checkpoint(checkpoint, SamplerSettings.from_config(config))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sampler.sample(list(range(min(args.batch_size, args.n))))  # warm-up
        started = time.perf_counter()
        for shard in range(0, args.n, shard_size):
            seeds = list(range(shard, min(shard + shard_size, args.n)))
            for b in range(0, len(seeds), args.batch_size):
                sampler.sample(seeds[b : b + args.batch_size])
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(previous)


def time_pipeline(checkpoint_uri: str, args: argparse.Namespace, actors: ActorPlan, shard_size: int | None,
                  out: Path) -> dict:
    options = GenerateOptions(n=args.n, checkpoint=checkpoint_uri, out=str(out), batch_size=args.batch_size,
                              shard_size=shard_size, steps_per_level=args.steps_per_level, actors=actors,
                              overrides=[ALD])
    started = time.perf_counter()
    summary = generate.run(options, log=lambda _msg: None)
    return {"seconds": time.perf_counter() - started, **summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint URI (default: the config's network, random weights)")
    parser.add_argument("--config", default="digits-ncsn",
                        help="config of the random-weight network when no --checkpoint is given (no auto values)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps-per-level", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the best time of each side is kept")
    parser.add_argument("--sampler-ratio", action="store_true",
                        help="instead: generate.py --n N with the config's sampler against annealed Langevin "
                             "(needs --checkpoint)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="with --sampler-ratio: sampling.key=value overrides of the first side's sampler")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    shard_size = default_shard_size(args.n, args.batch_size, cores)

    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        tmp_path = Path(tmp)
        checkpoint_uri = args.checkpoint or random_checkpoint(args.config, tmp_path)
        import ray

        started_ray = init_ray(num_cpus=cores, log=lambda _msg: None)
        if args.sampler_ratio:
            try:
                print(json.dumps(sampler_ratio(checkpoint_uri, args.n, tmp_path, args.overrides)))
            finally:
                if started_ray:
                    ray.shutdown()
            return 0
        try:
            # Warm-up: worker processes, imports, file caches. Not timed.
            warm = GenerateOptions(n=2, checkpoint=checkpoint_uri, out=str(tmp_path / "warm"), batch_size=2,
                                   shard_size=2, steps_per_level=1, actors=ActorPlan(num_actors=1), overrides=[ALD])
            generate.run(warm, log=lambda _msg: None)
            runs: dict[str, list] = {"direct_1": [], "direct_all": [], "one_actor": [], "default": []}
            for r in range(args.repeats):  # alternate, keep the best of each (a busy machine only slows runs down)
                runs["direct_1"].append(time_direct(checkpoint_uri, args, shard_size, 1))
                runs["one_actor"].append(time_pipeline(checkpoint_uri, args, ActorPlan(num_actors=1), shard_size,
                                                       tmp_path / f"one-{r}"))
                runs["direct_all"].append(time_direct(checkpoint_uri, args, shard_size, cores))
                runs["default"].append(time_pipeline(checkpoint_uri, args, ActorPlan(), None, tmp_path / f"default-{r}"))
        finally:
            if started_ray:
                ray.shutdown()

    n = args.n
    direct_1, direct_all = min(runs["direct_1"]), min(runs["direct_all"])
    one = min(runs["one_actor"], key=lambda run: run["seconds"])
    default = min(runs["default"], key=lambda run: run["seconds"])
    rate = {
        "direct_1_thread": n / direct_1,
        "direct_all_threads": n / direct_all,
        "one_actor": n / one["seconds"],
        "one_actor_in_actor": n / one["actor_seconds"],
        "default_command": n / default["seconds"],
    }
    ratios = {
        "one_actor_vs_direct_1_thread": rate["one_actor"] / rate["direct_1_thread"],
        "one_actor_in_actor_vs_direct_1_thread": rate["one_actor_in_actor"] / rate["direct_1_thread"],
        "default_command_vs_direct_all_threads": rate["default_command"] / rate["direct_all_threads"],
    }
    print(f"settings: n={n}, batch {args.batch_size}, shards of {shard_size}, T={args.steps_per_level}, "
          f"config {args.config}, checkpoint {'given' if args.checkpoint else 'random weights'}, {cores} cores")
    print(f"direct sampler, 1 thread        : {n} samples in {direct_1:.2f} s = {rate['direct_1_thread']:.2f} samples/s")
    print(f"pipeline, 1 actor               : {one['seconds']:.2f} s = {rate['one_actor']:.2f} samples/s -> ratio "
          f"{ratios['one_actor_vs_direct_1_thread']:.3f} (in-actor {one['actor_seconds']:.2f} s -> "
          f"{ratios['one_actor_in_actor_vs_direct_1_thread']:.3f})")
    print(f"direct sampler, {cores} threads       : {direct_all:.2f} s = {rate['direct_all_threads']:.2f} samples/s")
    print(f"default command ({default['actors_used']} actors used) : {default['seconds']:.2f} s = "
          f"{rate['default_command']:.2f} samples/s -> ratio {ratios['default_command_vs_direct_all_threads']:.3f}")
    result = {
        "n": n, "repeats": args.repeats, "batch_size": args.batch_size, "shard_size": shard_size,
        "steps_per_level": args.steps_per_level, "config": args.config, "cores": cores,
        "direct_1_thread_seconds": round(direct_1, 4), "direct_all_threads_seconds": round(direct_all, 4),
        "one_actor_seconds": round(one["seconds"], 4), "one_actor_actor_seconds": one["actor_seconds"],
        "default_seconds": round(default["seconds"], 4), "default_actors_used": default["actors_used"],
        **{f"{k}_samples_per_s": round(v, 4) for k, v in rate.items()},
        **{k: round(v, 4) for k, v in ratios.items()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
