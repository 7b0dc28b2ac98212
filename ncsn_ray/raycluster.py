"""Connecting to Ray the same way on a laptop and on a cluster.

Under ``ray job submit`` (or with ``RAY_ADDRESS`` set) the script attaches to the running
cluster; otherwise it starts an embedded local Ray instance. No other code path differs.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["init_ray", "cluster_cpus"]


def init_ray(*, num_cpus: int | None = None, object_store_memory: int | None = None, log=print) -> bool:
    """Attach to ``RAY_ADDRESS`` if set, else start a local instance (dashboard off).

    ``num_cpus`` / ``object_store_memory`` apply only to a local instance. Returns True if
    this call connected (the caller may then ``ray.shutdown()``), False if Ray was already
    initialised by someone else (a test, a notebook).
    """
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        log(f"[ray] attached to the cluster at {address}")
        return True
    # Workers of a local instance import this checkout even when it is not pip-installed.
    repo_root = str(Path(__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH", "")) if p)
    kwargs = {"include_dashboard": False, "log_to_driver": True,
              "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}}}
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
    log(f"[ray] started a local Ray instance: {ray.cluster_resources().get('CPU', 0):g} CPUs, "
        f"{ray.cluster_resources().get('GPU', 0):g} GPUs")
    return True


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))
