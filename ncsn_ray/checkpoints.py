"""Finding and loading NCSN checkpoints in object storage.

A training run lives at ``{storage}/{name}/`` (Ray Train's ``RunConfig(storage_path,
name)``). Each Ray Train checkpoint is a folder ``checkpoint_*`` holding
``checkpoint.pt`` (the :mod:`ncsn_core.checkpoint` format, optimiser included). A
checkpoint URI given to a job may name the run folder (its newest checkpoint is used), one
checkpoint folder, or a ``.pt`` file.
"""

from __future__ import annotations

import re

from ncsn_core.checkpoint import Checkpoint, CheckpointError, load_checkpoint

from .storage import Storage, StorageError

__all__ = ["CHECKPOINT_FILE", "resolve_checkpoint", "read_checkpoint_bytes", "load_checkpoint_uri", "list_checkpoints"]

CHECKPOINT_FILE = "checkpoint.pt"
STEP_FILE = "step.txt"
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
