"""Quality during training: every ``eval_every``-th checkpoint is sampled and scored on a
separate Ray actor while the training workers go on (``train.py --eval-every K --eval-n N
--eval-metric digits|fid``).

Rank 0 hands each due checkpoint's bytes (the same bytes it reported to Ray Train) to one
:class:`CheckpointEvaluator` actor, which works through them in order, one at a time: it
draws ``eval_n`` samples from seeds ``0 .. eval_n - 1`` (the same seeds at every step, so
that scores differ by the network only) with the run's own sampler settings, and scores
them. Metrics, lower is better for both: ``digits`` (the offline digits metric's Fréchet
distance, :mod:`ncsn_ray.evaluate.digits`; needs 8x8 grey data) and ``fid`` (FID against the
run's training data, torch-fidelity with the Inception weights given by
``--inception-weights`` or the torch hub cache).

Written to the run folder, by the evaluator:

* ``evals/step_XXXXXXXX.json``: ``{"step", "metric", "score", "n", "seconds", ...}``;
* ``best/checkpoint.pt`` and ``best/step.txt``, then ``best/score.json`` (written last: a
  ``best/`` folder without it is incomplete): the best-scored checkpoint so far, kept apart
  from Ray Train's ``keep_checkpoints`` rotation. ``generate.py --checkpoint RUN --pick best``
  samples from it.

Rank 0 collects finished evaluations at its log windows and appends them to
``metrics.jsonl`` (``{"step": s, "eval": {...}}``), to the trackers (``eval/<metric>``) and
to the run's plot; at the end of training it waits for the evaluations still queued. The
actor reserves one CPU when the cluster has one free when it starts, else none (it then
shares the training workers' CPUs).

Faults change nothing here either: a worker failure takes the evaluator with it, and the
evaluations it still had queued with them; when the run resumes (Ray Train's restart or a
re-run of the command), rank 0 first evaluates every due checkpoint up to the resumed step
that has no ``evals/`` record and is still kept, and adds to ``metrics.jsonl`` the records
that were written but never collected (:meth:`EvaluationQueue.catch_up`). Sampling is
seeded and the checkpoints are bit-identical to an uninterrupted run's, so the records and
``best/`` end the same. A due checkpoint that ``keep_checkpoints`` already rotated away
cannot be evaluated any more: the job says which.

Why not Ray Train's own asynchronous validation: it is an alpha API whose signature changed
inside the Ray range this project supports (``report(validate_fn=..., validate_config=...)``
in the 2.5x docs, ``ValidationConfig`` plus ``report(validation=...)`` in the pinned 2.60),
and its validated metrics live in Ray Train's checkpoint records, not in the run folder that
``generate.py --pick best`` and the trackers read. One actor of our own is a few lines and
keeps the best checkpoint outside ``keep_checkpoints``' rotation.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from ..io.layout import CHECKPOINT_FILE, STEP_FILE
from ..io.storage import Storage
from .checkpoints import list_checkpoints

__all__ = ["EVAL_METRICS", "EVALS_FOLDER", "BEST_FOLDER", "BEST_SCORE", "CheckpointEvaluator", "EvaluationQueue",
           "evaluation_due", "read_best", "read_evaluations"]

EVAL_METRICS = ("digits", "fid")
EVALS_FOLDER = "evals"
BEST_FOLDER = "best"
BEST_SCORE = "score.json"


class CheckpointEvaluator:
    """The evaluator (a Ray actor with ``max_concurrency=1``): :meth:`evaluate` one checkpoint."""

    def __init__(self, run_uri: str, endpoint_url: str | None, metric: str, n: int, data_uri: str,
                 inception_weights: str | None, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.run = Storage.from_uri(run_uri, endpoint_url=endpoint_url)
        self.metric, self.n, self.data_uri, self.endpoint_url = metric, n, data_uri, endpoint_url
        self.inception_weights = inception_weights

    def _score(self, images) -> dict[str, Any]:
        if self.metric == "digits":
            from ..evaluate import digits

            scored = digits.score(images)
            return {"metric": "digits_fd", "score": scored["digits_fd"],
                    "precision": scored["digits_precision"], "recall": scored["digits_recall"],
                    "confidence": scored["digits_confidence"]}
        from ..data.format import read_manifest
        from ..evaluate.fidelity import inception_scores

        data = Storage.from_uri(self.data_uri, endpoint_url=self.endpoint_url)
        scores, _ = inception_scores(images, data, read_manifest(data), ["fid"], reference_limit=None,
                                     inception_weights=self.inception_weights, endpoint_url=self.endpoint_url,
                                     batch_size=64, use_cuda=False, kid_subset_size=1000, log=lambda _: None)
        return {"metric": f"fid@{self.n}", "score": scores["frechet_inception_distance"]}

    def evaluate(self, step: int, checkpoint: bytes) -> dict[str, Any]:
        """Sample and score the checkpoint of ``step``; record it; keep it if it is the best."""
        from ncsn_core import load_checkpoint

        from ..sample.sampler import Sampler, SamplerSettings

        started = time.perf_counter()
        loaded = load_checkpoint(checkpoint, name=f"checkpoint at step {step}")
        sampler = Sampler.from_checkpoint(loaded, SamplerSettings.from_config(loaded.config))
        images = sampler.sample(list(range(self.n)))
        record = {"step": step, **self._score(images), "n": self.n,
                  "nfe_per_sample": sampler.nfe_per_sample, "seconds": round(time.perf_counter() - started, 2)}
        self.run.write_json(f"{EVALS_FOLDER}/step_{step:08d}.json", record)
        best = read_best(self.run)
        if best is None or record["score"] < best["score"]:
            folder = self.run.child(BEST_FOLDER)
            if folder.exists(BEST_SCORE):
                folder.delete(BEST_SCORE)  # the folder is incomplete until the new score is written
            folder.write_bytes(CHECKPOINT_FILE, checkpoint)
            folder.write_bytes(STEP_FILE, f"{step}\n".encode())
            folder.write_json(BEST_SCORE, record)
            record["best"] = True
        return record


def evaluation_due(step: int, *, checkpoint_every: int, eval_every: int, total_steps: int) -> bool:
    """Whether the checkpoint of ``step`` is evaluated: every ``eval_every``-th one (checkpoints
    fall on multiples of ``checkpoint_every``) and always the last."""
    if step >= total_steps:
        return True
    return step % checkpoint_every == 0 and (step // checkpoint_every) % eval_every == 0


def read_best(run: Storage) -> dict[str, Any] | None:
    """The record of the run's best-scored checkpoint (``best/score.json``), or None."""
    folder = run.child(BEST_FOLDER)
    return folder.read_json(BEST_SCORE) if folder.exists(BEST_SCORE) else None


