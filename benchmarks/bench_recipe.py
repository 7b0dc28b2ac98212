"""Training recipes measured as sample quality against training wall time, in one process.

Each recipe is the digits config with ``--set``-style overrides. It trains in a plain loop
with the training job's own pieces (the step-addressed batches of the in-memory path,
``ncsn_core.train_step``, EMA), and at every ``--eval-every`` steps pauses the clock, draws
``--seed-sets`` disjoint sets of ``--n`` samples (seeds 0 .. n-1, n .. 2n-1, ...) from the EMA
weights with the config's sampler, and scores each with the offline digits metric: the
Fréchet distance as a ratio to real digits at the same n, precision and recall in the
classifier's features (fidelity and coverage), the classifier's confidence, the largest
class share and the near-copy share, each as the mean ± std over the sets. The targets are
issue 34's (:data:`ncsn_ray.evaluate.digits.QUALITY_TARGETS`), judged on the means.

Printed per evaluation: recipe, step, training seconds so far (sampling excluded), images
seen, images/s, and the scores. The machine is named first; the default recipe's images/s
is this machine's plain-loop speed of the default network, by which to scale the seconds
to another machine.

    python benchmarks/bench_recipe.py --recipe default: \\
        --recipe short:training.steps=600,training.ema_decay=0.99 --eval-every 200 --n 512 \\
        [--seed-sets 3] [--final-sampler sampling.churn=0] [--plot quality-vs-train-time.png] \\
        [--save DIR] [--json out.json] [--threads 2]
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

from benchmarks.machine import describe, machine_facts  # noqa: E402
from ncsn_core import (EMA, LOSSES, apply_overrides, build_model, geometric_sigmas, load_config, loss_options,  # noqa: E402
                       make_optimizer, train_step)
from ncsn_ray import configs  # noqa: E402
from ncsn_core.checkpoint import checkpoint_bytes  # noqa: E402
from ncsn_core.config import resolve_auto  # noqa: E402
from ncsn_ray.data.format import dataset_max_distance, read_manifest  # noqa: E402
from ncsn_ray.data.global_batches import GlobalBatches, lognormal_of  # noqa: E402
from ncsn_ray.data.ingest import read_images, step_inputs  # noqa: E402
from ncsn_ray.data.prepare import ensure_prepared  # noqa: E402
from ncsn_ray.io.figures import curve_plot, save_png  # noqa: E402
from ncsn_ray.io.layout import default_data_uri  # noqa: E402
from ncsn_ray.io.storage import Storage  # noqa: E402
from ncsn_ray.evaluate.digits import target_verdicts  # noqa: E402
from ncsn_ray.evaluate.spread import format_spread  # noqa: E402
from ncsn_ray.sample.sampler import Sampler, SamplerSettings  # noqa: E402
from ncsn_ray.tune.trial import score_sampler  # noqa: E402

DEFAULT_CONFIG = ROOT / "ncsn_ray" / "configs" / "digits.yaml"


def digits_images() -> tuple[torch.Tensor, float]:
    """The prepared digits ``(N, 1, 8, 8)`` uint8 and their largest pairwise distance."""
    uri = str(Path(default_data_uri("digits")).resolve())
    ensure_prepared("digits", uri, log=lambda *a: None)
    data = Storage.from_uri(uri)
    manifest = read_manifest(data)
    return read_images(data, manifest), dataset_max_distance(data, manifest)[0]


SCORES = ("fd_ratio", "precision", "recall", "confidence", "max_class_share", "near_copy_share")


def score_ema(config, ema_model: torch.nn.Module, sigmas: torch.Tensor, n: int, sampling: list[str] = (),
              seed_sets: int = 3) -> dict:
    """Score ``seed_sets`` sets of ``n`` samples of the EMA weights with the config's sampler
    (``sampling``: overrides): each score's mean, its std (``<key>_std``) and the near-copy bound."""
    if sampling:
        config = apply_overrides(config, list(sampling), source="sampler")
    settings = SamplerSettings.from_config(config)
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    sampler = Sampler(ema_model, sigmas, settings, shape, torch.device("cpu"))
    result = score_sampler(sampler, config.sampling.batch_size, n, "digits", seed_sets=seed_sets)
    spread = {("fd_ratio" if key == "score" else key): entry for key, entry in result.spread.items()}
    row = {"nfe": result.nfe, "sampling_s": round(result.seconds, 1), "seed_sets": seed_sets,
           "real_near_copy_share": round(spread["real_near_copy_share"]["mean"], 4)}
    for key in SCORES:
        row[key] = round(spread[key]["mean"], 4)
        row[f"{key}_std"] = round(spread[key]["std"], 4)
    return row


def recipe_config(name: str, overrides: list[str], max_distance: float):
    """The digits config (or ``config=NAME_OR_PATH`` among the overrides) with the overrides applied and
    ``auto`` values resolved as the training job resolves them."""
    paths = [o.split("=", 1)[1] for o in overrides if o.startswith("config=")]
    overrides = [o for o in overrides if not o.startswith("config=")]
    config = load_config(configs.resolve(paths[-1]) if paths else str(DEFAULT_CONFIG))
    if overrides:
        config = apply_overrides(config, overrides, source=f"recipe {name}")
    if config.has_auto():
        config, _ = resolve_auto(config, max_distance=max_distance, dimension=64)
    return config


