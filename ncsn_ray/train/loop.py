"""The per-worker training loop run by Ray Train (Train V2): build state, restore, loop, report.

Each worker: DDP over gloo (CPU) or NCCL (GPU), Adam, EMA, the core's score-matching loss
through :func:`ncsn_core.train_step`, its share of the data from
``ray.train.get_dataset_shard("train")``. Checkpoints are reported with
``ray.train.report(checkpoint=...)`` into the run folder ``RunConfig(storage_path, name)``.

Run folder ``{storage}/{name}/`` (names in :mod:`ncsn_ray.io.layout`):

* ``checkpoint_XXXXXXXX/checkpoint.pt`` + ``step.txt``: the last ``keep_checkpoints`` are
  kept; re-running with the same storage and name resumes from the newest (step counter,
  optimiser and EMA restored).
* ``metrics.jsonl``: one JSON object per log window (step, loss, loss per sigma, images/s).
* ``loss.png``: the loss per noise level over steps, redrawn at each checkpoint.
* ``samples/step_XXXXXXXX.png``: a grid sampled from the EMA weights at each checkpoint.
* ``evals/step_XXXXXXXX.json`` and ``best/``: quality scores of checkpoints and the best one
  (``training.eval_every``; :mod:`ncsn_ray.train.evaluation`).
* ``tensorboard/``, ``mlflow.json``: the trackers' records (:mod:`ncsn_ray.train.tracking`).

Step semantics: ``training.steps`` is the total number of optimiser steps of the run;
``training.batch_size`` is the global batch, ``batch_size // W`` per worker for W workers
(W must divide it), accumulated in ``micro_batches`` parts when ``--batch-per-worker`` asks
for fewer examples at once; ``training.precision: bf16`` autocasts the forward pass.
Loss statistics are summed on the device and all-reduced only at log steps, so the loop
does not wait for the host on every step.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ncsn_core import (EMA, LOSSES, build_model, config_from_dict, geometric_sigmas, load_checkpoint, loss_options,
                       per_level_means)
from ncsn_core import make_optimizer, train_step
from ncsn_core.checkpoint import CheckpointError, checkpoint_bytes
from ncsn_core.config import Config

from ..errors import JobFailed
from ..io.figures import curve_plot, hstack_panels, loss_plot
from ..io.layout import CHECKPOINT_FILE, LOSS_PLOT, METRICS_FILE, STEP_FILE, STOPPED_FILE
from ..console import format_seconds
from ..testing import faults
from ..sample.sampler import Sampler, SamplerSettings, preview_grid
from .evaluation import EvaluationQueue, describe as describe_evaluation, evaluation_due, to_json_line
from .tracking import open_trackers
from ..io.storage import Storage
from ..data.format import read_manifest
from ..data.global_batches import GlobalBatches
from ..data.ingest import WorkerBatches, augment, read_images, step_inputs

__all__ = ["WorkerOptions", "NonFiniteLossError", "train_loop_per_worker"]

PREVIEW_STEPS_PER_LEVEL = 10


class NonFiniteLossError(JobFailed):
    """The loss became NaN or infinite; the message names the step and the noise level.

    Not a transient failure: retrying from the last checkpoint would diverge the same way.
    Every worker sees it at the same step (the loss statistics are all-reduced) and returns
    normally, so Ray Train does not retry; rank 0 first writes the message to
    ``stopped.json`` in the run folder, from which the driver raises it again.
    """

@dataclass
class WorkerOptions:
    """What a worker needs besides the config (plain data, shipped to every worker)."""

    run_uri: str
    endpoint_url: str | None = None
    use_gpu: bool = False
    torch_threads: int = 0  # 0 = leave torch's default
    data_uri: str = ""  # the prepared dataset (read directly by each worker on the in-memory path)
    in_memory: bool = True  # step-addressed batches over the whole dataset in memory; else Ray Data streaming
    preview: bool = True
    tracking: tuple[str, ...] = ("tensorboard",)  # names of ncsn_ray.train.tracking.TRACKERS; () for none
    tracking_env: dict[str, str] = field(default_factory=dict)  # MLflow's URI and experiment (no credentials)
    verbose: bool = False  # keep Ray Train's INFO lines in this worker
    resume_uri: str | None = None  # the newest checkpoint folder that verified when the job started
    config_changes: dict[str, Any] = field(default_factory=dict)  # learning settings changed on resume
    micro_batches: int = 1  # parts each worker's share of a step is accumulated in (--batch-per-worker)
    inception_weights: str | None = None  # for training.eval_metric fid


def _log(message: str) -> None:
    """One progress line. Not ``print``: Ray Train V2 patches ``print`` in workers and, with
    Ray's redirected stdout, every line would reach the driver twice."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        reduce_op = {"sum": torch.distributed.ReduceOp.SUM, "min": torch.distributed.ReduceOp.MIN}[op]
        torch.distributed.all_reduce(tensor, op=reduce_op)
    return tensor