def read_evaluations(run: Storage) -> list[dict[str, Any]]:
    """Every evaluation record of the run, by step."""
    folder = run.child(EVALS_FOLDER)
    if not folder.exists():
        return []
    return sorted((folder.read_json(name) for name in folder.list() if name.endswith(".json")),
                  key=lambda r: r["step"])


class EvaluationQueue:
    """Rank 0's side: submit due checkpoints, collect finished evaluations without waiting."""

    def __init__(self, run: Storage, *, metric: str, n: int, data_uri: str, inception_weights: str | None,
                 log: Callable[[str], None]):
        import ray

        spare = ray.available_resources().get("CPU", 0.0) >= 1.0
        self._actor = ray.remote(CheckpointEvaluator).options(num_cpus=1 if spare else 0, max_concurrency=1,
                                                                max_restarts=0).remote(
            run.uri, run.endpoint_url, metric, n, data_uri, inception_weights, 1)
        self._pending: dict[Any, int] = {}
        self.log = log

    def submit(self, step: int, checkpoint: bytes) -> None:
        self._pending[self._actor.evaluate.remote(step, checkpoint)] = step

    def catch_up(self, run: Storage, resumed_step: int, due: Callable[[int], bool],
                 logged_steps: set[int]) -> list[dict[str, Any]]:
        """After a resumption at ``resumed_step``: submit every due checkpoint up to it that has
        no record and is still kept (its evaluation was lost with a failed worker), and return
        the records up to it that ``metrics.jsonl`` lacks (``logged_steps``: the steps it has),
        for the caller to log. Says which due checkpoints are gone and cannot be evaluated."""
        if resumed_step <= 0:
            return []
        records = {r["step"]: r for r in read_evaluations(run) if r["step"] <= resumed_step}
        kept = {step: name for step, name in list_checkpoints(run) if 0 < step <= resumed_step}
        missing = [s for s in range(1, resumed_step + 1) if due(s) and s not in records]
        for step in missing:
            if step in kept:
                self.submit(step, run.read_bytes(f"{kept[step]}/{CHECKPOINT_FILE}"))
        resubmitted = [s for s in missing if s in kept]
        gone = [s for s in missing if s not in kept]
        if resubmitted:
            self.log(f"[train] evaluating again the checkpoints of step(s) {', '.join(map(str, resubmitted))}: "
                     "their evaluations were lost with a failed worker")
        if gone:
            self.log(f"[train] the checkpoints of step(s) {', '.join(map(str, gone))} were never evaluated and are "
                     "no longer kept (keep_checkpoints): they stay without a score")
        return [records[s] for s in sorted(records) if s not in logged_steps]

    def collect(self, wait: bool = False) -> list[dict[str, Any]]:
        """The evaluations finished so far (all of them with ``wait``); a failed one is logged."""
        import ray

        if not self._pending:
            return []
        ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=None if wait else 0)
        records = []
        for ref in ready:
            step = self._pending.pop(ref)
            try:
                records.append(ray.get(ref))
            except Exception as err:  # noqa: BLE001 - an evaluation never stops training
                self.log(f"[train] evaluation of step {step} failed: {type(err).__name__}: "
                         f"{str(err).splitlines()[-1] if str(err) else ''}")
        return sorted(records, key=lambda r: r["step"])


def describe(record: dict[str, Any]) -> str:
    """``digits_fd 1.234 (n 256, 5.1 s)`` for the log line."""
    extra = "".join(f", {key} {record[key]:.3f}" for key in ("precision", "recall") if key in record)
    return f"{record['metric']} {record['score']:.4g}{extra} (n {record['n']}, {record['seconds']:.1f} s)"


def to_json_line(record: dict[str, Any]) -> str:
    return json.dumps({"step": record["step"], "eval": {k: v for k, v in record.items() if k != "step"}})
