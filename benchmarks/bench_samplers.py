"""Sample quality against cost, for every sampler, on one trained digits checkpoint.

For each sampler setting of a grid (annealed Langevin at several T, Euler and Heun steps of
the probability-flow ODE, EDM's stochastic sampler, the predictor-corrector), draw
``--seed-sets`` disjoint sets of ``--n`` samples (seeds 0 .. n-1, n .. 2n-1, ...) through
:class:`ncsn_ray.sample.sampler.Sampler` (the code the generation actors run, with the
checkpoint and settings resolved as ``jobs/generate.py`` resolves them), score each with the
offline digits metric and time them, all in one process. Prints, per setting: network
evaluations per sample (NFE), samples/s, the sampler's efficiency (NFE x samples/s over the
bare network's forward images/s at the same batch: 1.0 means the loop around the network
costs nothing), and, as mean ± std over the sets: the Fréchet distance as a ratio to real
digits at the same n, precision and recall in the classifier's features (fidelity and
coverage, which FD mixes), the mean classifier confidence and the largest class.

The rows to read: the best annealed-Langevin point, and the cheapest fast point within 10% of
its Fréchet distance with confidence >= 0.9 and recall no more than 0.03 below it (printed
last, with the ``--set`` flags to pass to ``jobs/generate.py``).

    python benchmarks/bench_samplers.py --checkpoint runs/digits [--n 512] [--seed-sets 3]
        [--grid quick|full] [--only heun,pc] [--plot docs/quality-vs-nfe.png] [--json out.json]
        [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.machine import describe, forward_flops, machine_facts  # noqa: E402
from ncsn_ray.evaluate.spread import format_spread  # noqa: E402
from ncsn_ray.io.figures import curve_plot, hstack_panels, save_png  # noqa: E402
from ncsn_ray.sample.job import SamplingOptions, resolve_sampling  # noqa: E402
from ncsn_ray.sample.sampler import Sampler  # noqa: E402
from ncsn_ray.tune.space import candidate_settings, method_of, setting_label  # noqa: E402
from ncsn_ray.tune.trial import draw_and_score  # noqa: E402

FD_TOLERANCE = 0.10  # a fast point "holds quality" within 10% of the best annealed-Langevin FD
MIN_CONFIDENCE = 0.9
RECALL_MARGIN = 0.03  # ... and covers the data nearly as well: recall at most this far below


def bare_forward_rate(sampler: Sampler, batch: int, repeats: int = 20) -> float:
    """Images/s of bare forward passes of the sampler's network at ``batch`` (best of 3)."""
    x = torch.rand(batch, *sampler.shape)
    level = torch.zeros(batch, dtype=torch.long)
    best = 0.0
    with torch.inference_mode():
        sampler.score_fn(x, level)
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(repeats):
                sampler.score_fn(x, level)
            best = max(best, batch * repeats / (time.perf_counter() - started))
    return best


def measure(checkpoint: str, overrides: list[str], n: int, seed_sets: int) -> dict:
    result = draw_and_score(checkpoint, overrides, n, "digits", seed_sets=seed_sets)
    spread = {("fd_ratio" if key == "score" else key): entry for key, entry in result.spread.items()}
    row = {"setting": setting_label(overrides), "set": overrides, "method": method_of(overrides, default="?"),
           "nfe": result.nfe, "seconds": round(result.seconds, 2), "samples_per_s": round(result.samples_per_s, 2),
           "seed_sets": seed_sets, "n": n}
    for key in ("fd", "fd_ratio", "precision", "recall", "confidence", "max_class_share", "near_copy_share"):
        row[key] = round(spread[key]["mean"], 4)
        row[f"{key}_std"] = round(spread[key]["std"], 4)
    return row


def cell(row: dict, key: str, digits: int = 3) -> str:
    """``mean ± std`` of one of a row's scores."""
    return format_spread({"mean": row[key], "std": row[f"{key}_std"], "values": [0] * row["seed_sets"]}, digits)


