"""The per-worker training loop run by Ray Train (Train V2): build state, restore, loop, report.

Each worker: DDP over gloo (CPU) or NCCL (GPU), Adam, EMA, the core's score-matching loss
through :func:`ncsn_core.train_step`, its share of every step's global batch (in memory and
step-addressed, or streamed by Ray Data). Checkpoints are reported with
``ray.train.report(checkpoint=...)`` into the run folder ``RunConfig(storage_path, name)``:
``checkpoint_XXXXXXXX/checkpoint.pt`` + ``step.txt``, the last ``keep_checkpoints`` kept;
re-running with the same storage and name resumes from the newest (step counter, optimiser
and EMA restored). Rank 0 also keeps the run's records (:mod:`ncsn_ray.train.records`:
``metrics.jsonl``, ``loss.png``, preview grids, the trackers) and hands checkpoints to the
evaluator (:mod:`ncsn_ray.train.evaluation`: ``evals/``, ``best/``).

Step semantics: ``training.steps`` is the total number of optimiser steps of the run;
``training.batch_size`` is the global batch ``B``, shared by the W workers of the current
group as :func:`~ncsn_ray.data.global_batches.worker_rows` says (``B / W`` each when W
divides B, else ``B // W`` or one more, each worker's loss weighted by its share so that the
step's gradient is the global batch's mean), accumulated in parts of at most
``--batch-per-worker`` examples; ``training.precision: bf16`` autocasts the forward pass.
W is read from Ray Train's context at every start: an elastic run (``--num-workers MIN-MAX``)
restarts the loop from the latest checkpoint each time its group is resized, and the
records note the new size.
Loss statistics are summed on the device and all-reduced only at log steps, so the loop
does not wait for the host on every step.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ncsn_core import config_from_dict, per_level_means, train_step
from ncsn_core.checkpoint import CheckpointError
from ncsn_core.config import Config

from ..data.format import read_manifest
from ..data.global_batches import GlobalBatches, lognormal_of, worker_rows
from ..data.ingest import WorkerBatches, augment, read_images, step_inputs
from ..errors import JobFailed
from ..io.layout import CHECKPOINT_FILE, STEP_FILE, STOPPED_FILE
from ..io.storage import Storage
from ..testing import faults
from .evaluation import EvaluationQueue, evaluation_due
from .objective import initialise_student, load_teacher, make_objective
from .records import RunRecord, log_line
from .state import TrainState

__all__ = ["WorkerOptions", "NonFiniteLossError", "train_loop_per_worker"]



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
    batch_per_worker: int | None = None  # at most this many examples at once (accumulated parts); None: the whole share
    elastic: bool = False  # the group's size may change (--num-workers MIN-MAX): progress lines name it
    inception_weights: str | None = None  # for training.eval_metric fid


def _all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        reduce_op = {"sum": torch.distributed.ReduceOp.SUM, "min": torch.distributed.ReduceOp.MIN}[op]
        torch.distributed.all_reduce(tensor, op=reduce_op)
    return tensor


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
            log_line(f"[train] {restored.path} does not load ({err}); resuming from {opts.resume_uri}")
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
                  start_step: int, draw_levels: int) -> Callable[[int], tuple[torch.Tensor, dict[str, Any]]]:
    """``next_batch(step) -> (x, loss keyword arguments)``: the augmented float batch this
    worker trains on at ``step`` (1-based) and the draws the loss takes from outside.

    In memory: step-addressed (:class:`GlobalBatches`), so that a resumed run, with any
    number of workers, makes the uninterrupted run's draws. Streaming: Ray Data's split with
    generators seeded at the start of this attempt (reproducible only from a fresh start).
    """
    import ray.train

    tc, data_cfg = config.training, config.data
    start_row, stop_row = worker_rows(rank, world, tc.batch_size)
    per_worker = stop_row - start_row
    if opts.in_memory:
        data = Storage.from_uri(opts.data_uri, endpoint_url=opts.endpoint_url)
        images = read_images(data, read_manifest(data)).to(device)
        batches = GlobalBatches(images, global_batch=tc.batch_size, seed=tc.seed,
                                num_levels=draw_levels, rank=rank, world=world,
                                lognormal=lognormal_of(config))

        return lambda step: step_inputs(batches, step, config)

    stream = iter(WorkerBatches(ray.train.get_dataset_shard("train"), per_worker, device))
    aug_generator = torch.Generator(device=device).manual_seed(tc.seed * 7919 + rank * 104729 + start_step)

    lognormal = lognormal_of(config)

    def next_streamed(step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        x = augment(next(stream), dequantize=data_cfg.dequantize, random_flip=data_cfg.random_flip,
                    generator=aug_generator)
        if lognormal is None:
            return x, {}
        mean, std, sigma_min, sigma_max = lognormal
        normal = torch.randn((x.shape[0],), generator=aug_generator, device=device)
        return x, {"levels": (mean + std * normal).exp().clamp(sigma_min, sigma_max)}

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
    teacher = None
    if config.is_consistency:  # a student starts as its teacher (a resumed one: as its checkpoint)
        teacher = load_teacher(config, opts.endpoint_url, device)
        initialise_student(state, teacher)
    torch.manual_seed(tc.seed * 1000 + rank)  # per-rank draws of the streaming path's loss
    resumed_from = _restore(state, run, opts)
    if rank == 0 and resumed_from:
        log_line(f"[train] resumed from {resumed_from} at step {state.step}")
    state.to(device)
    sigmas = state.sigmas.to(device)
    model = ray.train.torch.prepare_model(state.model, move_to_device=device) if world > 1 else state.model
    objective = make_objective(config, state, teacher)
    start_row, stop_row = worker_rows(rank, world, tc.batch_size)
    share = stop_row - start_row  # this worker's examples per step
    loss_weight = share * world / tc.batch_size  # exactly 1.0 when W divides B: the step is unchanged
    micro_batches = 1 if opts.batch_per_worker is None else -(-share // opts.batch_per_worker)
    next_batch = _batch_source(config, opts, device, rank, world, state.step, objective.draw_levels)
    window = LossWindow(len(objective.bins), device)
    record = RunRecord(run, config, objective.bins, state.step, opts.tracking, opts.tracking_env, workers=world,
                       show_workers=opts.elastic) if rank == 0 else None
    evals = None
    if rank == 0 and tc.eval_every > 0:
        evals = EvaluationQueue(run, metric=tc.eval_metric, n=tc.eval_n, data_uri=opts.data_uri,
                                inception_weights=opts.inception_weights, log=log_line)
    if record is not None and opts.config_changes:
        record.note({"step": state.step, "config_change": opts.config_changes})

    def due(step: int) -> bool:
        return evaluation_due(step, checkpoint_every=tc.checkpoint_every, eval_every=tc.eval_every,
                              total_steps=tc.steps)

    if evals is not None and record is not None:
        record.add_evaluations(evals.catch_up(run, state.step, due, record.evaluation_steps()))
    if rank == 0:
        log_line(f"[train] first step: {state.step + 1} of {tc.steps}")

    # Loop, report.
    model.train()
    while state.step < tc.steps:
        x, step_kwargs = next_batch(state.step + 1)
        out = train_step(model, state.optimizer, objective.loss_fn, x, sigmas, ema=state.ema, grad_clip=tc.grad_clip,
                         micro_batches=micro_batches, precision=tc.precision, loss_weight=loss_weight,
                         **objective.loss_kwargs,
                         **step_kwargs)
        state.step += 1
        window.add(out, state.step)
        faults.kill_worker_once(state.step, rank, run, log_line)
        faults.pace_step()
        checkpoint_due = state.step % tc.checkpoint_every == 0 or state.step >= tc.steps
        if not checkpoint_due and state.step % tc.log_every != 0:
            continue
        stats = window.close(state.step, objective.bins)
        if record is not None:
            record.log_window(state.step, stats, tc.batch_size, state.optimizer.param_groups[0]["lr"])
            if evals is not None:
                record.add_evaluations(evals.collect())
        if checkpoint_due:
            faults.write_rank_digests(run, state, rank)
            reported = _report_checkpoint(state, rank)
            if evals is not None and due(state.step):
                evals.submit(state.step, reported)
            if record is not None:
                record.draw_loss()
                if opts.preview:
                    url = record.write_preview(state, state.step, device)
                    log_line(f"[train] checkpoint at step {state.step}; samples -> {url}")
                record.checkpoint_done()
            window.started = time.perf_counter()  # keep checkpoint and preview time out of images/s
    if record is not None:
        if evals is not None:
            record.add_evaluations(evals.collect(wait=True))  # training is over: wait for the queued ones
            record.draw_loss()
        record.close(finished=state.step >= tc.steps)
