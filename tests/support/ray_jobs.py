"""Talking to a test Ray head's job API: submitting ``ray job submit`` jobs, reading their
output, HTTP status checks (token authentication) and the autoscaler's view of the nodes."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
import uuid

import yaml

from .http import http_status
from .ray_head import RayHead, ray_cli

__all__ = ["WORKING_DIR_EXCLUDES", "unauthenticated_status", "alive_nodes", "submit_job",
           "job_succeeded", "job_output"]


# Passed as runtime_env ``excludes`` (gitignore syntax, relative to the working dir) on top
# of what Ray already skips: its defaults (.git, .venv, venv, __pycache__) and whatever
# the working dir's .gitignore / .rayignore list (runs/, build/, ... for this repo).
WORKING_DIR_EXCLUDES = [
    ".git/",
    "runs/",
    "**/__pycache__/",
    ".pytest_cache/",
    "*.egg-info/",
    "build/",
    "dist/",
    ".venv/",
    "venv/",
    "*.pt.tmp",
]


def unauthenticated_status(head: RayHead, path: str = "/api/jobs/", *, method: str = "GET") -> int:
    """Status of a request to the job API *without* a token (401 expected with auth on)."""
    return http_status(head.dashboard_url + path, method=method)


def alive_nodes(head: RayHead) -> list[dict]:
    """The cluster's live nodes (the state API, with the token): ``[{"node_id", "resources_total", ...}]``."""
    req = urllib.request.Request(head.dashboard_url + "/api/v0/nodes?limit=100", headers=head.auth_headers())
    with urllib.request.urlopen(req, timeout=10) as resp:
        payload = json.loads(resp.read())
    nodes = payload.get("data", {}).get("result", {}).get("result", [])
    return [n for n in nodes if n.get("state") == "ALIVE"]


def submit_job(
    head: RayHead,
    entrypoint_args: list[str],
    *,
    working_dir: str | os.PathLike,
    env: dict[str, str] | None = None,
    timeout: float,
    excludes: list[str] | None = None,
    runtime_env: dict | None = None,
    entrypoint_num_cpus: float | None = None,
) -> subprocess.CompletedProcess:
    """``ray job submit`` to ``head`` with its token; blocks until the job ends or ``timeout``.

    Runs ``ray job submit --address <dashboard_url> --submission-id <id> --working-dir <dir>
    --runtime-env <file> -- <entrypoint_args...>`` with ``RAY_AUTH_MODE=token`` and
    ``RAY_AUTH_TOKEN_PATH`` in the CLI's environment. The entrypoint is quoted by the CLI
    (``shlex.join``), so pass it as a list: ``["python", "jobs/train.py", "--steps", "2"]``.
    ``python`` in the entrypoint is the interpreter running the tests.

    ``env`` becomes the job's runtime_env ``env_vars``, written to a YAML file beside the
    token (never on the command line). They reach the driver and all the job's tasks and
    actors. They are stored with the job and visible through the (authenticated) job API,
    so pass non-secrets here (``AWS_ENDPOINT_URL``); give secrets to ``local_ray_head(env=)``
    instead, which is the node's own environment.

    ``working_dir`` is zipped and uploaded; ``excludes`` (default ``WORKING_DIR_EXCLUDES``,
    gitignore syntax) are skipped on top of Ray's defaults and the dir's .gitignore.
    ``runtime_env`` (e.g. ``yaml.safe_load`` of cluster/runtime_env.yaml) is the base the
    above are merged into: its own ``excludes`` win over the default, ``env`` is added to
    its ``env_vars``, and ``working_dir`` replaces its working_dir.

    Returns the CompletedProcess (stdout holds the job's streamed logs; return code 1 when
    the job failed). On timeout the job is stopped on the cluster and
    ``subprocess.TimeoutExpired`` is raised with the output so far.
    """
    submission_id = f"test-{uuid.uuid4().hex[:12]}"
    runtime_env = dict(runtime_env or {})
    runtime_env.pop("working_dir", None)  # --working-dir below
    if excludes is not None or "excludes" not in runtime_env:
        runtime_env["excludes"] = list(WORKING_DIR_EXCLUDES if excludes is None else excludes)
    if env:
        merged = dict(runtime_env.get("env_vars") or {})
        merged.update({str(k): str(v) for k, v in env.items()})
        runtime_env["env_vars"] = merged
    env_file = head.tmp_path / f"runtime_env_{submission_id}.yaml"
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(runtime_env, f)

    cmd = ray_cli() + [
        "job",
        "submit",
        "--address",
        head.dashboard_url,
        "--submission-id",
        submission_id,
        "--working-dir",
        str(working_dir),
        "--runtime-env",
        str(env_file),
    ]
    if entrypoint_num_cpus is not None:
        cmd += ["--entrypoint-num-cpus", str(entrypoint_num_cpus)]
    cmd += ["--", *entrypoint_args]
    try:
        return subprocess.run(
            cmd,
            env=head.client_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        # The CLI was killed; the job still runs on the cluster: stop it.
        subprocess.run(
            ray_cli() + ["job", "stop", "--address", head.dashboard_url, submission_id],
            env=head.client_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        raise subprocess.TimeoutExpired(e.cmd, e.timeout, output=e.output, stderr=e.stderr) from None


def job_succeeded(result: subprocess.CompletedProcess) -> bool:
    """True when ``ray job submit`` reports the job succeeded (exit 0 alone also covers 'stopped')."""
    return result.returncode == 0 and "succeeded" in (result.stdout or "") + (result.stderr or "")


def job_output(result: subprocess.CompletedProcess) -> str:
    """stdout and stderr of a ``submit_job`` result, for assertion messages."""
    return f"--- exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"

