"""Experiment tracking: TensorBoard event files in the run folder, written by rank 0 (and,
with ``--tracking mlflow``, an MLflow run: :mod:`ncsn_ray.train.mlflow_log`).

Layout: ``{run}/tensorboard/events.out.tfevents.*``, one file per training attempt (a first
run, each resume, each restart after a worker failure). TensorBoard reads a folder of event
files as one run, so ``tensorboard --logdir {run}/tensorboard`` (or the parent folder, for
several runs) shows a resumed run as one continuous curve. An attempt that starts from the
step-k checkpoint opens its file with a *purge* at step k + 1 (``SessionLog.START``), which
tells TensorBoard to drop whatever an earlier attempt logged past step k: a restart after a
crash therefore shows no step twice.

What is logged, at every log window: ``loss`` (the window's mean, weighted as trained),
``loss_per_sigma/L{i}_sigma{value}`` (one per noise level), ``images_per_s``,
``learning_rate`` and ``workers`` (the worker group's size: an elastic run's resizes); at every checkpoint: the preview grid as ``samples``. Steps are
optimisation steps.

Events are written to a local temporary file, copied whole into the run folder after every
window, so the same code serves local disk and object storage (S3 has no append). At every
checkpoint the file is closed and a new one begun (``…{attempt}.{segment}``), so a copy
holds one checkpoint interval's events, never the whole run's.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..io.storage import Storage

__all__ = ["TensorBoardLog", "TRACKING_FOLDER", "TRACKERS", "parse_tracking", "open_trackers", "read_events"]

TRACKING_FOLDER = "tensorboard"
TRACKERS = ("tensorboard", "mlflow")  # --tracking takes a comma-separated list of these, or none


def parse_tracking(value: str) -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` -> ``("tensorboard", "mlflow")``; ``"none"`` -> ``()``;
    a :class:`~ncsn_ray.errors.UserError` naming the choices otherwise."""
    from ..errors import UserError

    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    if names == ("none",):
        return ()
    unknown = [name for name in names if name not in TRACKERS]
    if not names or unknown:
        raise UserError(f"--tracking takes a comma-separated list of {', '.join(TRACKERS)}, or none; got {value!r}")
    return names


def open_trackers(names: Sequence[str], run: Storage, start_step: int, sigmas: Sequence[float], *,
                  run_name: str = "", config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> list:
    """Rank 0's trackers, each with ``window``, ``image``, ``checkpoint_done`` and ``close(finished)``."""
    trackers: list = []
    for name in names:
        if name == "tensorboard":
            trackers.append(TensorBoardLog(run, start_step, sigmas))
        elif name == "mlflow":
            from .mlflow_log import MlflowLog

            trackers.append(MlflowLog(run, run_name, config or {}, sigmas, env or {}))
    return trackers


class TensorBoardLog:
    """Rank 0's TensorBoard writer for the run folder ``run``, resuming after ``start_step``.

    Events are written synchronously (tensorboardX's ``EventsWriter``, not its
    ``SummaryWriter``, whose queue ``flush()`` does not drain), so every copy into the run
    folder holds everything logged so far."""

    def __init__(self, run: Storage, start_step: int, sigmas: Sequence[float]):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto import event_pb2

        self._event_pb2 = event_pb2
        self.run = run.child(TRACKING_FOLDER)
        self.sigmas = [float(s) for s in sigmas]
        self.local = Path(tempfile.mkdtemp(prefix="ncsn-tensorboard-"))
        attempt, self.segment = uuid.uuid4().hex[:8], 0
        self._new_writer = lambda segment: EventsWriter(  # names sort by time, then attempt, then segment
            str(self.local / "events"), filename_suffix=f".{attempt}.{segment:05d}")
        self.writer = self._new_writer(self.segment)
        if start_step > 0:  # TensorBoard drops what earlier files logged at or after this step
            self.writer.write_event(event_pb2.Event(
                wall_time=time.time(), step=start_step + 1,
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def _write(self, step: int, summary) -> None:
        self.writer.write_event(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def window(self, step: int, loss: float, per_sigma: Sequence[float | None], images_per_s: float,
               learning_rate: float, workers: int | None = None) -> None:
        """The scalars of one log window (``workers``: the size of the group that trained it),
        then a copy of the event file into the run folder."""
        from tensorboardX.summary import scalar

        self._write(step, scalar("loss", loss))
        for i, (sigma, value) in enumerate(zip(self.sigmas, per_sigma)):
            if value is not None:
                self._write(step, scalar(f"loss_per_sigma/L{i:02d}_sigma{sigma:.4g}", value))
        self._write(step, scalar("images_per_s", images_per_s))
        self._write(step, scalar("learning_rate", learning_rate))
        if workers is not None:
            self._write(step, scalar("workers", float(workers)))
        self.sync()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Named scalars at ``step`` (the quality scores of checkpoint evaluations)."""
        from tensorboardX.summary import scalar

        for name, value in values.items():
            self._write(step, scalar(name, float(value)))
        self.sync()

    def image(self, step: int, grid: Any) -> None:
        """A preview grid (a PIL image) as ``samples`` at ``step``."""
        from tensorboardX.summary import image

        self._write(step, image("samples", np.asarray(grid.convert("RGB")), dataformats="HWC"))
        self.sync()

    def sync(self) -> None:
        """Flush, and copy the open event file into ``{run}/tensorboard/``."""
        self.writer.flush()
        for path in sorted(self.local.iterdir()):
            self.run.write_bytes(path.name, path.read_bytes())

    def checkpoint_done(self) -> None:
        """At a checkpoint: copy and close the open file, and begin the next one."""
        self.sync()
        self.writer.close()
        for path in self.local.iterdir():
            path.unlink()
        self.segment += 1
        self.writer = self._new_writer(self.segment)

    def close(self, finished: bool = True) -> None:
        self.sync()
        self.writer.close()
        shutil.rmtree(self.local, ignore_errors=True)


def read_events(folder: Storage) -> dict[str, dict[int, float | bytes]]:
    """``{tag: {step: value}}`` of every event file in ``folder`` as TensorBoard shows them
    (a scalar as a float, an image as its PNG bytes): files in name (time) order, a purge at
    step p dropping earlier events at or after p. A reader for tests and scripts;
    TensorBoard itself is not a dependency."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float | bytes]] = {}
    for name in sorted(n for n in folder.list() if n.startswith("events.out.tfevents")):
        for event in _records(folder.read_bytes(name), event_pb2.Event):
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                for values in scalars.values():
                    for step in [s for s in values if s >= event.step]:
                        del values[step]
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
                elif value.HasField("image"):
                    scalars.setdefault(value.tag, {})[int(event.step)] = bytes(value.image.encoded_image_string)
    return scalars


def _records(data: bytes, message_type):
    """The messages of a TFRecord byte string (length, length CRC, payload, payload CRC)."""
    offset = 0
    while offset + 12 <= len(data):
        length = int.from_bytes(data[offset:offset + 8], "little")
        payload = data[offset + 12:offset + 12 + length]
        offset += 12 + length + 4
        yield message_type.FromString(payload)
