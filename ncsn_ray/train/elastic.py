"""Elastic worker groups: ``--num-workers MIN-MAX`` and the cluster room the job waits for.

``--num-workers 2-8`` makes Ray Train's worker group elastic (Train V2,
``ScalingConfig(num_workers=(2, 8))``; Ray 2.60's ``ElasticScalingPolicy``):

* it starts once MIN workers fit on the cluster, with as many as fit up to MAX;
* while it runs, Ray checks every ``elastic_resize_monitor_interval_s`` seconds
  (``--resize-check``, :data:`DEFAULT_RESIZE_CHECK_S`) how many workers the cluster's nodes
  hold; when that differs from the group's size it stops the group and starts one of the new
  size, which resumes from the latest checkpoint (the steps since it are trained again);
* a lost node fails its workers; Ray restarts the group with as many workers as the
  remaining nodes hold (at least MIN, else it waits), again from the latest checkpoint. Each
  such restart counts against ``--max-failures`` unless Ray was told the node was preempted
  (a drain with notice), which has its own, unlimited budget.

How many workers "fit" is Ray's own count (its autoscaling coordinator): per alive node,
``floor(node total / per-worker request)`` over every requested resource, summed. The
coordinator refreshes its view of the nodes every 20 s (``TICK_INTERVAL_S`` in Ray 2.60), so
a joining node is used 20 s + the resize check + a restart after it registers, at worst,
and right after a node is lost Ray may ask for the old size once more, wait
:data:`ELASTIC_START_TIMEOUT_S` to place it, and then restart with the size that fits.

A single number keeps today's fixed group (``ScalingConfig(num_workers=N)``).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

__all__ = ["DEFAULT_RESIZE_CHECK_S", "ELASTIC_MAX_FAILURES", "ELASTIC_START_TIMEOUT_S", "parse_workers", "worker_range", "is_elastic",
           "room_for_workers", "describe_workers", "RoomWatch"]

# Ray's default is 60 s. Checking is cheap (one call to the coordinator actor, which answers
# from its cached view) and a check that finds no change does nothing, so a shorter interval
# costs nothing while the cluster is steady. Resizes happen only when the node count changes,
# and each costs a restart plus the steps since the last checkpoint. The coordinator's view is
# at most 20 s old, so checking much more often than that gains little: 30 s halves Ray's
# worst-case wait for a joining node's first use, from 20 + 60 s to 20 + 30 s.
DEFAULT_RESIZE_CHECK_S = 30.0

# A lost node is one worker-group failure to Ray unless it was drained as a preemption. A run
# that is meant to outlive spot reclaims needs more than the fixed group's default of 3.
ELASTIC_MAX_FAILURES = 20

# Seconds Ray Train waits to place a new group's resources before it gives up and decides
# again (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, default 60). Right after a lost node Ray's
# view of the nodes can still count it (for up to 20 s), so the first restart may ask for too
# many workers; measured on the simulated cluster, a 60 s wait made every shrink cost 75 s.
# An elastic job sets 15 s unless the variable is set.
ELASTIC_START_TIMEOUT_S = 15


def parse_workers(text: str) -> int | tuple[int, int]:
    """``"4"`` -> 4 (a fixed group); ``"2-8"`` -> (2, 8) (elastic); ``"3-3"`` -> 3.
    ValueError (with the reason) for anything else."""
    parts = text.strip().split("-")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"expected N or MIN-MAX (e.g. 4 or 2-8), got {text!r}") from None
    if len(numbers) == 1:
        if numbers[0] < 1:
            raise ValueError(f"must be at least 1, got {numbers[0]}")
        return numbers[0]
    if len(numbers) != 2:
        raise ValueError(f"expected N or MIN-MAX (e.g. 4 or 2-8), got {text!r}")
    low, high = numbers
    if low < 1 or high < low:
        raise ValueError(f"MIN-MAX needs 1 <= MIN <= MAX, got {text!r}")
    return low if low == high else (low, high)


def worker_range(num_workers: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``(MIN, MAX)`` of a fixed count or a range."""
    if isinstance(num_workers, int):
        return num_workers, num_workers
    low, high = num_workers
    return int(low), int(high)