def pick(rows: list[dict]) -> tuple[dict, dict | None]:
    """The best annealed-Langevin row, and the cheapest fast row within :data:`FD_TOLERANCE` of
    its FD with confidence >= :data:`MIN_CONFIDENCE` and recall at most :data:`RECALL_MARGIN`
    below its recall (None if none is)."""
    ald = [r for r in rows if r["method"] == "annealed_langevin"]
    best = min(ald, key=lambda r: r["fd"])
    good = [r for r in rows if r["method"] != "annealed_langevin" and r["fd"] <= best["fd"] * (1 + FD_TOLERANCE)
            and r["confidence"] >= MIN_CONFIDENCE and r["recall"] >= best["recall"] - RECALL_MARGIN]
    return best, (min(good, key=lambda r: (r["nfe"], r["fd"])) if good else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/digits", help="a trained digits run (or checkpoint)")
    parser.add_argument("--n", type=int, default=512, help="samples per seed set")
    parser.add_argument("--seed-sets", type=int, default=3, help="disjoint seed sets per setting (default: %(default)s)")
    parser.add_argument("--grid", choices=("quick", "full"), default="quick")
    parser.add_argument("--only", default=None, help="comma-separated methods to run (default: all)")
    parser.add_argument("--extra", action="append", default=[],
                        help="one more setting, as space-separated sampling.key=value overrides")
    parser.add_argument("--student", default=None, help="a run distilled from --checkpoint (jobs/distill.py): its "
                        "K = 1-4 steps join the table and the plot as the consistency model's points")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--plot", default=None, help="write the FD-ratio-against-NFE plot to this PNG")
    parser.add_argument("--json", default=None, help="write every row to this JSON file")
    args = parser.parse_args(argv)
    if args.n < 10:
        parser.error("--n must be at least 10")
    if args.threads:
        torch.set_num_threads(args.threads)

    facts = machine_facts()
    print(f"[bench_samplers] machine: {describe(facts)}; torch threads {torch.get_num_threads()}", flush=True)
    setup = resolve_sampling(SamplingOptions(checkpoint=args.checkpoint))
    kind, levels = setup.checkpoint.config.model.kind, setup.num_levels
    reference = Sampler.from_checkpoint(setup.checkpoint, setup.settings)
    batch = setup.batch_size
    bare = bare_forward_rate(reference, batch)
    flops = forward_flops(reference.score_fn, (torch.rand(1, *reference.shape), torch.zeros(1, dtype=torch.long)))
    print(f"[bench_samplers] {setup.pinned.uri} ({kind}, L={levels}, step {setup.pinned.step}); bare network "
          f"{bare:.0f} img/s at batch {batch}, {flops / 1e6:.1f} MFLOP/img = {bare * flops / 1e9:.1f} GFLOP/s "
          f"({100 * bare * flops / 1e9 / facts['fp32_peak_gflops']:.0f}% of peak)", flush=True)
    settings = candidate_settings(kind, levels, size=args.grid, config_method=setup.settings.method)
    settings += [e.split() for e in args.extra]
    if args.only:
        wanted = set(args.only.split(","))
        settings = [settings[0]] + [s for s in settings[1:] if method_of(s) in wanted]
    rows = []
    header = (f"{'setting':52s} {'NFE':>5s} {'smp/s':>7s} {'eff':>5s} {'FD/real':>13s} {'precision':>13s} "
              f"{'recall':>13s} {'conf':>6s} {'max cls':>7s}   (mean ± std of {args.seed_sets} seed sets of {args.n})")
    print(header, flush=True)
    for overrides in settings:
        row = measure(args.checkpoint, overrides, args.n, args.seed_sets)
        if row["method"] == "?":
            row["method"] = setup.settings.method  # the checkpoint's own setting
        row["efficiency"] = round(row["samples_per_s"] * row["nfe"] / bare, 3)
        rows.append(row)
        print(f"{row['setting'][:52]:52s} {row['nfe']:5d} {row['samples_per_s']:7.1f} {row['efficiency']:5.2f} "
              f"{cell(row, 'fd_ratio', 2):>13s} {cell(row, 'precision'):>13s} {cell(row, 'recall'):>13s} "
              f"{row['confidence']:6.3f} {100 * row['max_class_share']:6.1f}%", flush=True)
    if args.student:
        for overrides in [[f"sampling.steps={k}"] for k in (1, 2, 3, 4)]:
            row = measure(args.student, overrides, args.n, args.seed_sets)
            row["method"], row["setting"] = "consistency", f"distilled: consistency steps={row['nfe']}"
            row["efficiency"] = round(row["samples_per_s"] * row["nfe"] / bare, 3)
            row["student"] = True
            rows.append(row)
            print(f"{row['setting'][:52]:52s} {row['nfe']:5d} {row['samples_per_s']:7.1f} {row['efficiency']:5.2f} "
                  f"{cell(row, 'fd_ratio', 2):>13s} {cell(row, 'precision'):>13s} {cell(row, 'recall'):>13s} "
                  f"{row['confidence']:6.3f} {100 * row['max_class_share']:6.1f}%", flush=True)
    best, cheapest = pick([r for r in rows if not r.get("student")])
    summary = {"machine": facts, "checkpoint": setup.pinned.uri, "kind": kind, "levels": levels, "n": args.n,
               "bare_img_per_s": round(bare, 1), "mflop_per_img": round(flops / 1e6, 2),
               "best_annealed_langevin": best, "cheapest_within_10pct": cheapest, "rows": rows}
    print(f"[bench_samplers] best annealed Langevin: {best['setting']} ({best['nfe']} NFE): FD "
          f"{cell(best, 'fd_ratio', 2)}x real, precision {cell(best, 'precision')}, recall {cell(best, 'recall')}, "
          f"confidence {best['confidence']}")
    if cheapest:
        speed = cheapest["samples_per_s"] / best["samples_per_s"]
        print(f"[bench_samplers] cheapest within {FD_TOLERANCE:.0%} of its FD with confidence >= {MIN_CONFIDENCE} "
              f"and recall at most {RECALL_MARGIN} below: {cheapest['setting']} ({cheapest['nfe']} NFE, "
              f"{best['nfe'] / cheapest['nfe']:.1f}x fewer; {speed:.1f}x the samples/s): FD "
              f"{cell(cheapest, 'fd_ratio', 2)}x real, precision {cell(cheapest, 'precision')}, recall "
              f"{cell(cheapest, 'recall')}, confidence {cheapest['confidence']}; "
              f"generate.py flags: {' '.join('--set ' + o for o in cheapest['set'])}")
    else:
        print(f"[bench_samplers] no fast setting within {FD_TOLERANCE:.0%} of the best annealed-Langevin FD "
              f"with confidence >= {MIN_CONFIDENCE} and recall at most {RECALL_MARGIN} below its recall")
    if args.plot:
        save_png(plot_rows(rows, best, f"{setup.checkpoint.config.name}: best FD / real FD of each sampler "
                                       f"at each NFE (n={args.n})"), args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    return 0


def _series(row: dict) -> str:
    """One plotted line per sampler family: the method, with its predictor or schedule."""
    parts = dict(o.removeprefix("sampling.").split("=", 1) for o in row["set"])
    method = row["method"]
    if method == "consistency":
        return "consistency model (distilled)"
    if method == "annealed_langevin":
        return "annealed Langevin"
    if method == "pc":
        return f"pc, {parts.get('predictor', 'reverse_diffusion').replace('_', ' ')} predictor"
    return f"{method} ({parts.get('schedule', 'ladder')})"


def plot_rows(rows: list[dict], best: dict, title: str):
    """Two panels against NFE (log): FD ratio (log; for each sampler family its best row at each
    NFE) and recall (the same rows: the coverage that FD point comes with)."""
    chosen: dict[str, dict[int, dict]] = {}
    for row in rows:
        points = chosen.setdefault(_series(row), {})
        if row["nfe"] not in points or row["fd_ratio"] < points[row["nfe"]]["fd_ratio"]:
            points[row["nfe"]] = row
    fd = {name: sorted((nfe, r["fd_ratio"]) for nfe, r in points.items()) for name, points in chosen.items()}
    recall = {name: sorted((nfe, r["recall"]) for nfe, r in points.items()) for name, points in chosen.items()}
    left = curve_plot(fd, x_label="network evaluations per sample (log)", y_label="FD / real FD (log)",
                      title=title, log_y=True,
                      reference=("best ALD +10%", best["fd_ratio"] * (1 + FD_TOLERANCE)))
    right = curve_plot(recall, x_label="network evaluations per sample (log)", y_label="recall (higher is better)",
                       title="recall of the same rows", log_y=False, height=left.height,
                       reference=("best ALD - 0.03", best["recall"] - RECALL_MARGIN))
    return hstack_panels([left, right])


if __name__ == "__main__":
    raise SystemExit(main())
