"""The sampler search (ncsn_ray.tune, jobs/tune_sampler.py) on a real local Ray cluster with Ray
Tune: the front it reports, the flags it recommends reproduced through generate.py and
evaluate.py, an interrupted search resumed without losing a finished trial, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from ncsn_core import build_model, config_from_dict, geometric_sigmas, save_checkpoint
from ncsn_ray.evaluate import job as evaluate
from ncsn_ray.evaluate.job import EvaluateOptions
from ncsn_ray.sample import generate
from ncsn_ray.sample.generate import GenerateOptions
from ncsn_ray.sample.pipeline import ActorPlan
from ncsn_ray.tune import job as tune_job
from ncsn_ray.tune.front import pareto_front, recommend
from ncsn_ray.tune.job import TuneOptions
from support.console import quiet
from support.data import TINY_RUN_CONFIG, make_tiny_run
from support.jobs import load_job

REPO = Path(__file__).resolve().parents[1]
BUDGET = 5  # on the tiny run's 3-level ladder: 11 settings of 2 to 5 network evaluations per sample
TRIALS = 11
N = 12


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tune-tiny") / "run"
    make_tiny_run(run)
    return run


def test_front_keeps_only_undominated_points_and_recommendation_is_cheapest_within_tolerance():
    rows = [{"nfe": 2, "score": 5.0}, {"nfe": 3, "score": 6.0}, {"nfe": 3, "score": 4.0}, {"nfe": 6, "score": 3.9},
            {"nfe": 10, "score": float("inf")}, {"nfe": 12, "score": 3.5}, {"nfe": 20, "score": 3.6}]
    front = pareto_front(rows)
    assert [(r["nfe"], r["score"]) for r in front] == [(2, 5.0), (3, 4.0), (6, 3.9), (12, 3.5)]
    assert recommend(rows, 0.15)["nfe"] == 3  # best 3.5: within 15% is <= 4.025, first met by 4.0 at 3 NFE
    assert recommend(rows, 0.12)["nfe"] == 6  # <= 3.92: 3.9 at 6 NFE
    assert recommend(rows, 0.0)["nfe"] == 12
    assert recommend([{"nfe": 1, "score": float("inf")}], 0.1) is None


def test_the_recommendation_never_gives_up_more_than_003_of_the_best_trials_recall():
    """A setting whose score is within tolerance but covers the data less (recall more than 0.03
    below the best trial's) is passed over for the cheapest one that covers it as well."""
    rows = [{"nfe": 4, "score": 1.00, "recall": 0.80}, {"nfe": 8, "score": 1.02, "recall": 0.86},
            {"nfe": 16, "score": 1.20, "recall": 0.90}, {"nfe": 32, "score": 1.05, "recall": 0.88}]
    assert recommend(rows, 0.1, recall_margin=1.0)["nfe"] == 4  # score alone: the cheapest within 10%
    best = recommend(rows, 0.1)  # recall >= 0.87: 16 (1.20) and 32 (1.05); within 10% of 1.05: 32 only
    assert best["nfe"] == 32 and best["recall"] >= max(r["recall"] for r in rows) - 0.03
    assert recommend(rows, 0.2)["nfe"] == 16  # within 20% of 1.05 (<= 1.26): 16 is cheaper
    assert recommend([{"nfe": 1, "score": 1.0}, {"nfe": 2, "score": 0.9}], 0.2)["nfe"] == 1  # no recall: score only


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_search_reports_a_monotone_front_whose_recommended_flags_reproduce_the_score(ray_local, tiny_run, tmp_path):
    out = tmp_path / "search"
    summary = tune_job.run(TuneOptions(checkpoint=str(tiny_run), n=N, budget_nfe=BUDGET, out=str(out),
                                       max_concurrent=2), log=quiet)
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(trials) == TRIALS and all(t["nfe"] <= BUDGET for t in trials)
    front = summary["front"]
    assert [p["nfe"] for p in front] == sorted({p["nfe"] for p in front}), "one point per cost, cheapest first"
    assert all(a["score"] > b["score"] for a, b in zip(front, front[1:])), "each point better than the cheaper one"
    for point in front:  # no trial is as cheap and strictly better
        assert not any(t["nfe"] <= point["nfe"] and t["score"] < point["score"] for t in trials)
    assert (out / "_front.png").is_file() and (out / "_manifest.json").is_file()
    # Tune's own state sits under a "_" name, so the folder reads as one table, as sample sets do.
    assert ds.dataset(str(out), format="parquet").to_table().num_rows == TRIALS

    best = summary["recommended"]
    # Every trial measured recall; the recommendation is within 10% of the best score among the
    # trials whose recall is at most 0.03 below the best trial's, and is one of them.
    assert all(0 <= t["recall"] <= 1 for t in trials)
    covering = [t for t in trials if t["recall"] >= max(u["recall"] for u in trials) - 0.03]
    assert best["recall"] >= max(t["recall"] for t in trials) - 0.03 and best["best_recall"] == max(
        t["recall"] for t in trials)
    assert best["score"] <= min(t["score"] for t in covering) * 1.1 + 1e-12
    samples = tmp_path / "reproduced"
    generate.run(GenerateOptions(n=N, checkpoint=str(tiny_run), out=str(samples), overrides=best["setting"],
                                 actors=ActorPlan(num_actors=1)), log=quiet)
    scores = evaluate.run(EvaluateOptions(samples=str(samples), metrics="digits", use_ray=False), log=quiet)
    real = scores["digits"]["calibration"]["real"]["digits_fd"]
    assert scores["metrics"]["digits_fd"] / real == pytest.approx(best["score"], rel=1e-6)

    again: list[str] = []
    assert tune_job.run(TuneOptions(checkpoint=str(tiny_run), n=N, budget_nfe=BUDGET, out=str(out)),
                        log=again.append)["recommended"] == best
    assert "already holds this finished search" in again[0]


def _finished_trials(experiment: Path) -> dict[str, str]:
    """Trial folder name -> its result.json text, for the trials that reported."""
    out = {}
    for result in experiment.glob("*/result.json"):
        text = result.read_text()
        if text.strip():
            out[result.parent.name] = text
    return out


@pytest.mark.slow  # about 2 minutes; CI runs a whole search in test_search_reports_a_monotone_front...; run with -m slow
@pytest.mark.ray
@pytest.mark.timeout(480)
def test_an_interrupted_search_resumes_and_keeps_every_finished_trial(tiny_run, tmp_path):
    out = tmp_path / "interrupted"
    command = [sys.executable, str(REPO / "jobs" / "tune_sampler.py"), "--checkpoint", str(tiny_run), "--n", str(N),
               "--budget-nfe", str(BUDGET), "--out", str(out), "--max-concurrent", "1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    deadline = time.monotonic() + 240
    while len(_finished_trials(out / "_tune")) < 3 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
    assert first.poll() is None, "the search ended before it could be interrupted: " + (first.stdout.read() or "")
    os.killpg(first.pid, signal.SIGINT)
    output, _ = first.communicate(timeout=120)
    assert first.returncode != 0, output
    before = _finished_trials(out / "_tune")
    assert 3 <= len(before) < TRIALS, output
    assert not (out / "_manifest.json").exists(), "an interrupted search publishes nothing as complete"

    second = subprocess.run(command + ["--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=360)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming the search" in second.stdout
    after = _finished_trials(out / "_tune")
    assert len(after) == TRIALS
    # A trial whose report was written just before the interrupt, but not yet its completion in
    # Tune's experiment state, is run again on resume: with the same result (per-seed noise).
    kept = 0
    for name, text in before.items():
        old, new = json.loads(text.splitlines()[0]), json.loads(after[name].splitlines()[0])
        assert (new["score"], new["nfe"]) == (old["score"], old["nfe"]), f"trial {name} changed its result"
        kept += after[name] == text
    assert kept >= len(before) - 2, "finished trials were run again instead of restored"
    assert json.loads(second.stdout.strip().splitlines()[-1])["recommended"]["nfe"] <= BUDGET


@pytest.mark.timeout(120)
def test_bad_input_is_refused_with_exit_2_and_nothing_written(tiny_run, tmp_path, capsys):
    cli = load_job("tune_sampler")
    out = tmp_path / "refused"
    base = ["--checkpoint", str(tiny_run), "--out", str(out)]
    rgb = tmp_path / "rgb"
    config = config_from_dict({**TINY_RUN_CONFIG, "data": {"dataset": "cifar10", "image_size": 8, "channels": 3}})
    save_checkpoint(rgb / "checkpoint_000001" / "checkpoint.pt", model=build_model(config), config=config,
                    sigmas=geometric_sigmas(1.0, 0.01, 3), step=1)
    cases = [
        (["--metric", "lpips"], "unknown metric 'lpips'"),
        (["--budget-nfe", "1"], "below the cheapest sampler setting (2 network evaluations"),
        (["--metric", "fid"], "needs --reference"),
        (["--n", "1"], "at least 2 samples"),
        (["--checkpoint", str(rgb)], "the digits metric scores 8x8 grey images"),
        (["--checkpoint", str(tmp_path / "missing")], "missing"),
    ]
    for extra, message in cases:
        assert cli.main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not out.exists()


def test_a_trial_over_seed_sets_reports_each_sets_numbers_and_their_mean(tiny_run):
    """``seed_sets=2`` scores seeds 0..n-1 and n..2n-1 apart: the spread holds each set's
    numbers (set 0's are a one-set trial's), the result their mean and sample std."""
    from ncsn_ray.tune.trial import digits_score, draw, draw_and_score

    both = draw_and_score(str(tiny_run), [], N, "digits", seed_sets=2)
    first = draw_and_score(str(tiny_run), [], N, "digits")
    second_images = draw(str(tiny_run), [], N, first=N)[0]
    second_score, second_extra = digits_score(second_images)
    assert both.spread["score"]["values"] == pytest.approx([first.score, second_score])
    assert both.score == pytest.approx((first.score + second_score) / 2)
    assert both.spread["score"]["std"] == pytest.approx(abs(first.score - second_score) / 2 ** 0.5)
    assert both.extra["recall"] == pytest.approx((first.extra["recall"] + second_extra["recall"]) / 2)
    assert first.spread["score"]["std"] == 0.0 and both.nfe == first.nfe
