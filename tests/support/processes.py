"""Process-level helpers for the test clusters (Linux): finding a cluster's processes by the
environment marker they inherit, and reaping them as a child subreaper."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

__all__ = ["MARKER_VAR", "cluster_processes", "subreaper", "reap_zombies"]


MARKER_VAR = "NCSN_RAY_HEAD_TAG"


def cluster_processes(tag: str) -> list[int]:
    """PIDs of live processes whose initial environment carries ``MARKER_VAR=tag`` (Linux)."""
    needle = f"{MARKER_VAR}={tag}".encode()
    me = os.getpid()
    pids = []
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(pid)
    return pids


_PR_SET_CHILD_SUBREAPER = 36


_PR_GET_CHILD_SUBREAPER = 37


def subreaper(on: bool | None) -> bool | None:
    """Make this process a child subreaper (Linux), so that the cluster's orphans become
    our children and can be reaped instead of lingering as zombies under a PID 1 that does
    not reap. Returns the previous setting (None where unsupported)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prev = ctypes.c_int(0)
        if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(prev), 0, 0, 0) != 0:
            return None
        if on is not None:
            libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
        return bool(prev.value)
    except (OSError, AttributeError):
        return None


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session) of a process from /proc/PID/stat, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[3])


def reap_zombies(seen: set[int], session: int) -> None:
    """waitpid the cluster's processes that ended as our (zombie) children."""
    me = os.getpid()
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        st = _stat(pid)
        if st is None or st[0] != "Z" or st[1] != me:
            continue
        if pid in seen or st[2] == session:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)

