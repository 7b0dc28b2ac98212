"""Consistency distillation against its teacher: quality at 1 and 2 NFE, and what it costs.

Runs what a user runs, as subprocesses in one folder: ``python jobs/train.py`` (the teacher:
the shipped ``--config``, digits by default; skipped with ``--teacher RUN``) and then
``python jobs/distill.py --checkpoint <teacher>`` (the shipped recipe unless ``--recipe``),
and prints:

* the teacher's training time and the distillation's, each as the job's wall time and as its
  training loop's time (first step to last window, from the run's ``metrics.jsonl``), with
  their ratio (issue 35's bar: distillation no longer than the teacher's training);
* the digits metric, as the mean ± std over ``--seed-sets`` disjoint sets of ``--n`` samples
  (seeds 0-511, 512-1023, 1024-1535 by default), of the teacher with its own sampler and of
  the student at K = 1 and K = 2 network evaluations per sample;
* the bar: at 2 NFE, Fréchet distance at most 1.25x the teacher's and recall no more than 0.03
  below it; at 1 NFE, Fréchet distance at most 2x the teacher's; distillation time at most
  the teacher's training time. Each line says met or MISSED.

With ``--teacher RUN`` the teacher is not trained here and its training time is read from its
``metrics.jsonl`` (measured when it was trained, perhaps on a busier or quieter machine: the
time ratio is then only indicative). The machine and its plain-loop speed are printed first.

    python benchmarks/bench_distill.py [--config digits] [--teacher RUN] [--recipe auto]
        [--n 512] [--seed-sets 3] [--keep DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_first_look import timed  # noqa: E402
from benchmarks.bench_train import yardstick_images_per_s  # noqa: E402
from benchmarks.machine import describe, machine_facts  # noqa: E402
from ncsn_ray.data.format import read_manifest  # noqa: E402
from ncsn_ray.data.ingest import read_images  # noqa: E402
from ncsn_ray.evaluate.spread import format_spread  # noqa: E402
from ncsn_ray.io.storage import Storage  # noqa: E402
from ncsn_ray.tune.trial import draw_and_score  # noqa: E402

FD_AT_2 = 1.25  # student's FD at K = 2 over the teacher's, at most
FD_AT_1 = 2.0  # at K = 1
RECALL_DROP = 0.03  # the student's recall at K = 2 no lower than the teacher's minus this


def loop_seconds(run: Path) -> float:
    """The training loop's time from a run's ``metrics.jsonl``: from the start of the attempt
    that logged the first window to the last window (summed over attempts if it resumed)."""
    windows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    windows = [w for w in windows if "loss" in w]
    total, attempt_start, last = 0.0, None, None
    for window in windows:
        if window["loop_started_at"] != attempt_start:
            if last is not None:
                total += last - attempt_start
            attempt_start = window["loop_started_at"]
        last = window["time"]
    return total + (last - attempt_start if last is not None else 0.0)


def quality(checkpoint: Path, overrides: list[str], n: int, sets: int) -> dict:
    """``{metric: {"mean", "std", "values"}}`` of the digits metric and ``"nfe"``."""
    result = draw_and_score(str(checkpoint), overrides, n, "digits", seed_sets=sets)
    spread = {("fd_ratio" if key == "score" else key): entry for key, entry in result.spread.items()}
    return {"nfe": result.nfe, **spread}


def quality_line(name: str, q: dict) -> str:
    keys = ("fd_ratio", "precision", "recall", "confidence", "max_class_share")
    return f"{name:22s} {q['nfe']:3d} NFE  " + "  ".join(
        f"{key} {format_spread(q[key], 3)}" for key in keys)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="digits", help="the teacher's shipped config when it is trained here")
    p.add_argument("--teacher", default=None, help="a trained run to distil instead of training one here")
    p.add_argument("--teacher-train-s", type=float, default=None,
                   help="with --teacher: its training time in seconds, when its folder has no metrics.jsonl")
    p.add_argument("--recipe", default="auto", help="jobs/distill.py --recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="jobs/distill.py --set (repeatable)")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--seed-sets", type=int, default=3)
    p.add_argument("--keep", default=None, help="work in this folder and keep it")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    facts = machine_facts()
    print(describe(facts), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / "runs" / "data" / "digits"
        if not data.exists():
            timed([sys.executable, str(ROOT / "jobs" / "prepare_data.py"), "--dataset", "digits", "--out", str(data)],
                  folder, folder / "prepare.log")
        if args.teacher is None:
            teacher = folder / "runs" / args.config
            teacher_wall = timed([sys.executable, str(ROOT / "jobs" / "train.py"), "--config", args.config,
                                    "--data", str(data), "--storage", str(folder / "runs")], folder, folder / "train.log")
        else:
            teacher, teacher_wall = Path(args.teacher).resolve(), None
        teacher_loop = args.teacher_train_s if args.teacher_train_s else loop_seconds(teacher)
        student = folder / "runs" / "student"
        distill_wall = timed([sys.executable, str(ROOT / "jobs" / "distill.py"), "--checkpoint", str(teacher),
                                "--data", str(data), "--storage", str(folder / "runs"), "--name", "student",
                                "--recipe", args.recipe, *sum((["--set", o] for o in args.overrides), [])],
                               folder, folder / "distill.log")
        distill_loop = loop_seconds(student)
        images = read_images(Storage.from_uri(str(data)), read_manifest(Storage.from_uri(str(data))))
        plain = yardstick_images_per_s(images)
        print(f"plain loop {plain:.0f} img/s (the README's yardstick of this machine's speed)", flush=True)
        rows = {"teacher": quality(teacher, [], args.n, args.seed_sets)}
        for k in (1, 2):
            rows[f"student K={k}"] = quality(student, [f"sampling.steps={k}"], args.n, args.seed_sets)
    for name, q in rows.items():
        print(quality_line(name, q))
    t, s1, s2 = rows["teacher"], rows["student K=1"], rows["student K=2"]
    bars = {
        "K=2 FD <= 1.25x the teacher's": s2["fd_ratio"]["mean"] <= FD_AT_2 * t["fd_ratio"]["mean"],
        "K=2 recall >= the teacher's - 0.03": s2["recall"]["mean"] >= t["recall"]["mean"] - RECALL_DROP,
        "K=1 FD <= 2x the teacher's": s1["fd_ratio"]["mean"] <= FD_AT_1 * t["fd_ratio"]["mean"],
        "distillation time <= the teacher's training time": distill_loop <= teacher_loop,
    }
    print(f"\nteacher training: loop {teacher_loop:.1f} s" + (f", job {teacher_wall:.1f} s" if teacher_wall else
                                                             (" (given by --teacher-train-s)" if args.teacher_train_s else " (read from its metrics.jsonl)"))
          + f"; distillation: loop {distill_loop:.1f} s, job {distill_wall:.1f} s; ratio (loops) "
          f"{distill_loop / teacher_loop:.2f}")
    print(f"K=2: FD {s2['fd_ratio']['mean']:.3f} = {s2['fd_ratio']['mean'] / t['fd_ratio']['mean']:.2f}x the teacher's "
          f"{t['fd_ratio']['mean']:.3f}; recall {s2['recall']['mean']:.3f} vs {t['recall']['mean']:.3f}; "
          f"K=1: FD {s1['fd_ratio']['mean'] / t['fd_ratio']['mean']:.2f}x")
    for bar, met in bars.items():
        print(f"  {bar}: {'met' if met else 'MISSED'}")
    result = {"benchmark": "distill", "machine": facts, "plain_images_per_s": round(plain, 1),
              "teacher": str(teacher), "recipe": args.recipe, "overrides": args.overrides,
              "teacher_loop_s": round(teacher_loop, 1), "teacher_job_s": teacher_wall and round(teacher_wall, 1),
              "distill_loop_s": round(distill_loop, 1), "distill_job_s": round(distill_wall, 1),
              "quality": {name: {"nfe": q["nfe"], **{k: {"mean": round(v["mean"], 4), "std": round(v["std"], 4)}
                                                   for k, v in q.items() if k != "nfe"}} for name, q in rows.items()},
              "bars": bars, "all_met": all(bars.values())}
    line = json.dumps(result)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