class TrainState:
    """Model, EMA, optimiser, noise ladder and step counter: what a checkpoint holds."""

    def __init__(self, config: Config):
        tc = config.training
        self.config = config
        self.sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
        self.model = build_model(config)
        self.ema = EMA(self.model, tc.ema_decay)
        self.optimizer = make_optimizer(self.model.parameters(), lr=tc.lr, beta1=tc.beta1,
                                        weight_decay=tc.weight_decay)
        self.step = 0

    def restore(self, data: bytes, name: str) -> None:
        """Weights, EMA, optimiser and step from checkpoint bytes; the optimiser then takes the
        config's learning rate, betas and weight decay (a resumed run may change them)."""
        ckpt = load_checkpoint(data, name=name)
        self.model.load_state_dict(ckpt.model_state)
        if ckpt.ema_state is not None:
            self.ema.load_state_dict(ckpt.ema_state)
        if ckpt.optimizer_state is not None:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
            tc = self.config.training
            for group in self.optimizer.param_groups:
                group.update(lr=tc.lr, betas=(tc.beta1, 0.999), weight_decay=tc.weight_decay, foreach=True)
        self.step = ckpt.step

    def to(self, device: torch.device) -> "TrainState":
        self.model.to(device)
        self.ema.module.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and key != "step":
                    state[key] = value.to(device)
        return self

    def checkpoint_bytes(self) -> bytes:
        return checkpoint_bytes(model=self.model, config=self.config, sigmas=self.sigmas, ema=self.ema.module,
                                optimizer=self.optimizer, step=self.step)


class LossWindow:
    """Per-level loss sums and counts since the last log line, kept on the device."""

    def __init__(self, num_levels: int, device: torch.device):
        self.num_levels = num_levels
        self.sums = torch.zeros(num_levels, device=device)
        self.counts = torch.zeros(num_levels, device=device)
        self.first_bad_step = torch.full((), math.inf, device=device)
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, out, step: int) -> None:
        sums, counts = per_level_means(out.per_example.float(), out.levels, self.num_levels)
        self.sums += sums
        self.counts += counts
        bad = ~torch.isfinite(out.loss.detach()) & ~torch.isfinite(self.first_bad_step)  # first bad step only
        self.first_bad_step = torch.where(bad, torch.full_like(self.first_bad_step, step), self.first_bad_step)
        self.steps += 1

    def close(self, step: int, sigmas: torch.Tensor) -> dict[str, Any]:
        """All-reduce the window across workers, raise if the loss was ever non-finite, reset."""
        stats = _all_reduce(torch.cat([self.sums, self.counts]))
        bad = _all_reduce(self.first_bad_step.clone(), "min").item()
        sums, counts = stats[: self.num_levels], stats[self.num_levels :]
        if math.isfinite(bad) or not torch.isfinite(sums).all():
            levels = [i for i in range(self.num_levels) if not math.isfinite(sums[i].item())]
            where = f"noise level {levels[0]} (sigma={sigmas[levels[0]].item():.4g})" if levels else "an unknown level"
            at = int(bad) if math.isfinite(bad) else step
            raise NonFiniteLossError(
                f"non-finite loss at step {at}, {where}; stopping without writing a checkpoint. "
                "Lower training.lr, set training.grad_clip, or check the data."
            )
        window = {
            "steps": self.steps,
            "seconds": time.perf_counter() - self.started,
            "loss": (sums.sum() / counts.sum().clamp(min=1)).item(),
            "per_sigma": [round((s / c).item(), 5) if c > 0 else None for s, c in zip(sums, counts)],
        }
        self.sums.zero_()
        self.counts.zero_()
        self.steps = 0
        self.started = time.perf_counter()
        return window


