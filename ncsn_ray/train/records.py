"""Rank 0's records of a training run, in the run folder and the trackers (:class:`RunRecord`).

* ``metrics.jsonl``: one JSON object per log window (step, loss, loss per sigma, images/s,
  time, ``workers``: the size of the worker group that trained it), one per finished
  evaluation (``{"step", "eval"}``), one per change of settings on resumption
  (``{"step", "config_change"}``) and one per change of the worker group's size
  (``{"step", "resize": {"from", "to", "redone_steps", "gap_s"}}``, see :meth:`RunRecord.note_resize`);
  rewritten whole at each addition (object storage has no append). A resumed run keeps the
  lines up to its checkpoint's step.
* ``loss.png``: the loss per noise level over steps and, beside it, the quality scores.
* ``samples/step_XXXXXXXX.png``: a grid sampled at each checkpoint with the generation sampler.
* the trackers (:mod:`ncsn_ray.train.tracking`: TensorBoard, MLflow): the same scalars and grids,
  and ``workers`` at every window (a resize shows as a step in that curve).
* the console: one progress line per log window and per evaluation.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch

from ncsn_core.config import Config

from ..console import format_seconds
from ..io.figures import curve_plot, hstack_panels, loss_plot
from ..io.layout import LOSS_PLOT, METRICS_FILE
from ..io.storage import Storage
from ..sample.sampler import Sampler, SamplerSettings, preview_grid
from .evaluation import describe as describe_evaluation, to_json_line
from .state import TrainState
from .tracking import open_trackers

__all__ = ["RunRecord", "log_line", "PREVIEW_STEPS_PER_LEVEL"]

PREVIEW_STEPS_PER_LEVEL = 10


def log_line(message: str) -> None:
    """One progress line. Not ``print``: Ray Train V2 patches ``print`` in workers and, with
    Ray's redirected stdout, every line would reach the driver twice."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