def train_recipe(name: str, config, images: torch.Tensor, eval_every: int, n: int, log,
                 final_samplers: list[list[str]] = (), seed_sets: int = 3, save: str | None = None) -> list[dict]:
    tc = config.training
    torch.manual_seed(tc.seed * 1000)
    model = build_model(config)
    ema = EMA(model, tc.ema_decay)
    optimizer = make_optimizer(model.parameters(), lr=tc.lr, beta1=tc.beta1, weight_decay=tc.weight_decay)
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    batches = GlobalBatches(images, global_batch=tc.batch_size, seed=tc.seed, num_levels=config.noise.num_levels,
                            lognormal=lognormal_of(config))
    loss_fn = LOSSES[tc.loss]
    rows, trained_s = [], 0.0
    step = 0
    while step < tc.steps:
        started = time.perf_counter()
        stop = min(tc.steps, step + eval_every)
        model.train()
        while step < stop:
            step += 1
            x, draws = step_inputs(batches, step, config)
            train_step(model, optimizer, loss_fn, x, sigmas, ema=ema, grad_clip=tc.grad_clip,
                       **loss_options(config), **draws)
        trained_s += time.perf_counter() - started
        row = {"recipe": name, "step": step, "train_s": round(trained_s, 1), "images": step * tc.batch_size,
               "images_per_s": round(step * tc.batch_size / trained_s, 1),
               **score_ema(config, ema.module, sigmas, n, seed_sets=seed_sets)}
        rows.append(row)
        log(json.dumps(row))
    if save:  # a run folder that generate.py, evaluate.py and distill.py take as they are
        path = Path(save) / name / f"checkpoint_{step:08d}"
        path.mkdir(parents=True, exist_ok=True)
        (path / "checkpoint.pt").write_bytes(checkpoint_bytes(model=model, config=config, sigmas=sigmas, ema=ema.module,
                                                              optimizer=optimizer, step=step))
        (path / "step.txt").write_text(f"{step}\n")
        log(f"[bench_recipe] {name}: the final weights are in {path.parent}")
    for sampling in final_samplers:  # other samplers on the final weights
        row = {**rows[-1], "recipe": f"{name} [{' '.join(sampling)}]",
               **score_ema(config, ema.module, sigmas, n, sampling, seed_sets)}
        rows.append(row)
        log(json.dumps(row))
    return rows


def meets_targets(row: dict) -> bool:
    return all(target_verdicts(row).values()) and row["nfe"] <= 35


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", action="append", required=True, metavar="NAME:KEY=VALUE,...",
                   help="a recipe: a name, then comma-separated config overrides, config=PATH for another "
                        "config than digits.yaml (repeatable)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--final-sampler", action="append", default=[], metavar="KEY=VALUE,...",
                   help="also score the final weights with these sampling overrides (repeatable)")
    p.add_argument("--n", type=int, default=512, help="samples per seed set")
    p.add_argument("--seed-sets", type=int, default=3, help="disjoint seed sets per evaluation (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--save", default=None, metavar="DIR", help="write each recipe's final state as a run folder "
                   "DIR/<recipe>/checkpoint_<step>/ (for generate.py, evaluate.py, distill.py)")
    p.add_argument("--plot", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    facts = machine_facts()
    print(describe(facts), flush=True)
    images, max_distance = digits_images()
    rows = []
    for spec in args.recipe:
        name, _, settings = spec.partition(":")
        config = recipe_config(name, [s for s in settings.split(",") if s], max_distance)
        rows += train_recipe(name, config, images, args.eval_every, args.n, lambda line: print(line, flush=True),
                             [f.split(",") for f in args.final_sampler], args.seed_sets, args.save)
    print(f"\n{'recipe':<24} {'step':>5} {'train s':>8} {'img/s':>7} {'FD/real':>13} {'precision':>13} "
          f"{'recall':>13} {'conf':>13} {'max cls':>8} {'copies':>7}  targets (mean of {args.seed_sets} seed sets)")
    for r in rows:
        def cell(key: str) -> str:
            return format_spread({"mean": r[key], "std": r[f"{key}_std"], "values": [0] * args.seed_sets})
        print(f"{r['recipe'][:24]:<24} {r['step']:>5} {r['train_s']:>8.1f} {r['images_per_s']:>7.1f} "
              f"{cell('fd_ratio'):>13} {cell('precision'):>13} {cell('recall'):>13} {cell('confidence'):>13} "
              f"{r['max_class_share']:>8.3f} {r['near_copy_share']:>7.4f}  {'met' if meets_targets(r) else '-'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": facts, "rows": rows}, indent=1))
    if args.plot:
        series: dict[str, list] = {}
        for r in rows:
            series.setdefault(r["recipe"], []).append((r["train_s"], r["fd_ratio"]))
        save_png(curve_plot(series, x_label="training seconds (sampling excluded)",
                            y_label="FD / real digits (n = %d)" % args.n, log_y=True,
                            title="digits: quality against training time"), args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