class RunRecord:
    """Rank 0's outputs in the run folder: metrics lines, the loss plot, preview grids, and
    the trackers' records (``tracking``: names from :data:`~ncsn_ray.train.tracking.TRACKERS`;
    ``tracking_env``: the MLflow settings the driver shipped)."""

    def __init__(self, run: Storage, config: Config, sigmas: torch.Tensor, start_step: int,
                 tracking: tuple[str, ...] | list[str] = ("tensorboard",), tracking_env: dict[str, str] | None = None):
        self.run, self.config, self.sigmas = run, config, sigmas
        self.trackers = open_trackers(tracking, run, start_step, sigmas.tolist(), run_name=run.uri.rstrip("/").rsplit("/", 1)[-1],
                                      config=config.to_dict(), env=tracking_env)
        self.lines: list[str] = []
        if run.exists(METRICS_FILE):
            kept = [ln for ln in run.read_bytes(METRICS_FILE).decode().splitlines() if ln.strip()]
            self.lines = [ln for ln in kept if json.loads(ln).get("step", 0) <= start_step]
        self.start_step, self.started = start_step, time.perf_counter()
        self.loop_started_at = time.time()  # wall clock when this attempt's first step began

    def log_window(self, step: int, window: dict[str, Any], global_batch: int, learning_rate: float) -> None:
        tc = self.config.training
        images_per_s = window["steps"] * global_batch / max(window["seconds"], 1e-9)
        steps_per_s = (step - self.start_step) / max(time.perf_counter() - self.started, 1e-9)
        eta = (tc.steps - step) / steps_per_s if steps_per_s > 0 else float("inf")
        record = {"step": step, "loss": round(window["loss"], 6), "loss_per_sigma": window["per_sigma"],
                  "images_per_s": round(images_per_s, 2), "time": round(time.time(), 3),
                  "loop_started_at": round(self.loop_started_at, 3)}
        self.lines.append(json.dumps(record))
        self._save_lines()
        for tracker in self.trackers:
            tracker.window(step, window["loss"], window["per_sigma"], images_per_s, learning_rate)
        per_sigma = " ".join(f"{v:.3g}" if v is not None else "-" for v in window["per_sigma"])
        _log(f"[train] step {step}/{tc.steps}  loss {window['loss']:.4f}  {images_per_s:.1f} img/s  "
             f"eta {format_seconds(eta)}  loss/sigma {per_sigma}")

    def add_evaluations(self, records: list[dict[str, Any]]) -> None:
        """Finished checkpoint evaluations: a ``metrics.jsonl`` line, a log line and tracker scalars each."""
        for record in records:
            self.lines.append(to_json_line(record))
            _log(f"[train] quality at step {record['step']}: {describe_evaluation(record)}"
                 + ("  (best so far)" if record.get("best") else ""))
            values = {f"eval/{record['metric'].split('@')[0]}": record["score"],
                      **{f"eval/{key}": record[key] for key in ("precision", "recall") if key in record}}
            for tracker in self.trackers:
                tracker.scalars(record["step"], values)
        if records:
            self._save_lines()

    def evaluation_steps(self) -> set[int]:
        """The steps whose evaluation ``metrics.jsonl`` already holds."""
        return {entry["step"] for entry in map(json.loads, self.lines) if "eval" in entry}

    def _save_lines(self) -> None:
        """Rewrite ``metrics.jsonl`` whole (object storage has no append)."""
        self.run.write_bytes(METRICS_FILE, ("\n".join(self.lines) + "\n").encode())

    def note(self, entry: dict[str, Any]) -> None:
        """Append a record that is not a loss window (e.g. settings changed on resume)."""
        self.lines.append(json.dumps(entry))
        self._save_lines()

    def draw_loss(self) -> None:
        """``loss.png``: the loss per noise level over steps and, beside it, the quality scores."""
        parsed = [json.loads(line) for line in self.lines]
        records = [r for r in parsed if "loss_per_sigma" in r]
        image = loss_plot([r["step"] for r in records], [r["loss_per_sigma"] for r in records], self.sigmas.tolist(),
                          title=f"{self.config.name}: loss per noise level (weighted by sigma^2)")
        scores = sorted((r["step"], r["eval"]["score"]) for r in parsed if "eval" in r)
        if scores:
            metric = next(r["eval"]["metric"] for r in parsed if "eval" in r)
            curve = curve_plot({metric: scores}, x_label="step", y_label=f"{metric} (lower is better)",
                               title=f"{self.config.name}: quality of {metric.split('@')[0]} over steps", log_x=False,
                               height=image.height)
            image = hstack_panels([image, curve])
        self.run.write_png(LOSS_PLOT, image)

    def write_preview(self, state: TrainState, step: int, device: torch.device) -> str:
        """A grid sampled with the generation sampler (fewer steps per level) from the weights
        generation would use: the EMA weights, or the trained ones where ``sampling.ema`` is off."""
        config = self.config
        settings = SamplerSettings.from_config(config)
        settings = settings.with_steps(min(settings.steps_per_level, PREVIEW_STEPS_PER_LEVEL))
        shape = (config.data.channels, config.data.image_size, config.data.image_size)
        network = state.ema.module if settings.use_ema else state.model
        was_training = network.training
        sampler = Sampler(network, self.sigmas, settings, shape, device)
        grid = preview_grid(sampler, config.sampling.preview_samples)
        network.train(was_training)
        name = f"samples/step_{step:08d}.png"
        self.run.write_png(name, grid)
        for tracker in self.trackers:
            tracker.image(step, grid)
        return self.run.uri_of(name)

    def checkpoint_done(self) -> None:
        """After a checkpoint's outputs: the TensorBoard events so far are final."""
        for tracker in self.trackers:
            tracker.checkpoint_done()

    def close(self, finished: bool) -> None:
        for tracker in self.trackers:
            tracker.close(finished)


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names and tensor bytes, in name order)."""
    import hashlib

    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _write_rank_digest(run: Storage, state: TrainState, rank: int, step: int) -> None:
    """Record hashes of this rank's weights and EMA weights and its node (to check that DDP
    keeps ranks identical)."""
    import ray

    record = {"rank": rank, "step": step, "digest": state_digest(state.model), "ema_digest": state_digest(state.ema.module),
              "node": ray.get_runtime_context().get_node_id()}
    run.write_json(f"rank_digests/step_{step:08d}_rank_{rank}.json", record)


def _restore(state: TrainState, run: Storage, opts: WorkerOptions) -> str | None:
    """Restore from Ray Train's latest checkpoint (newest: after a worker failure in this job
    it is the one just written) or, if that one does not load, from the folder the driver
    verified at start (``opts.resume_uri``); returns where from, or None for a fresh run."""
    import ray.train

    restored = ray.train.get_checkpoint()
    if restored is not None:
        try:
            with restored.as_directory() as folder:
                state.restore((Path(folder) / CHECKPOINT_FILE).read_bytes(), name=restored.path)
            return restored.path
        except (CheckpointError, OSError) as err:
            if opts.resume_uri is None:
                raise
            _log(f"[train] {restored.path} does not load ({err}); resuming from {opts.resume_uri}")
    if opts.resume_uri is not None:
        folder = Storage.from_uri(opts.resume_uri, endpoint_url=opts.endpoint_url)
        state.restore(folder.read_bytes(CHECKPOINT_FILE), name=folder.uri_of(CHECKPOINT_FILE))
        return opts.resume_uri
    return None


def _report_checkpoint(state: TrainState, rank: int) -> bytes | None:
    """``ray.train.report`` with a checkpoint folder from rank 0 (the others report metrics
    only); returns the checkpoint's bytes on rank 0."""
    import ray.train

    data = state.checkpoint_bytes() if rank == 0 else None
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            (Path(folder) / CHECKPOINT_FILE).write_bytes(data)
            (Path(folder) / STEP_FILE).write_text(f"{state.step}\n")
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"step": state.step}, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{state.step:08d}")
    return data


