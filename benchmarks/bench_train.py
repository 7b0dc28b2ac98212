"""Training throughput through jobs/train.py's Ray Train path vs a plain PyTorch loop, one run.

Both sides train the same config (model, global batch size, loss, Adam, EMA, augmentation)
on the same data:

* plain: a single-process loop over the decoded images held in memory;
* Ray: ``ncsn_ray.train.job.run`` (what ``jobs/train.py`` runs) with one worker: Ray Train, Ray
  Data ingest from the Parquet dataset, checkpoints, metrics. Its images/s is read from the
  worker's own ``metrics.jsonl`` windows after the first (warm-up) window, i.e. steady state,
  excluding cluster start-up. Printed beside it: the end-to-end wall time and the time to
  the first step (from ``run`` being called, Ray start-up included, to the worker's first
  optimiser step).

The plain loop runs before and after the Ray run and the two timings are averaged, to damp
drift on a noisy machine. The ratio (Ray images/s) / (plain images/s) is what ingest and
Ray overhead cost: 1.0 means nothing.

    python benchmarks/bench_train.py [--config digits] [--steps 80] [--log-every 20]
        [--num-workers 1] [--use-gpu]

With ``--num-workers 2`` the global batch stays the same and is split across two DDP workers.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ncsn_core import (EMA, LOSSES, apply_overrides, build_model, geometric_sigmas, load_config, loss_options,  # noqa: E402
                       make_optimizer, train_step)
from ncsn_ray import configs  # noqa: E402
from benchmarks.machine import describe, forward_flops, machine_facts  # noqa: E402
from ncsn_core.config import resolve_auto  # noqa: E402
from ncsn_ray.data.format import dataset_max_distance, read_manifest  # noqa: E402
from ncsn_ray.data.prepare import ensure_prepared  # noqa: E402
from ncsn_ray.io.storage import Storage  # noqa: E402
from ncsn_ray.train.job import TrainOptions, run  # noqa: E402
from ncsn_ray.data.ingest import augment, read_images  # noqa: E402


def plain_images_per_s(config, images: torch.Tensor, steps: int, warmup: int, device: torch.device, *,
                       yardstick: bool = False, channels_last: bool = False) -> float:
    """Images/s of a bare single-process loop: the job's optimiser (multi-tensor Adam), or with
    ``yardstick`` PyTorch's default Adam (per-tensor on the CPU), the loop by which the README's
    and the first-look target's machine speeds (e.g. 307 img/s) were measured.
    ``channels_last``: the model and batches in NHWC memory format."""
    torch.manual_seed(0)
    model = build_model(config).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, config.training.ema_decay)
    tc = config.training
    if yardstick:
        opt = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=(tc.beta1, 0.999), weight_decay=tc.weight_decay)
    else:
        opt = make_optimizer(model.parameters(), lr=tc.lr, beta1=tc.beta1, weight_decay=tc.weight_decay)
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels).to(device)
    loss_fn = LOSSES[config.training.loss]
    batch = config.training.batch_size
    data = images.to(device)
    g = torch.Generator().manual_seed(0)
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        idx = torch.randint(0, len(data), (batch,), generator=g).to(device)
        x = augment(data[idx], dequantize=config.data.dequantize, random_flip=config.data.random_flip)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = train_step(model, opt, loss_fn, x, sigmas, ema=ema, grad_clip=config.training.grad_clip,
                         **loss_options(config))
        float(out.loss.detach())  # the Ray loop checks finiteness on the host at log steps; keep work comparable
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


YARDSTICK_OVERRIDES = ["model.ngf=16", "training.batch_size=128"]  # the NCSN digits default when 307 img/s was measured


def yardstick_config():
    """NCSN's digits network (``digits-ncsn.yaml``) with ngf 16 at batch 128: the network of the
    loop by which this project states a machine's speed."""
    return apply_overrides(load_config(str(ROOT / "ncsn_ray" / "configs" / "digits-ncsn.yaml")), YARDSTICK_OVERRIDES,
                           source="the yardstick network")


def yardstick_images_per_s(images: torch.Tensor, steps: int = 40) -> float:
    """This machine's speed as the README states it: the plain loop (PyTorch's default Adam,
    torch's default threads) on :func:`yardstick_config`, whatever the default config is
    now; a machine that runs it at 307 img/s is the one the five-minute first-look target
    was set on."""
    return plain_images_per_s(yardstick_config(), images, steps, warmup=5, device=torch.device("cpu"), yardstick=True)


def lever_table(config, images: torch.Tensor, steps: int) -> list[dict]:
    """The plain loop's img/s under each compute-per-step lever, one at a time, in one run
    (each measured twice, interleaved, best kept)."""
    variants = {
        "PyTorch's default Adam (per-tensor on CPU)": dict(config=config, yardstick=True),
        "multi-tensor Adam (the job's)": dict(config=config),
        "multi-tensor Adam + channels-last": dict(config=config, channels_last=True),
    }
    for batch in (64, 256):
        variants[f"multi-tensor Adam, batch {batch}"] = dict(
            config=apply_overrides(config, [f"training.batch_size={batch}"], source="lever"))
    best: dict[str, float] = {}
    for _ in range(2):
        for name, kwargs in variants.items():
            kwargs = dict(kwargs)
            rate = plain_images_per_s(kwargs.pop("config"), images, steps, warmup=5, device=torch.device("cpu"), **kwargs)
            best[name] = max(best.get(name, 0.0), rate)
    flop = training_flop_per_image(config)
    peak = machine_facts()["fp32_peak_gflops"]
    return [{"lever": name, "images_per_s": round(rate, 1), "gflops": round(rate * flop / 1e9, 1),
             "fraction_of_peak": round(rate * flop / 1e9 / peak, 4)} for name, rate in best.items()]


