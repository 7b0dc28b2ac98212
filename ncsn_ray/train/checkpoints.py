"""Finding, pinning and loading NCSN checkpoints in object storage.

A training run lives at ``{storage}/{name}/`` (Ray Train's ``RunConfig(storage_path,
name)``). Each Ray Train checkpoint is a folder ``checkpoint_XXXXXXXX`` holding
``checkpoint.pt`` (the :mod:`ncsn_core.checkpoint` format, optimiser included) and
``step.txt``. A checkpoint URI given to a job may name the run folder (its newest
checkpoint is used), one checkpoint folder, or a ``.pt`` file.

Pinning: a job that reads a checkpoint on many workers resolves the URI once, to one file,
and records its SHA-256 (:class:`PinnedCheckpoint`); every worker loads that file and checks
the digest, so a checkpoint written by a training job mid-way cannot mix into one job.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Any

from ncsn_core.checkpoint import Checkpoint, CheckpointError, load_checkpoint

from ..io.layout import CHECKPOINT_FILE, STEP_FILE
from ..io.storage import Storage, StorageError

__all__ = [
    "CHECKPOINT_FILE",
    "STEP_FILE",
    "PinnedCheckpoint",
    "list_checkpoints",
    "resolve_checkpoint",
    "read_checkpoint_bytes",
    "load_checkpoint_uri",
    "pin_checkpoint",
    "load_pinned",
    "newest_valid_checkpoint",
    "ResumePoint",
    "set_aside",
]

_CHECKPOINT_DIR = re.compile(r"^checkpoint_")


def list_checkpoints(run: Storage) -> list[tuple[int, str]]:
    """``(step, folder name)`` of every complete checkpoint in a run folder, oldest first."""
    found = []
    for name in run.list():
        if not _CHECKPOINT_DIR.match(name) or not run.exists(f"{name}/{CHECKPOINT_FILE}"):
            continue
        step = -1
        if run.exists(f"{name}/{STEP_FILE}"):
            try:
                step = int(run.read_bytes(f"{name}/{STEP_FILE}").decode().strip())
            except ValueError:
                step = -1
        found.append((step, name))
    return sorted(found)


def resolve_checkpoint(uri: str, *, endpoint_url: str | None = None) -> Storage:
    """The storage location of a checkpoint *file* for a run, checkpoint folder or file URI."""
    target = Storage.from_uri(uri, endpoint_url=endpoint_url)
    if target.is_file():
        return target
    if target.is_file(CHECKPOINT_FILE):
        return target.child(CHECKPOINT_FILE)
    checkpoints = list_checkpoints(target)
    if not checkpoints:
        raise CheckpointError(
            f"{uri}: no checkpoint found (expected a .pt file, a checkpoint_* folder, or a training run folder)"
        )
    return target.child(checkpoints[-1][1], CHECKPOINT_FILE)


def read_checkpoint_bytes(uri: str, *, endpoint_url: str | None = None) -> tuple[bytes, Storage]:
    """The raw bytes of the checkpoint file a URI names, and where that file is."""
    try:
        location = resolve_checkpoint(uri, endpoint_url=endpoint_url)
        return location.read_bytes(), location
    except StorageError as err:
        raise CheckpointError(str(err)) from err


def load_checkpoint_uri(uri: str, *, endpoint_url: str | None = None) -> tuple[Checkpoint, str]:
    """Load (and verify) the checkpoint a URI names; returns it and the file's URI."""
    data, location = read_checkpoint_bytes(uri, endpoint_url=endpoint_url)
    return load_checkpoint(data, name=location.uri), location.uri


@dataclass
class ResumePoint:
    """Where a run resumes: the newest checkpoint that verifies (None if there is none) and
    the newer ones that did not, as ``(folder URI, why)``."""

    checkpoint: Checkpoint | None
    uri: str | None
    corrupt: list[tuple[str, str]]


# Ray Train's record of the checkpoints it registered in a run folder. It names every folder
# it knows and refuses to start when one is missing, so it goes when a folder is set aside.
RAY_TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"


def set_aside(run: Storage, name: str) -> str:
    """Move checkpoint folder ``name`` to ``corrupt-<name>`` (kept for inspection, no longer
    a checkpoint a run resumes from or overwrites); returns the new folder's URI.

    Ray Train's snapshot of the run's checkpoints is deleted with it: the job resumes from the
    checkpoint it chooses itself (``resume_uri``), and Ray starts a new record. The cost: the
    checkpoints written before are no longer pruned by ``keep_checkpoints``."""
    target = f"corrupt-{name}"
    for rel in run.list(name, recursive=True):
        if run.is_file(f"{name}/{rel}"):
            run.write_bytes(f"{target}/{rel}", run.read_bytes(f"{name}/{rel}"))
    run.delete(name)
    if run.exists(RAY_TRAIN_SNAPSHOT):
        run.delete(RAY_TRAIN_SNAPSHOT)
    return run.uri_of(target)


def newest_valid_checkpoint(run: Storage) -> ResumePoint:
    """Load the run folder's checkpoints from the newest down until one verifies. Corrupt
    ones are reported, not touched; a run with none at all gives an empty point."""
    corrupt: list[tuple[str, str]] = []
    for _, name in reversed(list_checkpoints(run)):
        folder = run.child(name)
        try:
            data = folder.read_bytes(CHECKPOINT_FILE)
            return ResumePoint(load_checkpoint(data, name=folder.uri_of(CHECKPOINT_FILE)), folder.uri, corrupt)
        except (CheckpointError, StorageError) as err:
            corrupt.append((folder.uri, str(err)))
    return ResumePoint(None, None, corrupt)


@dataclass(frozen=True)
class PinnedCheckpoint:
    """One checkpoint *file* and its SHA-256: what every worker of a job loads."""

    uri: str
    sha256: str
    step: int

    def identity(self) -> dict[str, Any]:
        """What decides a job's output (the URI is where the file was, not what it is)."""
        return {"sha256": self.sha256, "step": self.step}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pin_checkpoint(uri: str, *, endpoint_url: str | None = None) -> tuple[Checkpoint, PinnedCheckpoint]:
    """Resolve a run folder / checkpoint folder / ``.pt`` URI to one file, load and verify it."""
    data, location = read_checkpoint_bytes(uri, endpoint_url=endpoint_url)
    checkpoint = load_checkpoint(data, name=location.uri)
    return checkpoint, PinnedCheckpoint(location.uri, hashlib.sha256(data).hexdigest(), checkpoint.step)


def load_pinned(pinned: PinnedCheckpoint, *, endpoint_url: str | None = None) -> Checkpoint:
    """Load the pinned file, refusing it if its bytes changed since it was pinned."""
    try:
        data = Storage.from_uri(pinned.uri, endpoint_url=endpoint_url).read_bytes()
    except StorageError as err:
        raise CheckpointError(str(err)) from err
    if hashlib.sha256(data).hexdigest() != pinned.sha256:
        raise CheckpointError(f"{pinned.uri}: the checkpoint file changed while the job was running")
    return load_checkpoint(data, name=pinned.uri)