class RunRecord:
    """Rank 0's outputs in the run folder: metrics lines, the loss plot, preview grids, and
    the trackers' records (``tracking``: names from :data:`~ncsn_ray.train.tracking.TRACKERS`;
    ``tracking_env``: the MLflow settings the driver shipped)."""

    def __init__(self, run: Storage, config: Config, sigmas: torch.Tensor, start_step: int,
                 tracking: tuple[str, ...] | list[str] = ("tensorboard",), tracking_env: dict[str, str] | None = None,
                 *, workers: int = 1, show_workers: bool = False):
        self.run, self.config, self.sigmas = run, config, sigmas
        self.workers, self.show_workers = workers, show_workers
        self.trackers = open_trackers(tracking, run, start_step, sigmas.tolist(), run_name=run.uri.rstrip("/").rsplit("/", 1)[-1],
                                      config=config.to_dict(), env=tracking_env)
        self.lines: list[str] = []
        dropped: list[dict[str, Any]] = []
        if run.exists(METRICS_FILE):
            kept = [ln for ln in run.read_bytes(METRICS_FILE).decode().splitlines() if ln.strip()]
            self.lines = [ln for ln in kept if json.loads(ln).get("step", 0) <= start_step]
            dropped = [json.loads(ln) for ln in kept if json.loads(ln).get("step", 0) > start_step]
        self.start_step, self.started = start_step, time.perf_counter()
        self.loop_started_at = time.time()  # wall clock when this attempt's first step began
        self.note_resize(dropped)

    def note_resize(self, dropped: list[dict[str, Any]]) -> None:
        """If this attempt's group has another size than the one that trained the newest kept
        window, record the resize: a ``metrics.jsonl`` line
        ``{"step", "resize": {"from", "to", "redone_steps", "gap_s"}, "time"}``, the trackers'
        ``workers`` scalar and a console line. ``redone_steps``: steps the previous group had
        logged past the checkpoint this attempt starts from (``dropped``, the windows it
        discards), which are trained again: the work the resize lost, counted to the log
        window (``training.log_every``). ``gap_s``: seconds from the previous group's last
        logged window to this attempt's start (the restart's cost; None if nothing was logged)."""
        windows = [json.loads(ln) for ln in self.lines]
        windows = [w for w in windows if "workers" in w and "loss" in w] + [w for w in dropped if "workers" in w]
        if not windows or windows[-1]["workers"] == self.workers:
            return
        last = windows[-1]
        redone = max((w["step"] for w in dropped if "loss" in w), default=self.start_step) - self.start_step
        gap = round(self.loop_started_at - last["time"], 1) if "time" in last else None
        entry = {"step": self.start_step, "resize": {"from": last["workers"], "to": self.workers,
                                                    "redone_steps": redone, "gap_s": gap},
                 "time": round(self.loop_started_at, 3)}
        self.note(entry)
        for tracker in self.trackers:
            tracker.scalars(self.start_step, {"workers": float(self.workers)})
        log_line(f"[train] worker group resized from {last['workers']} to {self.workers} workers: resuming at step "
                 f"{self.start_step + 1} from the checkpoint at step {self.start_step} ({redone} step(s) trained again"
                 + (f", {gap:.0f} s since the last window" if gap is not None else "") + ")")

    def log_window(self, step: int, window: dict[str, Any], global_batch: int, learning_rate: float) -> None:
        tc = self.config.training
        images_per_s = window["steps"] * global_batch / max(window["seconds"], 1e-9)
        steps_per_s = (step - self.start_step) / max(time.perf_counter() - self.started, 1e-9)
        eta = (tc.steps - step) / steps_per_s if steps_per_s > 0 else float("inf")
        record = {"step": step, "loss": round(window["loss"], 6), "loss_per_sigma": window["per_sigma"],
                  "images_per_s": round(images_per_s, 2), "time": round(time.time(), 3),
                  "loop_started_at": round(self.loop_started_at, 3), "workers": self.workers}
        self.lines.append(json.dumps(record))
        self._save_lines()
        for tracker in self.trackers:
            tracker.window(step, window["loss"], window["per_sigma"], images_per_s, learning_rate, workers=self.workers)
        per_sigma = " ".join(f"{v:.3g}" if v is not None else "-" for v in window["per_sigma"])
        log_line(f"[train] step {step}/{tc.steps}  loss {window['loss']:.4f}  {images_per_s:.1f} img/s  "
                 + (f"{self.workers} workers  " if self.show_workers else "")
                 + f"eta {format_seconds(eta)}  loss/sigma {per_sigma}")

    def add_evaluations(self, records: list[dict[str, Any]]) -> None:
        """Finished checkpoint evaluations: a ``metrics.jsonl`` line, a log line and tracker scalars each."""
        for record in records:
            self.lines.append(to_json_line(record))
            log_line(f"[train] quality at step {record['step']}: {describe_evaluation(record)}"
                 + ("  (best so far)" if record.get("best") else ""))
            values = {f"eval/{record['metric'].split('@')[0]}": record["score"],
                      **{f"eval/{key}": record[key] for key in ("precision", "recall") if key in record}}
            for tracker in self.trackers:
                tracker.scalars(record["step"], values)
        if records:
            self._save_lines()

    def evaluation_steps(self) -> set[int]:
        """The steps whose evaluation ``metrics.jsonl`` already holds."""
        return {entry["step"] for entry in map(json.loads, self.lines) if "eval" in entry}

    def _save_lines(self) -> None:
        """Rewrite ``metrics.jsonl`` whole (object storage has no append)."""
        self.run.write_bytes(METRICS_FILE, ("\n".join(self.lines) + "\n").encode())

    def note(self, entry: dict[str, Any]) -> None:
        """Append a record that is not a loss window (e.g. settings changed on resume)."""
        self.lines.append(json.dumps(entry))
        self._save_lines()

    def draw_loss(self) -> None:
        """``loss.png``: the loss per noise level over steps and, beside it, the quality scores."""
        parsed = [json.loads(line) for line in self.lines]
        records = [r for r in parsed if "loss_per_sigma" in r]
        image = loss_plot([r["step"] for r in records], [r["loss_per_sigma"] for r in records], self.sigmas.tolist(),
                          title=f"{self.config.name}: " + ("consistency loss per interval (by its upper sigma)"
                                                            if self.config.is_consistency else
                                                            "loss per noise level (weighted by sigma^2)"))
        scores = sorted((r["step"], r["eval"]["score"]) for r in parsed if "eval" in r)
        if scores:
            metric = next(r["eval"]["metric"] for r in parsed if "eval" in r)
            curve = curve_plot({metric: scores}, x_label="step", y_label=f"{metric} (lower is better)",
                               title=f"{self.config.name}: quality of {metric.split('@')[0]} over steps", log_x=False,
                               height=image.height)
            image = hstack_panels([image, curve])
        self.run.write_png(LOSS_PLOT, image)

    def write_preview(self, state: TrainState, step: int, device: torch.device) -> str:
        """A grid sampled with the generation sampler (fewer steps per level) from the weights
        generation would use: the EMA weights, or the trained ones where ``sampling.ema`` is off."""
        config = self.config
        settings = SamplerSettings.from_config(config)
        settings = settings.with_steps(min(settings.steps_per_level, PREVIEW_STEPS_PER_LEVEL))
        shape = (config.data.channels, config.data.image_size, config.data.image_size)
        network = state.ema.module if settings.use_ema else state.model
        was_training = network.training
        sampler = Sampler(network, self.sigmas, settings, shape, device)
        grid = preview_grid(sampler, config.sampling.preview_samples)
        network.train(was_training)
        name = f"samples/step_{step:08d}.png"
        self.run.write_png(name, grid)
        for tracker in self.trackers:
            tracker.image(step, grid)
        return self.run.uri_of(name)

    def checkpoint_done(self) -> None:
        """After a checkpoint's outputs: the TensorBoard events so far are final."""
        for tracker in self.trackers:
            tracker.checkpoint_done()

    def close(self, finished: bool) -> None:
        for tracker in self.trackers:
            tracker.close(finished)
