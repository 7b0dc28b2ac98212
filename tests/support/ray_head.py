"""A real local Ray cluster with token authentication, for end-to-end tests.

Test support, not a test module. ``local_ray_head`` runs ``ray start --head --block`` on
127.0.0.1 with every port chosen free by the OS (several test modules may start one after
another, or at the same time), waits until the job API answers, yields a ``RayHead``, and
on exit stops exactly this cluster -- never ``ray stop`` (that kills every Ray process on
the machine, including other people's clusters and embedded ``ray.init()`` instances).

How token authentication works here (Ray 2.60, see ``ray/_private/authentication/``):

- ``RAY_AUTH_MODE=token`` in the environment of ``ray start`` turns authentication on for
  the GCS, the raylet and the dashboard / job API (HTTP answers 401 without a token and 403
  with a wrong one).
- The token is looked up in this order: ``RAY_AUTH_TOKEN`` (the token itself),
  ``RAY_AUTH_TOKEN_PATH`` (a file holding it), ``~/.ray/auth_token`` (what
  ``ray get-auth-token --generate`` writes). ``ray start`` does not create a token; it
  must exist first. A client (``ray job submit``, ``JobSubmissionClient``, ``ray.init``)
  sends ``Authorization: Bearer <token>`` when ``RAY_AUTH_MODE=token`` is set in *its*
  environment and finds the token the same way.
- This module generates a fresh random token per cluster, writes it to a 0600 file under
  ``tmp_path`` and passes only ``RAY_AUTH_MODE`` and ``RAY_AUTH_TOKEN_PATH``: the token
  itself never appears in an environment listing, a command line or a log, and the
  user's ``~/.ray/auth_token`` is neither read nor written.

Isolation: the head gets a private short ``--temp-dir`` (so a plain ``ray.init()``
elsewhere on the machine does not discover and join it) and an environment marker
``NCSN_RAY_HEAD_TAG=<uuid>`` that every process of the cluster inherits (GCS, raylet,
dashboard, workers, job drivers). Shutdown sends SIGTERM to the ``ray start --block``
process (which tears its node down), then SIGKILLs every process still carrying the marker
and the process group, and removes the temp dir.

Environment of jobs -- two places, with different reach:

- ``local_ray_head(env=...)``: added to the environment of ``ray start``. Every Ray process
  on the node inherits it, so the job driver (which runs on the head node for a
  ``ray start`` head) and all its workers see it. This is how a real node gets credentials
  (instance role, pod identity, node environment): use it for secrets such as
  ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``. The head otherwise inherits the
  caller's environment (as ``ray start`` typed in a shell would), minus ``RAY_ADDRESS`` and
  ``RAY_AUTH_*`` which are set explicitly.
- ``submit_job(env=...)``: sent as the job's ``runtime_env`` ``env_vars`` (from a YAML file,
  not the command line). They reach the driver and every task and actor of the job on any
  node, but they are stored with the job and readable through the job API by anyone who
  holds the token: use them for non-secrets such as ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .http import http_status
from .processes import MARKER_VAR, cluster_processes, reap_zombies, subreaper

__all__ = ["RayHead", "local_ray_head", "ray_cli", "fake_autoscaling_config"]


# Variables of the caller that must not leak into the cluster or the CLI: the cluster's own
# auth and address are set explicitly.
_STRIPPED_VARS = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
)

_PORT_NAMES = (
    "port",  # GCS
    "dashboard-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "node-manager-port",
    "object-manager-port",
    "runtime-env-agent-port",
    "ray-client-server-port",
)

_START_ATTEMPTS = 2
_RAY_STARTUP_TIMEOUT = "timed out during startup"  # Ray's message when the raylet misses its 30 s


class HeadStartupTimedOut(RuntimeError):
    """``ray start`` gave up because its raylet did not register with the GCS in time."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class RayHead:
    """A running local head. Holds the token's *path*, never the token."""

    address: str  # GCS address, "127.0.0.1:PORT" (what ray.init(address=...) takes)
    dashboard_url: str  # "http://127.0.0.1:PORT": job API, what `ray job submit --address` takes
    env: dict[str, str]  # what a client subprocess needs to authenticate (RAY_AUTH_*)
    ports: dict[str, int]
    temp_dir: str
    log_path: Path
    tmp_path: Path
    tag: str
    process: subprocess.Popen = field(repr=False)

    @property
    def token_path(self) -> Path:
        return Path(self.env["RAY_AUTH_TOKEN_PATH"])

    def auth_headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer ..."}`` for in-process HTTP calls. Do not log it."""
        return {"Authorization": "Bearer " + self.token_path.read_text().strip()}

    def client_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A full environment for a client subprocess (``ray job ...``, a driver)."""
        base = {k: v for k, v in os.environ.items() if k not in _STRIPPED_VARS and k != MARKER_VAR}
        return {**base, **self.env, **(extra or {})}

    def alive(self) -> bool:
        return self.process.poll() is None


def ray_cli() -> list[str]:
    """The ``ray`` CLI of the running interpreter's installation."""
    beside = Path(sys.executable).parent / "ray"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ray")
    if found:
        return [found]
    return [sys.executable, "-m", "ray.scripts.scripts"]