def is_elastic(num_workers: int | tuple[int, int] | list[int]) -> bool:
    low, high = worker_range(num_workers)
    return low != high


def describe_workers(num_workers: int | tuple[int, int] | list[int]) -> str:
    """``"2 worker(s)"`` or ``"1-3 workers (elastic)"``, for the job's start line."""
    low, high = worker_range(num_workers)
    return f"{low} worker(s)" if low == high else f"{low}-{high} workers (elastic)"


def room_for_workers(nodes: list[dict], per_worker: dict[str, float]) -> int:
    """How many workers of ``per_worker`` (e.g. ``{"CPU": 1, "GPU": 1}``) the alive ``nodes``
    (``ray.nodes()`` entries) hold by their total resources, counted as Ray's elastic policy
    counts them: per node the floor of total / request over each requested resource, summed."""
    wanted = {name: amount for name, amount in per_worker.items() if amount > 0}
    room = 0
    for node in nodes:
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        if not wanted:
            continue
        room += int(min(resources.get(name, 0.0) // amount for name, amount in wanted.items()))
    return room


def _resources_text(per_worker: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in per_worker.items() if amount > 0)


def _nodes_text(nodes: list[dict], per_worker: dict[str, float]) -> str:
    """``"2 node(s) with 2 CPU"``: the alive nodes that offer any resource a worker asks for (a
    head that runs no tasks is not counted), and what they offer together."""
    alive = [n for n in nodes if n.get("Alive")
             and any(n.get("Resources", {}).get(name, 0.0) > 0 for name, amount in per_worker.items() if amount > 0)]
    totals = {name: sum(n.get("Resources", {}).get(name, 0.0) for n in alive) for name in per_worker}
    return f"{len(alive)} node(s) with " + ", ".join(f"{amount:g} {name}" for name, amount in totals.items())


class RoomWatch:
    """The job's own account of waiting for workers' resources (Ray's controller waits silently
    at our log level). ``start()`` looks at the cluster once: if fewer than MIN workers fit it
    prints ``[train] waiting for ...`` and keeps looking every ``poll_s`` seconds in a daemon
    thread, printing each change and, once MIN fit, that training starts. ``stop()`` ends it.

    ``nodes``: a callable returning ``ray.nodes()``-shaped entries (the tests pass their own)."""

    def __init__(self, minimum: int, per_worker: dict[str, float], log: Callable[[str], None], *,
                 nodes: Callable[[], list[dict]] | None = None, poll_s: float = 2.0):
        if nodes is None:
            import ray

            nodes = ray.nodes
        self.minimum, self.per_worker, self.log, self.nodes, self.poll_s = minimum, per_worker, log, nodes, poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.waited_s = 0.0

    def start(self) -> bool:
        """True if the job has to wait (and the watch runs)."""
        nodes = self.nodes()
        room = room_for_workers(nodes, self.per_worker)
        if room >= self.minimum:
            return False
        self.log(f"[train] waiting for {self.minimum} workers' resources ({_resources_text(self.per_worker)} each); "
                 f"the cluster has room for {room} ({_nodes_text(nodes, self.per_worker)}): training starts when "
                 f"nodes join (an autoscaler adds them; on spot capacity this can take minutes)")
        self._thread = threading.Thread(target=self._watch, args=(room,), daemon=True, name="ncsn-room-watch")
        self._thread.start()
        return True

    def _watch(self, room: int) -> None:
        started = time.monotonic()
        while not self._stop.wait(self.poll_s):
            try:
                nodes = self.nodes()
            except Exception:  # noqa: BLE001 - the cluster is busy; look again next time
                continue
            now = room_for_workers(nodes, self.per_worker)
            if now == room:
                continue
            room = now
            self.waited_s = time.monotonic() - started
            if room >= self.minimum:
                self.log(f"[train] the cluster has room for {room} workers now ({_nodes_text(nodes, self.per_worker)}) "
                         f"after {self.waited_s:.0f} s: starting")
                return
            self.log(f"[train] still waiting: room for {room} of {self.minimum} workers ({_nodes_text(nodes, self.per_worker)})")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
