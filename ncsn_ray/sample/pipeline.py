"""The Ray Data pipeline behind generation and inpainting: shards of work across an actor pool.

::

    ray.data.from_items(<one descriptor per missing shard>)      driver, tiny rows
      .map_batches(<callable class>, batch_size=1,               one shard per call
                   compute=ActorPoolStrategy(...),               actors hold the model
                   num_cpus=..., num_gpus=...)
      .iter_rows()                                               driver: one status row per shard

Each actor loads the checkpoint once, samples its shard and writes it to storage as one
object; the driver only sees small status rows. While a shard runs, its actor reports each
finished level of annealing to a :class:`ProgressBoard` (a zero-CPU actor), so the driver
can print progress during long shards, not only when one ends.

A job of one shard, with no cluster named (``RAY_ADDRESS`` unset) and no Ray running in the
process, has nothing to fan out: it computes that shard in the job's own process, with the
shard actor's own code and thread count (so the shard's bytes are the ones an actor would
write), and skips Ray's and the actor's start (about 8 of the 17 s ``generate.py --n 64``
took on 2 cores). ``--num-actors`` or ``--min-actors``/``--max-actors`` ask for the pool.

Resources: each actor reserves ``cpus_per_actor`` CPUs (default 1) and, with ``use_gpu``,
one GPU. The pipeline has no read or write tasks of its own (the input is a few rows made
on the driver; actors write their shards), so the actors may take every CPU: the default
pool has one actor per GPU with ``use_gpu``, else ``CPUs // cpus_per_actor`` actors.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..console import Log, format_seconds
from ..testing import faults
from ..errors import UserError, begin_work
from .sample_set import WorkUnit

__all__ = ["ActorPlan", "Progress", "ProgressBoard", "run_pipeline"]

REPORT_EVERY_S = 30.0  # at most this long between progress lines
LEVEL_REPORT_MIN_S = 10.0  # a finished level is reported if the last line is at least this old


@dataclass
class ActorPlan:
    """How many sampling actors, and what each reserves.

    ``num_actors``: a fixed pool; ``min_actors``/``max_actors``: a pool that grows as nodes join
    (Ray Data adds an actor while shards wait and there is room for one) and shrinks when one
    is lost (its shards in flight are retried on the others), never below ``min_actors``
    (``generate.py --min-actors A --num-actors B``); neither: one actor per GPU (``use_gpu``)
    or ``CPUs // cpus_per_actor`` actors. A sample's bytes depend on its seed only, so every
    pool writes the same shards.
    """

    num_actors: int | None = None
    min_actors: int | None = None
    max_actors: int | None = None
    use_gpu: bool = False
    cpus_per_actor: float = 1.0

    def validate(self) -> None:
        if self.num_actors is not None and (self.min_actors is not None or self.max_actors is not None):
            raise UserError("give either a fixed number of actors or a min/max range, not both")
        for name in ("num_actors", "min_actors", "max_actors"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        if (self.min_actors is None) != (self.max_actors is None):
            raise UserError("min_actors and max_actors go together")
        if self.min_actors is not None and self.min_actors > self.max_actors:
            raise UserError("min_actors must not exceed max_actors")
        if not self.cpus_per_actor > 0:
            raise UserError(f"cpus_per_actor must be positive, got {self.cpus_per_actor}")
        if self.use_gpu and not os.environ.get("RAY_ADDRESS") and not torch.cuda.is_available():
            raise UserError("use_gpu: this machine has no CUDA GPU (and no RAY_ADDRESS names a cluster)")

    def planned_size(self) -> int:
        """The pool size the job plans for, before Ray starts: the given number of actors (or
        the maximum), else one per GPU / per ``cpus_per_actor`` CPUs of this machine, or 8 on
        a cluster (``RAY_ADDRESS``), whose size is known only once connected."""
        if self.num_actors is not None:
            return self.num_actors
        if self.max_actors is not None:
            return self.max_actors
        if os.environ.get("RAY_ADDRESS"):
            return 8
        if self.use_gpu:
            return max(1, torch.cuda.device_count())
        return max(1, int((os.cpu_count() or 1) // self.cpus_per_actor))

    @property
    def threads_per_actor(self) -> int:
        return max(1, int(round(self.cpus_per_actor)))

    def strategy(self, pending: int):
        """``(ActorPoolStrategy, description)`` for ``pending`` shards (never more actors than shards).

        A fixed pool keeps one shard in flight per actor: shards are long, and queueing more on
        one actor while another idles would only unbalance the tail of the job. An autoscaling
        pool keeps two: Ray Data adds an actor only when the shards in flight per actor reach
        its upscaling threshold (``AutoscalingConfig.actor_pool_util_upscaling_threshold``,
        1.75 in Ray 2.60), which one in flight can never reach, so the pool would stay at its
        minimum however many nodes the cluster added.
        """
        import ray

        if self.min_actors is not None:
            hi = max(1, min(self.max_actors, pending))
            lo = min(self.min_actors, hi)
            return (ray.data.ActorPoolStrategy(min_size=lo, max_size=hi, max_tasks_in_flight_per_actor=2),
                    f"{lo}-{hi}")
        size = self.num_actors
        if size is None:
            resources = ray.cluster_resources()
            if self.use_gpu:
                size = int(resources.get("GPU", 0))
                if size < 1:
                    raise UserError("use_gpu: the cluster has no GPU now; give a number of actors or a min/max range")
            else:
                size = max(1, int(resources.get("CPU", 1) // self.cpus_per_actor))
        size = max(1, min(size, pending))
        return ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1), str(size)

    def remote_args(self) -> dict[str, Any]:
        return {"num_cpus": self.cpus_per_actor, **({"num_gpus": 1} if self.use_gpu else {})}


class ProgressBoard:
    """Zero-CPU Ray actor: the sampling actors post per-shard progress, the driver reads it.

    ``post(shard, fraction)``: the fraction of the shard's samples done (levels finished /
    levels). ``take()``: the fractions of unfinished shards, and whether anything was
    posted since the last ``take``.
    """

    def __init__(self) -> None:
        self.fractions: dict[str, float] = {}
        self.fresh = False

    def post(self, shard: str, fraction: float) -> None:
        self.fractions[shard] = fraction
        self.fresh = True

    def finish(self, shard: str) -> None:
        self.fractions.pop(shard, None)

    def take(self) -> tuple[dict[str, float], bool]:
        fresh, self.fresh = self.fresh, False
        return dict(self.fractions), fresh


class Progress:
    """Prints ``done/total``, throughput and time left (driver side), from finished shards
    plus the partial progress of running ones."""

    def __init__(self, total: int, done: int, unit: str, log: Log, prefix: str):
        self.total, self.done, self.unit, self.log, self.prefix = total, done, unit, log, prefix
        self.fresh = 0
        self.partial: dict[str, float] = {}  # shard -> samples done so far, running shards
        self.completed: set[str] = set()
        self.started = time.perf_counter()
        self.last_line = self.started
        self.actor_seconds = 0.0  # time spent inside the actors' calls (sampling, encoding, writing)
        self.actors: set[int] = set()  # process ids of the actors that returned shards
        self._lock = threading.Lock()

    def stats(self) -> dict[str, Any]:
        return {"actor_seconds": round(self.actor_seconds, 3), "actors_used": len(self.actors)}

    def shard_done(self, name: str, count: int, seconds: float, pid: int) -> None:
        with self._lock:
            self.partial.pop(name, None)
            self.completed.add(name)
            self.done += count
            self.fresh += count
            self.actor_seconds += seconds
            self.actors.add(pid)
            self._print()

    def running(self, fractions: dict[str, float], fresh: bool, counts: dict[str, int]) -> None:
        """Partial progress of running shards; prints if a level finished (and the last line is
        :data:`LEVEL_REPORT_MIN_S` old) or :data:`REPORT_EVERY_S` passed."""
        with self._lock:
            self.partial = {name: f * counts.get(name, 0) for name, f in fractions.items() if name not in self.completed}
            since = time.perf_counter() - self.last_line
            if (fresh and since >= LEVEL_REPORT_MIN_S) or since >= REPORT_EVERY_S:
                self._print()

    def _print(self) -> None:
        now = time.perf_counter()
        elapsed = now - self.started
        done = self.done + sum(self.partial.values())
        made = self.fresh + sum(self.partial.values())
        rate = made / elapsed if elapsed > 0 else float("nan")
        left = (self.total - done) / rate if rate > 0 else float("inf")
        self.log(
            f"{self.prefix} {done:.0f}/{self.total} {self.unit} ({100.0 * done / self.total:.1f}%), "
            f"{rate:.2f} {self.unit}/s, {format_seconds(left)} left"
        )
        self.last_line = now


def runs_in_process(pending: list[WorkUnit], plan: ActorPlan) -> bool:
    """Whether the pending work is one shard that this process computes itself: no cluster
    named, no Ray already running here (a test's or a notebook's), no pool asked for."""
    ray = sys.modules.get("ray")
    ray_running = ray is not None and ray.is_initialized()
    pool_asked = plan.num_actors is not None or plan.min_actors is not None
    return len(pending) == 1 and not os.environ.get("RAY_ADDRESS") and not ray_running and not pool_asked


class _Call:
    def __init__(self, function):
        self.remote = function


class _LocalBoard:
    """A :class:`ProgressBoard`'s interface for a shard computed in this process: the actor's
    ``board.post.remote(shard, fraction)`` goes straight to :meth:`Progress.running`."""

    def __init__(self, progress: Progress, counts: dict[str, int]):
        self.post = _Call(lambda shard, fraction: progress.running({shard: fraction}, True, counts))
        self.finish = _Call(lambda shard: None)


def _execute_in_process(actor_cls: type, constructor_kwargs: dict[str, Any], unit: WorkUnit, progress: Progress,
                        log: Log) -> None:
    log(f"{progress.prefix} 1 shard: computed in this process (no cluster named, nothing to fan out; "
        "--num-actors N uses the actor pool)")
    previous_threads = torch.get_num_threads()
    try:
        actor = actor_cls(**constructor_kwargs, board=_LocalBoard(progress, {unit.name: unit.count}))
        row = actor({"name": np.array([unit.name]), "start": np.array([unit.start]), "stop": np.array([unit.stop]),
                     "first": np.array([unit.first]), "last": np.array([unit.last])})
    finally:
        torch.set_num_threads(previous_threads)
    progress.shard_done(str(row["name"][0]), int(row["count"][0]), float(row["seconds"][0]), int(row["pid"][0]))


def run_pipeline(
    actor_cls: type,
    constructor_kwargs: dict[str, Any],
    pending: list[WorkUnit],
    plan: ActorPlan,
    progress: Progress,
    log: Log,
) -> None:
    """Run the actor pool over the pending shards, starting (and then stopping) Ray if needed;
    or compute a single shard in this process (:func:`runs_in_process`)."""
    if runs_in_process(pending, plan):
        begin_work()
        _execute_in_process(actor_cls, constructor_kwargs, pending[0], progress, log)
        return
    import ray

    from ..cluster import init_ray

    started_ray = init_ray(log=log)
    try:
        if plan.use_gpu and ray.cluster_resources().get("GPU", 0) < 1:
            if started_ray and not os.environ.get("RAY_ADDRESS"):
                raise UserError("use_gpu: Ray sees no GPU on this machine; sample on CPUs instead")
            log(f"{progress.prefix} the cluster has no GPU right now: waiting for the autoscaler to add GPU nodes")
        begin_work()
        _execute(actor_cls, constructor_kwargs, pending, plan, progress, log)
    finally:
        if started_ray:
            ray.shutdown()


def _execute(actor_cls: type, constructor_kwargs: dict[str, Any], pending: list[WorkUnit], plan: ActorPlan,
             progress: Progress, log: Log) -> None:
    import ray

    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    counts = {u.name: u.count for u in pending}
    items = [{"name": u.name, "start": u.start, "stop": u.stop, "first": u.first, "last": u.last} for u in pending]
    strategy, size = plan.strategy(len(pending))
    log(f"{progress.prefix} {len(pending)} shard(s) to compute on {size} actor(s) "
        f"({plan.cpus_per_actor:g} CPU{', 1 GPU' if plan.use_gpu else ''} each)")
    fault_env = faults.runtime_env()  # empty unless a reliability test asks for a fault
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        actor_cls,
        batch_size=1,
        compute=strategy,
        fn_constructor_kwargs={**constructor_kwargs, "board": board},
        **plan.remote_args(),
        **({"runtime_env": fault_env} if fault_env else {}),
    )
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(2.0):
            try:
                fractions, fresh = ray.get(board.take.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - progress is best effort; the pipeline reports failures
                continue
            progress.running(fractions, fresh, counts)

    watcher = threading.Thread(target=watch, name="sampling-progress", daemon=True)
    watcher.start()
    try:
        for row in dataset.iter_rows():
            progress.shard_done(str(row["name"]), int(row["count"]), float(row["seconds"]), int(row["pid"]))
    finally:
        stop.set()
        watcher.join(timeout=15)
        ray.kill(board)
