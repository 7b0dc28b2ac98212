"""Inpainting quality and speed for every sampler, against annealed Langevin, on a trained digits run.

For each mask (half, center, random) and each sampler row, ``jobs/generate.py --mode inpaint``
as a user runs it (``ncsn_ray.sample.inpaint.run``: one shard of every image, no cluster named,
so computed in this process) inpaints the first ``--images`` digits ``--k`` times each, and the
job's own scores are read back from ``_scores.json`` (:mod:`ncsn_ray.evaluate.inpaint_quality`):

* ``agree``: the digits classifier's label agreement between a completion and its original;
* ``div``: the mean pairwise L2 distance of an image's K completions over its unknown pixels
  (pixels in [0, 1]), averaged over images;
* ``chg``: the largest change of a known pixel (grey levels; must be 0).

Speed: completions per second inside the shard (sampling, PNG encoding, writing: the job's
``actor_seconds``), and the same per network evaluation (``img/s x NFE``), against generation's
(``generate.run`` of ``images x k`` samples in one shard, in this process, with the same sampler
settings and batch size, timed just before so both see the same load; a warm-up job runs first). ``per-NFE ratio`` =
inpainting's NFE/s over generation's (1 = inpainting costs what generating costs, per evaluation).

Rows: the run's own sampler (``config``), Euler, Heun, EDM and the predictor-corrector at about
the same budget, the predictor-corrector with ``snr 0.5`` (more Langevin mixing), and annealed
Langevin at the config's T (the paper's Appendix B.3: the reference). ``--rows`` picks some.

    python benchmarks/bench_inpaint.py --checkpoint runs/digits --data runs/data/digits
        [--images 256] [--k 4] [--masks half,center,random] [--rows config,annealed_langevin]
        [--figure docs/digits-inpainting.png]

``--figure`` copies the job's ``_figure.png`` (occluded | K completions | original) of the
config's sampler on the first mask. Prints the machine, one line per measurement, a table,
and last a JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import describe, machine_facts  # noqa: E402
from ncsn_ray.sample import generate, inpaint  # noqa: E402
from ncsn_ray.sample.generate import GenerateOptions  # noqa: E402
from ncsn_ray.sample.inpaint import InpaintOptions  # noqa: E402
from ncsn_ray.sample.job import resolve_sampling  # noqa: E402


def quiet(_line: str) -> None:
    pass


def sampler_rows(config_overrides: list[str], steps: int | None) -> dict[str, list[str]]:
    """``{row name: --set overrides}``: the config's inpainting sampler (``config_overrides``: its
    ``inpainting`` section as flags, so that generation's speed is measured with the same
    sampler), the other fast samplers at about its budget of ``2 (steps - 1) + 1`` evaluations
    (less any identical to the config's), and annealed Langevin at the config's T."""
    n = steps or 18
    rows = {"config": config_overrides}
    candidates = {
        "euler": ["sampling.method=euler", f"sampling.steps={2 * n - 1}"],  # 2n - 2 steps + the final denoise
        "heun": ["sampling.method=heun", "sampling.churn=0"],
        "edm": ["sampling.method=edm"],
        "pc": ["sampling.method=pc", "sampling.corrector_steps=1", "sampling.predictor=reverse_diffusion"],
        "pc-snr0.5": ["sampling.method=pc", "sampling.corrector_steps=1", "sampling.predictor=reverse_diffusion",
                      "sampling.snr=0.5"],
    }
    for name, overrides in candidates.items():
        if set(overrides) != set(config_overrides):
            rows[name] = overrides
    rows["annealed_langevin"] = ["sampling.method=annealed_langevin"]
    return rows


def measure(checkpoint: str, data: str, mask: str, images: int, k: int, overrides: list[str], tmp: Path,
            figure: Path | None) -> dict:
    """One sampler on one mask: generation's speed, then the inpainting job's speed and scores."""
    gen_out, inp_out = tmp / "generate", tmp / "inpaint"
    n = images * k
    started = time.perf_counter()
    g = generate.run(GenerateOptions(n=n, checkpoint=checkpoint, out=str(gen_out), shard_size=n, overrides=overrides),
                     log=quiet)
    gen_wall = time.perf_counter() - started
    started = time.perf_counter()
    i = inpaint.run(InpaintOptions(data=data, checkpoint=checkpoint, out=str(inp_out), mask=mask,
                                   samples_per_image=k, limit=images, shard_size=images, overrides=overrides),
                    log=quiet)
    inp_wall = time.perf_counter() - started
    gen_manifest = json.loads((gen_out / "_manifest.json").read_text())
    manifest = json.loads((inp_out / "_manifest.json").read_text())
    scores = json.loads((inp_out / "_scores.json").read_text())["metrics"]
    if figure is not None:
        figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(inp_out / "_figure.png", figure)
    shutil.rmtree(gen_out)
    shutil.rmtree(inp_out)
    nfe, gen_nfe = manifest["nfe_per_sample"], gen_manifest["nfe_per_sample"]
    inp_rate, gen_rate = n / i["actor_seconds"], n / g["actor_seconds"]
    return {
        "method": manifest["sampler"].get("method", "annealed_langevin"), "nfe": nfe,
        "agree": scores["inpaint_label_agreement"], "div": scores["inpaint_diversity"],
        "chg": scores["inpaint_known_change"], "img_s": inp_rate, "nfe_s": inp_rate * nfe,
        "gen_nfe": gen_nfe, "gen_img_s": gen_rate, "gen_nfe_s": gen_rate * gen_nfe,
        "per_nfe_ratio": (inp_rate * nfe) / (gen_rate * gen_nfe),
        "inpaint_actor_s": i["actor_seconds"], "generate_actor_s": g["actor_seconds"],
        "inpaint_wall_s": round(inp_wall, 2), "generate_wall_s": round(gen_wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/digits")
    parser.add_argument("--data", default="runs/data/digits")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--masks", default="half,center,random")
    parser.add_argument("--rows", help="comma-separated row names (default: all)")
    parser.add_argument("--figure", type=Path, help="copy the config sampler's figure (first mask) here")
    args = parser.parse_args(argv)

    setup = resolve_sampling(InpaintOptions(data=args.data, checkpoint=args.checkpoint), inpaint=True)
    own = setup.checkpoint.config.inpainting.settings() or {"method": setup.checkpoint.config.sampling.method}
    rows = sampler_rows([f"sampling.{key}={value}" for key, value in own.items()], setup.settings.steps)
    if args.rows:
        wanted = args.rows.split(",")
        unknown = [r for r in wanted if r not in rows]
        if unknown:
            parser.error(f"unknown rows {unknown}; choose from {', '.join(rows)}")
        rows = {name: rows[name] for name in wanted}
    masks = args.masks.split(",")
    print(f"machine: {describe(machine_facts())}")
    print(f"checkpoint: {setup.pinned.uri} (step {setup.pinned.step}); config sampler: "
          f"{setup.settings.describe(setup.num_levels)}; {args.images} images x K={args.k}; batch {setup.batch_size}")
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-inpaint-") as tmp:
        # warm-up (first network call, the digits classifier): not timed
        measure(args.checkpoint, args.data, masks[0], min(args.images, 16), args.k, [], Path(tmp), None)
        for mask in masks:
            for name, overrides in rows.items():
                figure = args.figure if (name == "config" and mask == masks[0]) else None
                row = measure(args.checkpoint, args.data, mask, args.images, args.k, overrides, Path(tmp), figure)
                results.setdefault(mask, {})[name] = row
                print(f"{mask:6s} {name:18s} {row['method']:17s} NFE {row['nfe']:3d}  agree {row['agree']:.3f}  "
                      f"div {row['div']:.3f}  chg {row['chg']}  {row['img_s']:7.1f} img/s  {row['nfe_s']:7.0f} NFE/s  "
                      f"(generation {row['gen_img_s']:7.1f} img/s at {row['gen_nfe']} NFE, {row['gen_nfe_s']:7.0f} "
                      f"NFE/s; per-NFE ratio {row['per_nfe_ratio']:.2f})", flush=True)
    print()
    print("| mask | sampler | NFE | agreement | diversity | vs AL agreement | vs AL diversity | img/s | "
          "NFE/s (generation's) | per-NFE ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mask, by_row in results.items():
        ref = by_row.get("annealed_langevin")
        for name, r in by_row.items():
            d_agree = f"{r['agree'] - ref['agree']:+.3f}" if ref else "-"
            d_div = f"{r['div'] / ref['div']:.2f}x" if ref and ref["div"] else "-"
            print(f"| {mask} | {name} | {r['nfe']} | {r['agree']:.3f} | {r['div']:.3f} | {d_agree} | {d_div} | "
                  f"{r['img_s']:.0f} | {r['nfe_s']:.0f} ({r['gen_nfe_s']:.0f}) | {r['per_nfe_ratio']:.2f} |")
    print(json.dumps({"machine": machine_facts(), "checkpoint": setup.pinned.uri, "step": setup.pinned.step,
                      "images": args.images, "k": args.k, "batch_size": setup.batch_size, "rows": rows,
                      "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
