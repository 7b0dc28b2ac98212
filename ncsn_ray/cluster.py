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
import logging
import os
from pathlib import Path
from typing import Callable

__all__ = ["init_ray", "cluster_cpus", "quiet_ray_data", "FAKE_GPUS_ENV", "fake_gpus"]

# Tests only: on Ray's simulated autoscaling cluster, nodes declare GPUs they do not have.
# With this set (in the environment of the cluster's processes), work that reserved a GPU
# runs on the CPU instead of failing; nothing else changes.
FAKE_GPUS_ENV = "NCSN_TEST_FAKE_GPUS"


def fake_gpus() -> bool:
    """Whether GPUs are simulated (:data:`FAKE_GPUS_ENV`) and CUDA is absent."""
    import torch

    return bool(os.environ.get(FAKE_GPUS_ENV)) and not torch.cuda.is_available()


def _package_installed() -> bool:
    """True when ``ncsn-on-ray`` is installed (editable or not), so workers can import it."""
    try:
        importlib.metadata.distribution("ncsn-on-ray")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


class _NoReraisedTracebacks(logging.Filter):
    """Drops, from the console only, the ERROR records in which Ray Data prints a failed
    task's exception with every stack frame before raising it to the driver: the job prints
    that exception as one ``error:`` line (``NCSN_DEBUG=1`` prints the traceback). Ray Data's
    own log file (``ray-data.log`` in the session folder) keeps them."""

    SOURCES = ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name.startswith(self.SOURCES))


class _NoPipelineChatter(logging.Filter):
    """Drops, from the console only, two lines Ray Data prints about settings the jobs chose:
    the warning that progress bars are disabled (the jobs disable them and print their own
    progress) and the INFO "Dataset ... execution finished in N seconds" (the job prints its
    own ``done:`` line). Warnings about anything else, and every record in ``ray-data.log``,
    stay."""

    MESSAGES = ((logging.WARNING, "ray.data._internal.progress", "Progress bars disabled"),
                (logging.INFO, "ray.data._internal.execution.streaming_executor", "execution finished in"))

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.levelno == level and record.name == name and text in record.getMessage()
                       for level, name, text in self.MESSAGES)


def quiet_ray_data() -> None:
    """Ray Data settings of the project's pipelines: no progress bars or 'Starting execution'
    banners (each job prints its own progress), errors raised in our actors reach the
    driver as themselves rather than as a generic ``UserCodeException``, and they are not
    printed a second time with Ray's internal frames (:class:`_NoReraisedTracebacks`); nor
    are Ray Data's notes on those settings (:class:`_NoPipelineChatter`)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.raise_original_map_exception = True
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            for kind in (_NoReraisedTracebacks, _NoPipelineChatter):
                if not any(isinstance(f, kind) for f in handler.filters):
                    handler.addFilter(kind())


class _OneLineFailures(logging.Filter):
    """Ray Train logs a failure it then recovers from with a whole traceback: the worker's
    "Error in training function:" (a store outage while checkpointing, say), the
    controller's "Graceful shutdown of backend failed. This is expected if one of the
    workers has crashed." and its "Error in control loop iteration: The worker group startup
    timed out ..." (an elastic group placed on a node that just went away). All are followed
    by a restart from the last checkpoint, and a failure that is not recovered reaches the
    driver, which prints it as one ``error:`` line. Keep each record as one line (its first line and the exception's), without the
    traceback; ``NCSN_DEBUG=1`` in the workers' environment keeps everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        if os.environ.get("NCSN_DEBUG"):
            return True
        record.exc_info, record.exc_text = None, None
        message = record.getMessage()
        if "Traceback (most recent call last)" in message:
            lines = [line.strip() for line in message.splitlines() if line.strip()]
            record.msg, record.args = f"{lines[0]} {lines[-1]} (NCSN_DEBUG=1 shows the traceback)", ()
        return True


# The third is the controller's: an elastic group that restarts after a lost node may first ask
# for the old size (Ray's view of the nodes is up to 20 s old), time out placing it and retry
# with the size the remaining nodes hold; the controller logs that timeout with a traceback.
_RECOVERED_FAILURE_LOGGERS = ("ray.train.v2._internal.callbacks.backend_setup", "ray.train.v2._internal.util",
                              "ray.train.v2._internal.execution.controller.controller")


def quiet_worker_logs() -> None:
    """``worker_process_setup_hook`` of every job's processes (see :func:`init_ray`): failures
    that Ray Train recovers from print one line each, not a traceback."""
    for name in _RECOVERED_FAILURE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLineFailures) for f in logger.filters):
            logger.addFilter(_OneLineFailures())


WORKER_SETUP_HOOK = "ncsn_ray.cluster.quiet_worker_logs"


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
        # Merged with the runtime environment of `ray job submit`, if any.
        ray.init(address=address, log_to_driver=True, runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK})
        log(f"[ray] attached to the cluster at {address}")
        quiet_ray_data()
        return True
    kwargs = {"include_dashboard": True, "log_to_driver": True,
              "runtime_env": {"worker_process_setup_hook": WORKER_SETUP_HOOK}}
    if not _package_installed():
        # Workers of a local instance must import this checkout even when it is not installed.
        repo_root = str(Path(__file__).resolve().parents[1])
        pythonpath = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH", "")) if p)
        kwargs["runtime_env"]["env_vars"] = {"PYTHONPATH": pythonpath}
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