def training_flop_per_image(config) -> float:
    """FLOP of one training image: the forward pass (counted) times 3 (the backward pass costs
    about twice the forward), at a random noise level."""
    model = build_model(config)
    shape = (1, config.data.channels, config.data.image_size, config.data.image_size)
    return 3.0 * forward_flops(model, (torch.rand(shape), torch.zeros(1, dtype=torch.long)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "ncsn_ray" / "configs" / "digits.yaml"))
    parser.add_argument("--data", default=None, help="prepared dataset (default: digits prepared into a temp folder)")
    parser.add_argument("--steps", type=int, default=80, help="Ray run length (first log window is warm-up)")
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--num-workers", type=int, default=1, help="DDP workers on the Ray side (global batch unchanged)")
    parser.add_argument("--levers", action="store_true",
                        help="print the plain loop's img/s under each compute-per-step lever and exit")
    parser.add_argument("--plain-only", action="store_true",
                        help="print only the plain loop's img/s: this machine's speed, by which README times scale")
    args = parser.parse_args(argv)
    config = load_config(configs.resolve(args.config))
    device = torch.device("cuda" if args.use_gpu else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        data_uri = args.data or str(Path(tmp) / "data")
        if args.data is None:
            ensure_prepared(config.data.dataset, data_uri, log=lambda *a: None)
        storage = Storage.from_uri(data_uri)
        manifest = read_manifest(storage)
        images = read_images(storage, manifest)
        if config.has_auto():  # NCSNv2 configs: resolved from the data, as the training job resolves them
            config, _ = resolve_auto(config, max_distance=dataset_max_distance(storage, manifest)[0],
                                     dimension=manifest.channels * manifest.height * manifest.width)
        timed = max(args.steps - args.log_every, args.log_every)
        if args.levers:
            print(describe())
            for row in lever_table(config, images, timed):
                print(f"{row['lever']:<48} {row['images_per_s']:>7.1f} img/s  {row['gflops']:>5.1f} GFLOP/s  "
                      f"{100 * row['fraction_of_peak']:.1f}% of peak")
            return 0
        if args.plain_only:
            plain_before = yardstick_images_per_s(images, timed)
            facts, flop = machine_facts(), training_flop_per_image(yardstick_config())
            print(f"{describe(facts)}\nplain loop (digits network, ngf 16, batch 128, "
                  f"{torch.get_num_threads()} threads): {plain_before:.1f} img/s = "
                  f"{plain_before * flop / 1e9:.1f} GFLOP/s, {100 * plain_before * flop / 1e9 / facts['fp32_peak_gflops']:.1f}% "
                  "of fp32 peak")
            return 0
        plain_before = plain_images_per_s(config, images, timed, warmup=5, device=device)

        options = TrainOptions(
            config=args.config, data=data_uri, storage=str(Path(tmp) / "runs"), name="bench", steps=args.steps,
            checkpoint_every=args.steps, preview=False, max_failures=0, num_workers=args.num_workers,
            overrides=[f"training.log_every={args.log_every}", "training.eval_every=0"],  # throughput only
            use_gpu=args.use_gpu,
        )
        wall_clock_start, wall = time.time(), time.perf_counter()
        run(options, log=lambda *a: None)
        wall = time.perf_counter() - wall
        lines = (Path(tmp) / "runs" / "bench" / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        time_to_first_step = records[0]["loop_started_at"] - wall_clock_start
        windows = [r for r in records if "images_per_s" in r][1:]  # loss windows, less the warm-up one
        ray_ips = float(np.mean([w["images_per_s"] for w in windows]))
        plain_after = plain_images_per_s(config, images, timed, warmup=5, device=device)

    plain = (plain_before + plain_after) / 2
    facts = machine_facts()
    flop_per_image = training_flop_per_image(config)
    result = {
        "benchmark": "train_ray_vs_plain",
        "config": Path(args.config).stem,
        "device": str(device),
        "batch_size": config.training.batch_size,
        "ray_steps": args.steps,
        "num_workers": args.num_workers,
        "ray_images_per_s": round(ray_ips, 2),
        "ray_window_images_per_s": [w["images_per_s"] for w in windows],
        "ray_wall_seconds_including_startup": round(wall, 1),
        "time_to_first_step_seconds": round(time_to_first_step, 1),
        "plain_images_per_s_before": round(plain_before, 2),
        "plain_images_per_s_after": round(plain_after, 2),
        "ratio": round(ray_ips / plain, 4),
        "training_mflop_per_image": round(flop_per_image / 1e6, 2),
        "plain_gflops": round(plain * flop_per_image / 1e9, 2),
        "ray_gflops": round(ray_ips * flop_per_image / 1e9, 2),
        "fp32_peak_gflops": facts["fp32_peak_gflops"],
    }
    print(f"Ray Train path ({args.num_workers} worker(s)) {ray_ips:.1f} img/s (steady state, windows {result['ray_window_images_per_s']}) / "
          f"plain loop {plain:.1f} img/s (before {plain_before:.1f}, after {plain_after:.1f}) = ratio {result['ratio']:.3f}; "
          f"Ray run wall time incl. start-up {wall:.1f}s for {args.steps} steps; time to first step {time_to_first_step:.1f}s")
    print(f"{describe(facts)}: training costs {flop_per_image / 1e6:.1f} MFLOP per image (forward x 3), so the "
          f"plain loop runs at {result['plain_gflops']:.1f} GFLOP/s ({100 * result['plain_gflops'] / facts['fp32_peak_gflops']:.1f}% "
          f"of peak) and the Ray path at {result['ray_gflops']:.1f} GFLOP/s "
          f"({100 * result['ray_gflops'] / facts['fp32_peak_gflops']:.1f}%)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
