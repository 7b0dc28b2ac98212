"""Distributed NCSN training with Ray Train (Train V2 API).

``run_training`` (driver) validates everything it can before any worker starts, then runs a
``ray.train.torch.TorchTrainer``. ``train_loop_per_worker`` is the per-worker loop: DDP
over gloo (CPU) or NCCL (GPU), Adam, EMA, the core's score-matching loss, and checkpoints
reported through ``ray.train.report`` to ``RunConfig(storage_path, name)``.

Run folder ``{storage}/{name}/``:

* ``checkpoint_XXXXXXXX/checkpoint.pt`` + ``step.txt``: Ray Train checkpoints (the last
  ``keep_checkpoints`` are kept). Re-running with the same storage and name resumes from
  the newest one, with step counter, optimiser and EMA restored.
* ``metrics.jsonl``: one JSON object per log line (step, loss, loss per sigma, images/s).
* ``samples/step_XXXXXXXX.png``: a grid sampled from the EMA model at each checkpoint.

Step semantics: ``training.steps`` is the total number of optimiser steps of the run, so
re-running with a larger number continues it. ``training.batch_size`` is the global batch;
each of W workers takes ``batch_size // W`` examples per step.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ncsn_core import EMA, LOSSES, annealed_langevin, build_model, config_from_dict, geometric_sigmas, initial_samples
from ncsn_core import load_checkpoint, make_score_fn, per_level_means
from ncsn_core.checkpoint import checkpoint_bytes

from .checkpoints import CHECKPOINT_FILE, STEP_FILE
from .figures import image_grid
from .storage import Storage
from .train_data import augment

__all__ = ["TrainOptions", "NonFiniteLossError", "train_loop_per_worker", "METRICS_FILE"]

METRICS_FILE = "metrics.jsonl"
FAILURE_MARKER = ".injected-failure-done"
PREVIEW_STEPS_PER_LEVEL = 10


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the noise level."""


@dataclass
class TrainOptions:
    """Everything a worker needs besides the config (plain data; shipped to workers)."""

    run_uri: str
    endpoint_url: str | None = None
    use_gpu: bool = False
    torch_threads: int = 0  # 0 = leave torch's default
    cache_data: str = "auto"  # auto | on | off: keep the decoded shard in worker memory
    cache_limit_bytes: int = 1 << 30
    inject_failure_at_step: int = -1  # tests only: kill the worker once at this step
    preview: bool = True
    rank_digests: bool = False  # tests only: every rank writes a digest of its weights at checkpoints
    extra: dict[str, Any] = field(default_factory=dict)


