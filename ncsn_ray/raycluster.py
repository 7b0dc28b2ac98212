"""Connecting to Ray the same way on a laptop and on a cluster.

Under ``ray job submit`` (or with ``RAY_ADDRESS`` set) a job attaches to the running
cluster; otherwise it starts an embedded local Ray instance. No other code path differs.

The embedded instance starts Ray's dashboard, as ``ray start`` does: Ray Train's
placement-group cleaner asks the dashboard's state API whether the training controller is
alive, and without it logs a warning every few seconds for the whole run. Token
authentication stays on (Ray 2.60 turns it on for a local ``ray.init()``).

Ray Data's own progress bars and execution banners are turned off for the project's
pipelines (each job prints its own progress lines); Ray's warnings and errors still show.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Callable

__all__ = ["init_ray", "cluster_cpus", "quiet_ray_data"]


def _package_installed() -> bool:
    """True when ``ncsn-on-ray`` is installed (editable or not), so workers can import it."""
    try:
        importlib.metadata.distribution("ncsn-on-ray")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def quiet_ray_data() -> None:
    """Ray Data settings of the project's pipelines: no progress bars or 'Starting execution'
    banners (each job prints its own progress), and errors raised in our actors reach the
    driver as themselves rather than as a generic ``UserCodeException``."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.raise_original_map_exception = True


def init_ray(*, num_cpus: int | None = None, object_store_memory: int | None = None,
             log: Callable[[str], None] = print) -> bool:
    """Attach to ``RAY_ADDRESS`` if set, else start a local instance.

    ``num_cpus`` / ``object_store_memory`` apply only to a local instance (defaults: every
    core, Ray's default store). Returns True if this call connected (the caller should then
    ``ray.shutdown()``), False if Ray was already initialised by someone else (a test, a
    notebook).
    """
    import ray

    if ray.is_initialized():
        quiet_ray_data()
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        log(f"[ray] attached to the cluster at {address}")
        quiet_ray_data()
        return True
    kwargs = {"include_dashboard": True, "log_to_driver": True}
    if not _package_installed():
        # Workers of a local instance must import this checkout even when it is not installed.
        repo_root = str(Path(__file__).resolve().parents[1])
        pythonpath = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH", "")) if p)
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": pythonpath}}
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    if object_store_memory is not None:
        kwargs["object_store_memory"] = object_store_memory
    try:
        ray.init(**kwargs)
    except ValueError:  # a local cluster already runs on this machine: it fixes its own resources
        for key in ("num_cpus", "object_store_memory"):
            kwargs.pop(key, None)
        ray.init(**kwargs)
    quiet_ray_data()
    resources = ray.cluster_resources()
    log(f"[ray] started a local Ray instance: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
    return True


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))
