"""The sampler-search job: Ray Tune trials over sampler settings, the quality-versus-cost front,
and the cheapest setting that holds quality.

Each trial draws ``n`` samples (seeds ``0 .. n-1``) with one setting of
:func:`~ncsn_ray.tune.space.candidate_settings` through the generation code
(:mod:`ncsn_ray.tune.trial`), scores them and reports ``score`` (lower is better) and ``nfe``.
Trials run in parallel on the cluster, one CPU (or one GPU with ``use_gpu``) each.

Layout under ``out`` (a local path or an object-storage URI)::

    _job.json        what was asked (checkpoint, metric, n, settings tried); written first
    _tune/           Ray Tune's experiment (its own restore state and trial results)
    trials.parquet   one row per trial: setting, label, method, nfe, score, metric extras
    _front.png       score against NFE, the front marked
    _manifest.json   front, recommendation and settings; written last

Everything but the trials table has a name starting with ``_``, which Parquet readers skip
(``pyarrow.dataset``, ``pandas.read_parquet``, ``ray.data.read_parquet``), so the folder reads
as one table, as a sample set or a dataset does.

Re-running the same command resumes an interrupted search (Tune's experiment restore:
finished trials are kept, the rest run); re-running a finished one prints its result; another
search into the same folder is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..console import Log
from ..errors import JobFailed, UserError, begin_work
from ..io.figures import curve_plot
from ..io.layout import MANIFEST, default_run_uri, run_name
from ..io.storage import Storage, endpoint_from_env, utc_timestamp
from ..sample.job import SamplingOptions, resolve_sampling
from ..sample.sample_set import FolderState, make_job_spec, open_sample_set
from .front import RECALL_MARGIN, pareto_front, recommend
from .space import candidate_settings, consistency_settings, method_of, setting_label, setting_nfe
from .trial import METRICS

__all__ = ["TuneOptions", "run", "FRONT_PLOT", "TRIALS"]

# The numbers of a trial kept in trials.parquet (besides each one's spread, ``<key>_std``).
TRIAL_COLUMNS = ("score", "nfe", "samples_per_s", "seconds", "failed", "fd", "real_fd", "precision", "recall",
                 "confidence", "max_class_share", "near_copy_share", "frechet_inception_distance",
                 "kernel_inception_distance_mean", "f_score")
FRONT_PLOT = "_front.png"
TRIALS = "trials.parquet"
EXPERIMENT = "_tune"


@dataclass(kw_only=True)
class TuneOptions:
    """``checkpoint``: run folder, checkpoint folder or ``.pt`` URI (None: the default run).
    ``metric``: ``digits`` (8x8 grey models, offline), ``fid`` or ``kid`` (against the prepared
    dataset ``reference``). ``n``: samples per trial. ``budget_nfe``: the most network
    evaluations per sample a setting may cost (None: no bound). ``tolerance``: the recommended
    setting is the cheapest whose score is within this fraction of the best. ``size``: ``quick``
    or ``full`` search space. ``max_concurrent``: trials at once (None: as resources allow)."""

    checkpoint: str | None = None
    metric: str = "digits"
    n: int = 256
    budget_nfe: int | None = None
    tolerance: float = 0.1
    out: str | None = None
    reference: str | None = None
    inception_weights: str | None = None
    size: str = "quick"
    use_gpu: bool = False
    max_concurrent: int | None = None
    endpoint_url: str | None = None
    seed_sets: int = 1  # disjoint sets of n seeds per trial; the trial's numbers are their means


def _check_options(options: TuneOptions) -> None:
    if options.metric not in METRICS:
        raise UserError(f"unknown metric {options.metric!r} (expected one of {', '.join(METRICS)})")
    if options.n < 2:
        raise UserError(f"a trial needs at least 2 samples, got --n {options.n}")
    if not (math.isfinite(options.tolerance) and options.tolerance >= 0):
        raise UserError(f"the tolerance must be a non-negative number, got {options.tolerance}")
    if options.size not in ("quick", "full"):
        raise UserError(f"the search space is quick or full, got {options.size!r}")
    if options.metric in ("fid", "kid") and not options.reference:
        raise UserError(f"--metric {options.metric} needs --reference URI (a prepared dataset)")
    if options.max_concurrent is not None and options.max_concurrent < 1:
        raise UserError(f"--max-concurrent must be at least 1, got {options.max_concurrent}")
    if options.seed_sets < 1:
        raise UserError(f"--seed-sets must be at least 1, got {options.seed_sets}")


def plan(options: TuneOptions) -> tuple[Any, list[list[str]], list[int]]:
    """Check the options and the checkpoint; returns ``(setup, settings, their NFE)`` with the
    settings bounded by the budget. Raises :class:`UserError` for anything wrong."""
    _check_options(options)
    endpoint = options.endpoint_url or endpoint_from_env()
    setup = resolve_sampling(SamplingOptions(checkpoint=options.checkpoint, endpoint_url=endpoint))
    config = setup.checkpoint.config
    if options.metric == "digits" and setup.image_shape != (1, 8, 8):
        raise UserError(f"{setup.pinned.uri}: the digits metric scores 8x8 grey images, this checkpoint models "
                        f"{'x'.join(map(str, setup.image_shape))} (CxHxW); use --metric fid or kid")
    levels = setup.num_levels
    if config.is_consistency:
        candidates = consistency_settings(size=options.size)
    else:
        candidates = candidate_settings(config.model.kind, levels, size=options.size,
                                        config_method=config.sampling.method)
    costs = [setting_nfe(s, levels=levels, config=config) for s in candidates]
    if options.budget_nfe is not None:
        cheapest = min(costs)
        if options.budget_nfe < cheapest:
            raise UserError(f"--budget-nfe {options.budget_nfe} is below the cheapest sampler setting "
                            f"({cheapest} network evaluations per sample)")
        kept = [(s, c) for s, c in zip(candidates, costs) if c <= options.budget_nfe]
        candidates, costs = [s for s, _ in kept], [c for _, c in kept]
    return setup, candidates, costs


def _trial(config: dict, *, checkpoint: str, n: int, metric: str, reference: str | None,
           inception_weights: str | None, endpoint_url: str | None, use_gpu: bool, seed_sets: int) -> None:
    """One Tune trial: draw and score one setting; report its numbers (``score`` inf when the
    samples were not finite, i.e. the setting is unstable for this network)."""
    import torch
    from ray import tune

    from ..sample.sampler import NonFiniteSamplesError
    from .trial import draw_and_score

    torch.set_num_threads(1 if not use_gpu else torch.get_num_threads())
    overrides = json.loads(config["setting"])
    try:
        result = draw_and_score(checkpoint, overrides, n, metric, reference=reference,
                                inception_weights=inception_weights, endpoint_url=endpoint_url,
                                device="cuda" if use_gpu else "cpu", seed_sets=seed_sets)
    except NonFiniteSamplesError:
        tune.report({"score": math.inf, "nfe": -1, "samples_per_s": 0.0, "failed": "non-finite samples"})
        return
    extras = {k: float(v) for k, v in result.extra.items() if isinstance(v, (int, float))}
    spread = {f"{k}_std": entry["std"] for k, entry in result.spread.items()}
    tune.report({"score": result.score, "nfe": result.nfe, "samples_per_s": result.samples_per_s,
                 "seconds": result.seconds, "failed": "", **extras, **spread})


class _Progress:
    """A Tune callback printing one line per finished trial to stdout (Tune's own tables are
    off). It holds no reference to the job's ``log``: Tune saves its callbacks with the
    experiment state, and a bound ``print`` does not pickle."""

    def __new__(cls, total: int):
        from ray.tune import Callback

        class Progress(Callback):
            def __init__(self):
                self.done = 0

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.done += 1
                result = trial.last_result or {}
                label = setting_label(json.loads(trial.config["setting"]))
                score = result.get("score", float("nan"))
                print(f"[tune] trial {self.done}/{total}: {label}: score {score:.4g}, "
                      f"{result.get('nfe', '?')} NFE/sample, {result.get('samples_per_s', 0):.1f} samples/s",
                      flush=True)

        return Progress()


def _tuner(options: TuneOptions, out: Storage, setup, settings: list[list[str]], log: Log):
    from ray import tune

    trainable = tune.with_parameters(
        _trial, checkpoint=setup.pinned.uri, n=options.n, metric=options.metric, reference=options.reference,
        inception_weights=options.inception_weights, endpoint_url=setup.endpoint_url, use_gpu=options.use_gpu,
        seed_sets=options.seed_sets)
    trainable = tune.with_resources(trainable, {"gpu": 1} if options.use_gpu else {"cpu": 1})
    storage_path = out.path if out.is_local else out.full()
    experiment = f"{storage_path.rstrip('/')}/{EXPERIMENT}"
    filesystem = None if out.is_local else out.fs
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        log(f"[tune] resuming the search in {out.uri_of(EXPERIMENT)} (finished trials are kept)")
        return tune.Tuner.restore(experiment, trainable, resume_errored=True, storage_filesystem=filesystem)
    return tune.Tuner(
        trainable,
        param_space={"setting": tune.grid_search([json.dumps(s) for s in settings])},
        tune_config=tune.TuneConfig(max_concurrent_trials=options.max_concurrent),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=storage_path, storage_filesystem=filesystem,
                                  verbose=0, callbacks=[_Progress(len(settings))],
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )


def _rows(results) -> list[dict]:
    rows = []
    for result in results:
        if result.metrics is None or "score" not in result.metrics:
            continue
        overrides = json.loads(result.config["setting"])
        metrics = {k: v for k, v in result.metrics.items() if k in TRIAL_COLUMNS or k.endswith("_std")}
        rows.append({"setting": json.dumps(overrides), "label": setting_label(overrides),
                     "method": method_of(overrides, default="config"), **metrics})
    return sorted(rows, key=lambda r: (r["nfe"], r["score"]))


def _write_outputs(out: Storage, rows: list[dict], front: list[dict], best: dict | None, metric: str,
                   name: str) -> None:
    columns = sorted({k for r in rows for k in r})
    out.write_table(TRIALS, pa.table({c: [r.get(c) for r in rows] for c in columns}))
    series = {"trials": [(r["nfe"], r["score"]) for r in rows if math.isfinite(r["score"]) and r["nfe"] > 0],
              "front": [(r["nfe"], r["score"]) for r in front]}
    reference = ("recommended", best["score"]) if best else None
    out.write_png(FRONT_PLOT, curve_plot(series, x_label="network evaluations per sample (log)",
                                         y_label=f"{metric} score (lower is better)",
                                         title=f"{name}: sampler settings, quality against cost",
                                         reference=reference))


def run(options: TuneOptions, *, log: Log = print) -> dict[str, Any]:
    """Search sampler settings for a checkpoint; returns the summary (front, recommendation)."""
    setup, settings, costs = plan(options)
    out = Storage.from_uri(options.out or f"runs/tune/{run_name(setup.checkpoint_uri or default_run_uri())}",
                           endpoint_url=setup.endpoint_url)
    identity = {"checkpoint": setup.pinned.identity(), "metric": options.metric, "n": options.n,
                "reference": options.reference, "settings": [json.dumps(s) for s in settings]}
    if options.seed_sets > 1:  # recorded only when asked for, so earlier searches keep their identity
        identity["seed_sets"] = options.seed_sets
    spec = make_job_spec("tune", identity, {"checkpoint_uri": setup.pinned.uri, "created_at": utc_timestamp()})
    state = open_sample_set(out, spec)
    if state is FolderState.COMPLETE:
        manifest = out.read_json(MANIFEST)
        log(f"[tune] {out.uri} already holds this finished search")
        return _report(manifest, log)
    per_trial = f"{options.seed_sets} sets of {options.n} samples" if options.seed_sets > 1 else f"{options.n} samples"
    log(f"[tune] {len(settings)} sampler settings for {setup.pinned.uri} (step {setup.pinned.step}), "
        f"{per_trial} each, metric {options.metric}, NFE {min(costs)}..{max(costs)}"
        f"{f' (budget {options.budget_nfe})' if options.budget_nfe else ''}; results in {out.uri}")
    from ..cluster import init_ray

    begin_work()
    started = init_ray(log=log)
    try:
        results = _tuner(options, out, setup, settings, log).fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    rows = _rows(results)
    if len(rows) < len(settings):
        raise JobFailed(f"{len(settings) - len(rows)} of {len(settings)} trials did not report; re-run the same "
                        "command to resume the search")
    front = pareto_front(rows)
    best = recommend(rows, options.tolerance)
    _write_outputs(out, rows, front, best, options.metric, setup.checkpoint.config.name)
    recalls = [r["recall"] for r in rows if isinstance(r.get("recall"), float) and math.isfinite(r["recall"])]
    manifest = {"job": spec, "metric": options.metric, "n": options.n, "seed_sets": options.seed_sets,
                "tolerance": options.tolerance, "recall_margin": RECALL_MARGIN,
                "best_recall": max(recalls) if recalls else None, "trials": TRIALS, "front_plot": FRONT_PLOT,
                "front": front, "recommended": best, "checkpoint": setup.pinned.uri, "created_at": utc_timestamp()}
    out.write_json(MANIFEST, manifest)
    return _report(manifest, log)


def _report(manifest: dict, log: Log) -> dict[str, Any]:
    front, best = manifest["front"], manifest["recommended"]
    sets = manifest.get("seed_sets", 1)
    per = f"{manifest['n']} samples per setting" + (f", mean of {sets} seed sets" if sets > 1 else "")
    log(f"[tune] front ({manifest['metric']} score, lower is better; {per}):")
    for row in front:
        spread = f" ± {row['score_std']:.2g}" if sets > 1 and "score_std" in row else ""
        recall = f"  recall {row['recall']:.3f}" if "recall" in row else ""
        log(f"[tune]   {row['nfe']:5d} NFE  score {row['score']:.4g}{spread}{recall}  {row['label']}")
    summary = {"front": [{"nfe": r["nfe"], "score": r["score"], "setting": json.loads(r["setting"])} for r in front]}
    if best is None:
        log("[tune] no setting gave finite samples")
        return {**summary, "recommended": None}
    flags = " ".join(f"--set {o}" for o in json.loads(best["setting"]))
    top_recall = manifest.get("best_recall")
    coverage = ""
    if top_recall is not None and "recall" in best:
        coverage = (f", recall {best['recall']:.3f} against the best trial's {top_recall:.3f} "
                    f"(at most {manifest.get('recall_margin', RECALL_MARGIN):g} below it)")
    log(f"[tune] cheapest setting within {100 * manifest['tolerance']:g}% of the best score: {best['label']} "
        f"({best['nfe']} NFE/sample, score {best['score']:.4g}{coverage})")
    log(f"[tune] generate with: python jobs/generate.py --checkpoint {manifest['checkpoint']} {flags}".rstrip())
    return {**summary, "recommended": {"nfe": best["nfe"], "score": best["score"], "recall": best.get("recall"),
                                       "best_recall": top_recall, "setting": json.loads(best["setting"]),
                                       "flags": flags}}