def _log(message: str) -> None:
    """One progress line. Not ``print``: Ray Train V2 patches ``print`` in workers and, with
    Ray's redirected stdout, every line would reach the driver twice."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _rank_info() -> tuple[int, int]:
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def _all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        reduce_op = {"sum": torch.distributed.ReduceOp.SUM, "min": torch.distributed.ReduceOp.MIN}[op]
        torch.distributed.all_reduce(tensor, op=reduce_op)
    return tensor


class _Batches:
    """Endless iterator of uint8 image batches from this worker's dataset shard.

    Streams ``iter_torch_batches`` every epoch, or (``cache``) streams the shard once, keeps
    it on the device and draws a fresh permutation per epoch; small data sets (digits,
    CIFAR-10) then cost no per-epoch pipeline start-up.
    """

    def __init__(self, shard, batch_size: int, device: torch.device, cache: str, cache_limit: int, item_bytes: int,
                 approx_rows: int, seed: int):
        self.shard, self.batch_size, self.device = shard, batch_size, device
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.cached: torch.Tensor | None = None
        if cache == "on" or (cache == "auto" and approx_rows * item_bytes <= cache_limit):
            parts = [b["image"] for b in shard.iter_torch_batches(batch_size=4096, dtypes={"image": torch.uint8})]
            self.cached = torch.cat(parts).to(device)
            if len(self.cached) < batch_size:
                raise ValueError(
                    f"this worker's share of the data set has {len(self.cached)} images, fewer than its batch "
                    f"size {batch_size}: lower training.batch_size or the number of workers"
                )

    def __iter__(self):
        while True:
            if self.cached is not None:
                order = torch.randperm(len(self.cached), generator=self.generator).to(self.device)
                for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
                    yield self.cached[order[start : start + self.batch_size]]
            else:
                for batch in self.shard.iter_torch_batches(
                    batch_size=self.batch_size,
                    dtypes={"image": torch.uint8},
                    device=self.device,
                    drop_last=True,
                    local_shuffle_buffer_size=max(4 * self.batch_size, 1024),
                ):
                    yield batch["image"]


def _save_preview(run: Storage, ema_model: torch.nn.Module, sigmas: torch.Tensor, config, step: int,
                  device: torch.device) -> str:
    """Sample a small grid from the EMA model (short sampling run) and write it as PNG."""
    n = config.sampling.preview_samples
    shape = (n, config.data.channels, config.data.image_size, config.data.image_size)
    g = torch.Generator(device=device).manual_seed(0)
    x0 = initial_samples(shape, kind=config.sampling.init, sigma_max=float(sigmas[0]), generator=g, device=device)
    steps = min(config.sampling.steps_per_level, PREVIEW_STEPS_PER_LEVEL)
    # Fewer steps per level than the config: scale eps up to keep the same total drift.
    eps = config.sampling.eps * config.sampling.steps_per_level / steps
    x = annealed_langevin(make_score_fn(ema_model), x0, sigmas.to(device), steps_per_level=steps, eps=eps,
                          final_denoise=config.sampling.final_denoise, generator=g)
    import io

    buffer = io.BytesIO()
    image_grid(x.clamp(0, 1).cpu(), scale=max(1, 64 // config.data.image_size)).save(buffer, format="PNG")
    name = f"samples/step_{step:08d}.png"
    run.write_bytes(name, buffer.getvalue())
    return run.uri_of(name)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker entry point. ``loop_config = {"config": Config.to_dict(), "options": TrainOptions.__dict__,
    "manifest": {"num_rows": ...}}``."""
    import ray.train
    import ray.train.torch

    config = config_from_dict(loop_config["config"], "training config")
    opts = TrainOptions(**loop_config["options"])
    rank, world = _rank_info()
    device = ray.train.torch.get_device() if opts.use_gpu else torch.device("cpu")
    if opts.torch_threads > 0:
        torch.set_num_threads(opts.torch_threads)
    torch.manual_seed(config.training.seed * 1000 + rank)
    run = Storage.from_uri(opts.run_uri, endpoint_url=opts.endpoint_url)
    tc = config.training

    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    model = build_model(config)
    ema = EMA(model, tc.ema_decay)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=(tc.beta1, 0.999), weight_decay=tc.weight_decay)
    step = 0
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as folder:
            ckpt = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
        model.load_state_dict(ckpt.model_state)
        if ckpt.ema_state is not None:
            ema.load_state_dict(ckpt.ema_state)
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
        step = ckpt.step
        if rank == 0:
            _log(f"[train] resumed from {restored.path} at step {step}")
    model.to(device)
    ema.module.to(device)
    for state in optimizer.state.values():
        for k, v in state.items():
            if torch.is_tensor(v) and k != "step":
                state[k] = v.to(device)
    sigmas_device = sigmas.to(device)
    ddp_model = ray.train.torch.prepare_model(model) if world > 1 else model
    loss_fn = LOSSES[tc.loss]
    loss_kwargs = {"anneal_power": tc.anneal_power}
    if tc.loss == "ssm":
        loss_kwargs["n_projections"] = tc.n_projections

    per_worker = tc.batch_size // world
    if per_worker < 1:
        raise ValueError(f"training.batch_size {tc.batch_size} is smaller than the number of workers {world}")
    item_bytes = config.data.channels * config.data.image_size**2
    rows = loop_config["manifest"]["num_rows"] // world
    batches = iter(_Batches(ray.train.get_dataset_shard("train"), per_worker, device, opts.cache_data,
                            opts.cache_limit_bytes, item_bytes, rows, seed=tc.seed * 1000 + rank + step))
    aug_gen = torch.Generator(device=device).manual_seed(tc.seed * 7919 + rank * 104729 + step)

    metrics_lines: list[str] = []
    if rank == 0 and run.exists(METRICS_FILE):
        metrics_lines = [ln for ln in run.read_bytes(METRICS_FILE).decode().splitlines() if ln.strip()]
        metrics_lines = [ln for ln in metrics_lines if json.loads(ln).get("step", 0) <= step]

    L = config.noise.num_levels
    level_sums = torch.zeros(L, device=device)
    level_counts = torch.zeros(L, device=device)
    first_bad_step = torch.full((), math.inf, device=device)
    window_start, window_steps = time.perf_counter(), 0
    run_start, start_step = time.perf_counter(), step
    ddp_model.train()

    def check_finite_and_log(final: bool) -> None:
        nonlocal window_start, window_steps
        stats = _all_reduce(torch.cat([level_sums, level_counts]))
        bad = _all_reduce(first_bad_step.clone(), "min")
        sums, counts = stats[:L], stats[L:]
        if math.isfinite(bad.item()) or not torch.isfinite(sums).all():
            bad_levels = [i for i in range(L) if not math.isfinite(sums[i].item())]
            where = f"noise level {bad_levels[0]} (sigma={sigmas[bad_levels[0]].item():.4g})" if bad_levels else "an unknown level"
            at = int(bad.item()) if math.isfinite(bad.item()) else step
            raise NonFiniteLossError(
                f"non-finite loss at step {at}, {where}; stopping without writing a checkpoint. "
                "Lower training.lr, set training.grad_clip, or check the data."
            )
        elapsed = time.perf_counter() - window_start
        if rank == 0 and window_steps > 0:
            mean = (sums.sum() / counts.sum().clamp(min=1)).item()
            per_sigma = [round((s / c).item(), 5) if c > 0 else None for s, c in zip(sums, counts)]
            images_per_s = window_steps * per_worker * world / max(elapsed, 1e-9)
            steps_per_s = (step - start_step) / max(time.perf_counter() - run_start, 1e-9)
            eta = (tc.steps - step) / steps_per_s if steps_per_s > 0 else float("inf")
            record = {"step": step, "loss": round(mean, 6), "loss_per_sigma": per_sigma,
                      "images_per_s": round(images_per_s, 2), "time": round(time.time(), 3)}
            metrics_lines.append(json.dumps(record))
            run.write_bytes(METRICS_FILE, ("\n".join(metrics_lines) + "\n").encode())
            _log(f"[train] step {step}/{tc.steps}  loss {mean:.4f}  {images_per_s:.1f} img/s  "
                  f"eta {_fmt_seconds(eta)}  loss/sigma " + " ".join(f"{v:.3g}" if v is not None else "-" for v in per_sigma))
        level_sums.zero_()
        level_counts.zero_()
        window_start, window_steps = time.perf_counter(), 0

    def save_checkpoint_now() -> None:
        check_finite_and_log(final=step >= tc.steps)
        if opts.rank_digests:
            _write_rank_digest(run, model, rank, step)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                data = checkpoint_bytes(model=model, config=config, sigmas=sigmas, ema=ema.module,
                                        optimizer=optimizer, step=step)
                (Path(folder) / CHECKPOINT_FILE).write_bytes(data)
                (Path(folder) / STEP_FILE).write_text(f"{step}\n")
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({"step": step}, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{step:08d}")
        if rank == 0 and opts.preview:
            url = _save_preview(run, ema.module, sigmas, config, step, device)
            _log(f"[train] checkpoint at step {step}; samples -> {url}")
        nonlocal window_start
        window_start = time.perf_counter()  # keep checkpoint and preview time out of images/s

    while step < tc.steps:
        images = next(batches)
        x = augment(images, dequantize=config.data.dequantize, random_flip=config.data.random_flip, generator=aug_gen)
        out = loss_fn(ddp_model, x, sigmas_device, **loss_kwargs)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if tc.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(ddp_model.parameters(), tc.grad_clip)
        optimizer.step()
        ema.update(model)
        step += 1
        window_steps += 1
        sums, counts = per_level_means(out.per_example.float(), out.levels, L)
        level_sums += sums
        level_counts += counts
        finite = torch.isfinite(out.loss.detach())
        first_bad_step = torch.where(finite | torch.isfinite(first_bad_step), first_bad_step,
                                     torch.full_like(first_bad_step, step))
        if step == opts.inject_failure_at_step and rank == 0 and not run.exists(FAILURE_MARKER):
            run.write_bytes(FAILURE_MARKER, b"1")
            _log(f"[train] injected failure: killing worker at step {step}")
            os._exit(1)
        if step % tc.checkpoint_every == 0 or step >= tc.steps:
            save_checkpoint_now()
        elif step % tc.log_every == 0:
            check_finite_and_log(final=False)


def _write_rank_digest(run: Storage, model: torch.nn.Module, rank: int, step: int) -> None:
    """Record a hash of this rank's weights and its node (to check that DDP keeps ranks identical)."""
    import hashlib

    import ray

    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    record = {"rank": rank, "step": step, "digest": h.hexdigest(), "node": ray.get_runtime_context().get_node_id()}
    run.write_json(f"rank_digests/step_{step:08d}_rank_{rank}.json", record)


def _fmt_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
