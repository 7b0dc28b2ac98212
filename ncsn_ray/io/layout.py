"""Where things live: default folder names and the names of the files inside each folder.

Defaults (relative to the current directory; every job takes a URI instead)::

    runs/                          DEFAULT_STORAGE: training runs, one folder per run name
    runs/<name>/                   a training run (Ray Train's RunConfig(storage_path, name))
    runs/data/<dataset>/           a prepared dataset
    runs/samples/<run>/            a generated sample set
    runs/inpaint/<run>/            an inpainting set

Folders that hold Parquet shards (prepared datasets and sample sets) keep everything else
under names that start with ``_``, so that the usual readers (``pyarrow.dataset``,
``pandas.read_parquet``, ``ray.data.read_parquet``, Spark, a ``**/*.parquet`` glob) pointed
at the folder read the shards as one table and skip the rest, as they skip Hadoop's
``_SUCCESS``. The manifest is written last: its presence means the folder is complete.
Sets written by earlier versions used the same names without the ``_``; the jobs still read
them (:data:`LEGACY_NAMES`).

A training run folder holds ``checkpoint_XXXXXXXX/`` (``checkpoint.pt``, ``step.txt``),
``metrics.jsonl``, ``loss.png``, ``samples/step_XXXXXXXX.png``, and ``stopped.json`` when
the workers stopped the run on purpose (a non-finite loss).
"""

from __future__ import annotations

from pathlib import PurePosixPath

__all__ = [
    "DEFAULT_STORAGE",
    "DEFAULT_CONFIG_NAME",
    "MANIFEST",
    "JOB_SPEC",
    "PREPARE_RECORD",
    "GRID",
    "FIGURE",
    "STRIP",
    "SCORES",
    "FIDELITY_CACHE",
    "LEGACY_NAMES",
    "CHECKPOINT_FILE",
    "STEP_FILE",
    "METRICS_FILE",
    "LOSS_PLOT",
    "STOPPED_FILE",
    "default_run_uri",
    "default_data_uri",
    "default_samples_uri",
    "run_name",
    "existing_name",
]

DEFAULT_STORAGE = "runs"
DEFAULT_CONFIG_NAME = "digits"

# Files beside Parquet shards (datasets and sample sets).
MANIFEST = "_manifest.json"
JOB_SPEC = "_job.json"
PREPARE_RECORD = "_prepare.json"
GRID = "_grid.png"
FIGURE = "_figure.png"
STRIP = "_annealing.png"
SCORES = "_scores.json"
FIDELITY_CACHE = "_fidelity-cache"
LEGACY_NAMES = {MANIFEST: "manifest.json", JOB_SPEC: "job.json", SCORES: "scores.json"}

# Files of a training run.
CHECKPOINT_FILE = "checkpoint.pt"
STEP_FILE = "step.txt"
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
STOPPED_FILE = "stopped.json"  # why the workers stopped a run on purpose (e.g. a non-finite loss)


def default_run_uri(name: str = DEFAULT_CONFIG_NAME) -> str:
    """``runs/<name>``: where ``jobs/train.py`` puts a run by default."""
    return f"{DEFAULT_STORAGE}/{name}"


def default_data_uri(dataset: str) -> str:
    """``runs/data/<dataset>``: where ``jobs/train.py`` prepares a dataset it was not given."""
    return f"{DEFAULT_STORAGE}/data/{dataset}"


def default_samples_uri(checkpoint_uri: str, kind: str = "generate") -> str:
    """``runs/samples/<run>`` (``runs/inpaint/<run>`` for inpainting) for a checkpoint URI."""
    folder = "samples" if kind == "generate" else "inpaint"
    return f"{DEFAULT_STORAGE}/{folder}/{run_name(checkpoint_uri)}"


def run_name(checkpoint_uri: str) -> str:
    """``digits`` for ``runs/digits``, ``runs/digits/checkpoint_00000003`` or ``.../checkpoint.pt``."""
    parts = [p for p in PurePosixPath(checkpoint_uri.rstrip("/")).parts if p not in ("/", "")]
    while parts and (parts[-1].endswith(".pt") or parts[-1].startswith("checkpoint_")):
        parts.pop()
    name = parts[-1] if parts else "samples"
    return name.split(":")[-1] or "samples"


def existing_name(folder, name: str) -> str | None:
    """``name`` if ``folder`` (a :class:`~ncsn_ray.io.storage.Storage`) holds it, else its legacy
    name if that is there (sets written before the ``_`` names), else None."""
    if folder.exists(name):
        return name
    legacy = LEGACY_NAMES.get(name)
    if legacy is not None and folder.exists(legacy):
        return legacy
    return None