def _free_ports(n: int) -> list[int]:
    """n distinct ports the OS reports free on 127.0.0.1 (held open until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _redact(text: str, head_token_path: Path) -> str:
    try:
        token = head_token_path.read_text().strip()
    except OSError:
        return text
    return text.replace(token, "<token>") if token else text


def _tail(path: Path, token_path: Path, n: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return _redact(text[-n:], token_path)


def _stop_cluster(process: subprocess.Popen, tag: str, temp_dir: str) -> list[int]:
    """Stop exactly this cluster; returns the PIDs that had to be SIGKILLed."""
    seen = set(cluster_processes(tag))
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)  # ray start --block tears its node down
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=10)
    killed: list[int] = []
    deadline = time.monotonic() + 20
    while True:
        left = cluster_processes(tag)
        seen.update(left)
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # The process group of `ray start` (its own session): anything left in it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    # Orphans reparent to us (subreaper) a moment after their parent dies: reap twice.
    for _ in range(3):
        reap_zombies(seen, process.pid)
        time.sleep(0.2)
    shutil.rmtree(temp_dir, ignore_errors=True)
    return sorted(set(killed))


@contextlib.contextmanager
def local_ray_head(
    *,
    num_cpus: int = 2,
    object_store_memory: int = 200_000_000,
    env: dict[str, str] | None = None,
    tmp_path: Path | str,
    num_gpus: int | None = None,
    startup_timeout: float = 180.0,
    autoscaling_config: dict | None = None,
) -> Iterator[RayHead]:
    """Start a token-authenticated local Ray head; stop it (and only it) on exit.

    ``env`` is added to the environment of ``ray start``: every process of the cluster,
    job drivers included, inherits it (see the module docstring for where secrets go).
    ``tmp_path`` holds the token file, the head's log and runtime_env files for jobs.

    ``autoscaling_config``: a cluster config for Ray's fake multi-node provider (see
    :func:`fake_autoscaling_config`); the head then runs the autoscaler, which starts and
    stops simulated worker nodes (real raylets on this machine) from the resource demands.
    """
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    token_path = tmp_path / "ray_auth_token"
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}

    prev_subreaper = subreaper(True)
    try:
        # Ray's own start-up gives the raylet 30 s to register with the GCS; on a loaded
        # 2-core machine it has missed that once in many runs ("The current node timed out
        # during startup"). One fresh try (new ports, temp dir and tag) absorbs that;
        # any other failure, or a second timeout, is raised as it is.
        for attempt in range(1, _START_ATTEMPTS + 1):
            head = _launch_head(
                tmp_path=tmp_path, auth_env=auth_env, env=env, num_cpus=num_cpus,
                object_store_memory=object_store_memory, num_gpus=num_gpus,
                autoscaling_config=autoscaling_config,
            )
            try:
                _wait_ready(head, startup_timeout)
                break
            except HeadStartupTimedOut as error:
                _stop_cluster(head.process, head.tag, head.temp_dir)
                if attempt == _START_ATTEMPTS:
                    raise
                print(f"local_ray_head: attempt {attempt} failed ({error.reason}); starting again", file=sys.stderr)
            except BaseException:
                _stop_cluster(head.process, head.tag, head.temp_dir)
                raise
        try:
            yield head
        finally:
            _stop_cluster(head.process, head.tag, head.temp_dir)
    finally:
        if prev_subreaper is not None:
            subreaper(prev_subreaper)


def _launch_head(
    *,
    tmp_path: Path,
    auth_env: dict[str, str],
    env: dict[str, str] | None,
    num_cpus: int,
    object_store_memory: int,
    num_gpus: int | None,
    autoscaling_config: dict | None,
) -> RayHead:
    """Start ``ray start --head --block`` on free ports with a fresh temp dir and tag."""
    ports = dict(zip(_PORT_NAMES, _free_ports(len(_PORT_NAMES))))
    # Unix socket paths live under the temp dir and are limited to ~107 bytes: keep it short.
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    tag = uuid.uuid4().hex
    log_path = tmp_path / "ray_head.log"

    head_env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_VARS}
    # `python` in a job entrypoint must be this interpreter.
    head_env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + head_env.get("PATH", "")
    head_env.update(
        {
            **auth_env,
            MARKER_VAR: tag,
            "RAY_USAGE_STATS_ENABLED": "0",
            # No 30 s node drain on SIGTERM: nothing to drain in a test cluster.
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        }
    )
    head_env.update(env or {})
    if autoscaling_config is not None:
        config = json.loads(json.dumps(autoscaling_config))
        config["provider"]["gcs_address"] = f"127.0.0.1:{ports['port']}"
        config_path = tmp_path / "autoscaling.json"
        config_path.write_text(json.dumps(config))
        head_env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})

    cmd = ray_cli() + [
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--num-cpus={num_cpus}",
        f"--object-store-memory={int(object_store_memory)}",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    if autoscaling_config is not None:
        cmd.append(f"--autoscaling-config={config_path}")
    cmd += [f"--{name}={port}" for name, port in ports.items()]

    with open(log_path, "wb") as log_file:
        try:
            process = subprocess.Popen(
                cmd,
                env=head_env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: cleanup cannot reach the caller
                cwd=str(tmp_path),
            )
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
    return RayHead(
        address=f"127.0.0.1:{ports['port']}",
        dashboard_url=f"http://127.0.0.1:{ports['dashboard-port']}",
        env=auth_env,
        ports=ports,
        temp_dir=temp_dir,
        log_path=log_path,
        tmp_path=tmp_path,
        tag=tag,
        process=process,
    )


def fake_autoscaling_config(worker_node_types: dict, *, max_workers: int, idle_timeout_minutes: float) -> dict:
    """A cluster config for Ray's fake multi-node provider (``fake_multinode``): the worker
    node types as given (``resources``, ``min_workers``, ``max_workers``; ``node_config`` is
    ignored), a head type with 0 CPUs, and the rest of a cluster config left empty (no SSH,
    no setup: the simulated nodes are raylets started by the autoscaler itself)."""
    types = {name: {"node_config": {}, **spec} for name, spec in worker_node_types.items()}
    types["ray.head.default"] = {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}
    empty_lists = ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                   "setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                   "worker_start_ray_commands")
    return {
        "cluster_name": "fake-ncsn",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "docker": {},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        **{key: [] for key in empty_lists},
    }


def _wait_ready(head: RayHead, timeout: float) -> None:
    """Until the job API answers an authenticated request and the node's agent is up."""
    deadline = time.monotonic() + timeout
    agent = f"http://127.0.0.1:{head.ports['dashboard-agent-listen-port']}/api/local_raylet_healthz"
    while time.monotonic() < deadline:
        if not head.alive():
            log_tail = _tail(head.log_path, head.token_path)
            message = f"ray start exited with code {head.process.returncode}; log tail:\n" + log_tail
            if _RAY_STARTUP_TIMEOUT in log_tail:
                raise HeadStartupTimedOut(message, reason="the raylet did not register with the GCS in 30 s")
            raise RuntimeError(message)
        if (
            http_status(head.dashboard_url + "/api/jobs/", headers=head.auth_headers()) == 200
            and http_status(agent) == 200
        ):
            return
        time.sleep(0.5)
    raise TimeoutError(
        f"Ray head not ready after {timeout:.0f} s; log tail:\n" + _tail(head.log_path, head.token_path)
    )