def _batch_source(config: Config, opts: WorkerOptions, device: torch.device, rank: int, world: int,
                  start_step: int) -> Callable[[int], tuple[torch.Tensor, dict[str, Any]]]:
    """``next_batch(step) -> (x, loss keyword arguments)``: the augmented float batch this
    worker trains on at ``step`` (1-based) and the draws the loss takes from outside.

    In memory: step-addressed (:class:`GlobalBatches`), so that a resumed run, with any
    number of workers, makes the uninterrupted run's draws. Streaming: Ray Data's split with
    generators seeded at the start of this attempt (reproducible only from a fresh start).
    """
    import ray.train

    tc, data_cfg = config.training, config.data
    per_worker = tc.batch_size // world
    if opts.in_memory:
        data = Storage.from_uri(opts.data_uri, endpoint_url=opts.endpoint_url)
        images = read_images(data, read_manifest(data)).to(device)
        batches = GlobalBatches(images, global_batch=per_worker * world, seed=tc.seed,
                                num_levels=config.noise.num_levels, rank=rank, world=world)

        return lambda step: step_inputs(batches, step, config)

    stream = iter(WorkerBatches(ray.train.get_dataset_shard("train"), per_worker, device))
    aug_generator = torch.Generator(device=device).manual_seed(tc.seed * 7919 + rank * 104729 + start_step)

    def next_streamed(step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        x = augment(next(stream), dequantize=data_cfg.dequantize, random_flip=data_cfg.random_flip,
                    generator=aug_generator)
        return x, {}

    return next_streamed


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker entry point; ``loop_config = {"config": Config.to_dict(), "options": asdict(WorkerOptions)}``."""
    import ray.train

    try:
        _train(loop_config)
    except NonFiniteLossError as err:
        if ray.train.get_context().get_world_rank() == 0:
            opts = WorkerOptions(**loop_config["options"])
            run = Storage.from_uri(opts.run_uri, endpoint_url=opts.endpoint_url)
            run.write_json(STOPPED_FILE, {"error": str(err), "kind": "non-finite loss"})


def _train(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    config = config_from_dict(loop_config["config"], "training config")
    opts = WorkerOptions(**loop_config["options"])
    if not opts.verbose:
        # Train's per-report INFO line ("Reporting training result ...") comes from a logger
        # named after its file path, outside "ray.train", so LoggingConfig does not reach it.
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if opts.use_gpu else torch.device("cpu")
    if opts.torch_threads > 0:
        torch.set_num_threads(opts.torch_threads)
    tc = config.training
    run = Storage.from_uri(opts.run_uri, endpoint_url=opts.endpoint_url)

    # Build state, restore. Every rank starts from the same initial weights, so that the EMA
    # (copied from them before DDP broadcasts rank 0's weights) is the same on every rank too.
    torch.manual_seed(tc.seed * 1000)
    state = TrainState(config)
    torch.manual_seed(tc.seed * 1000 + rank)  # per-rank draws of the streaming path's loss
    resumed_from = _restore(state, run, opts)
    if rank == 0 and resumed_from:
        _log(f"[train] resumed from {resumed_from} at step {state.step}")
    state.to(device)
    sigmas = state.sigmas.to(device)
    model = ray.train.torch.prepare_model(state.model, move_to_device=device) if world > 1 else state.model
    loss_fn = LOSSES[tc.loss]
    loss_kwargs: dict[str, Any] = loss_options(config)
    per_worker = tc.batch_size // world
    next_batch = _batch_source(config, opts, device, rank, world, state.step)
    window = LossWindow(config.noise.num_levels, device)
    record = RunRecord(run, config, state.sigmas, state.step, opts.tracking, opts.tracking_env) if rank == 0 else None
    evals = None
    if rank == 0 and tc.eval_every > 0:
        evals = EvaluationQueue(run, metric=tc.eval_metric, n=tc.eval_n, data_uri=opts.data_uri,
                                inception_weights=opts.inception_weights, log=_log)
    if record is not None and opts.config_changes:
        record.note({"step": state.step, "config_change": opts.config_changes})

    def due(step: int) -> bool:
        return evaluation_due(step, checkpoint_every=tc.checkpoint_every, eval_every=tc.eval_every,
                              total_steps=tc.steps)

    if evals is not None and record is not None:
        record.add_evaluations(evals.catch_up(run, state.step, due, record.evaluation_steps()))
    if rank == 0:
        _log(f"[train] first step: {state.step + 1} of {tc.steps}")

    # Loop, report.
    model.train()
    while state.step < tc.steps:
        x, step_kwargs = next_batch(state.step + 1)
        out = train_step(model, state.optimizer, loss_fn, x, sigmas, ema=state.ema, grad_clip=tc.grad_clip,
                         micro_batches=opts.micro_batches, precision=tc.precision, **loss_kwargs, **step_kwargs)
        state.step += 1
        window.add(out, state.step)
        faults.kill_worker_once(state.step, rank, run, _log)
        checkpoint_due = state.step % tc.checkpoint_every == 0 or state.step >= tc.steps
        if not checkpoint_due and state.step % tc.log_every != 0:
            continue
        stats = window.close(state.step, state.sigmas)
        if record is not None:
            record.log_window(state.step, stats, per_worker * world, state.optimizer.param_groups[0]["lr"])
            if evals is not None:
                record.add_evaluations(evals.collect())
        if checkpoint_due:
            if faults.enabled("train.rank_digests"):
                _write_rank_digest(run, state, rank, state.step)
            reported = _report_checkpoint(state, rank)
            if evals is not None and due(state.step):
                evals.submit(state.step, reported)
            if record is not None:
                record.draw_loss()
                if opts.preview:
                    url = record.write_preview(state, state.step, device)
                    _log(f"[train] checkpoint at step {state.step}; samples -> {url}")
                record.checkpoint_done()
            window.started = time.perf_counter()  # keep checkpoint and preview time out of images/s
    if record is not None:
        if evals is not None:
            record.add_evaluations(evals.collect(wait=True))  # training is over: wait for the queued ones
            record.draw_loss()
        record.close(finished=state.step >= tc.steps)
