"""The inpainting scores (``ncsn_ray.evaluate.inpaint_quality``) and ``evaluate.py --metrics inpaint``:
the three numbers on arrays whose answer is known, then on an inpainting set made by the job."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ncsn_ray.evaluate import inpaint_quality
from ncsn_ray.evaluate.inpaint_quality import InpaintingSet, inpainting_scores
from ncsn_ray.io.storage import Storage
from ncsn_ray.sample import inpaint
from ncsn_ray.sample.inpaint import InpaintOptions
from support.console import quiet
from support.data import digits_uint8, make_tiny_run, write_dataset, write_sample_set
from support.jobs import load_job


def _half(n: int) -> np.ndarray:
    known = np.zeros((n, 8, 8), dtype=bool)
    known[..., :4] = True
    return known


def test_copies_of_the_originals_agree_fully_differ_nowhere_and_change_nothing():
    originals = digits_uint8(20)
    scores = inpainting_scores(InpaintingSet(originals, _half(20), np.stack([originals] * 3, axis=1)))
    assert scores == {"inpaint_label_agreement": 1.0, "inpaint_diversity": 0.0, "inpaint_known_change": 0,
                      "inpaint_unknown_share": 0.5}


def test_diversity_is_the_mean_pairwise_distance_over_the_unknown_pixels_in_unit_pixels():
    originals = digits_uint8(4)
    known = _half(4)
    completions = np.stack([originals] * 3, axis=1).copy()
    for k, value in enumerate((0, 51, 255)):  # unknown pixels set to 0, 0.2 and 1
        completions[:, k][~known] = value
    scores = inpainting_scores(InpaintingSet(originals, known, completions))
    pairs = (0.2 + 1.0 + 0.8) / 3  # |0 - 0.2|, |0 - 1|, |0.2 - 1| per pixel
    assert scores["inpaint_diversity"] == pytest.approx(pairs * math.sqrt(32))  # 32 unknown pixels
    assert scores["inpaint_known_change"] == 0, "unknown pixels do not count as changed"
    completions[2, 1, 3, 0, 0] = originals[2, 3, 0, 0] + 3 if originals[2, 3, 0, 0] < 250 else 0
    changed = inpainting_scores(InpaintingSet(originals, known, completions))["inpaint_known_change"]
    assert changed == abs(int(completions[2, 1, 3, 0, 0]) - int(originals[2, 3, 0, 0])) > 0


def test_label_agreement_counts_completions_in_their_originals_class():
    originals = digits_uint8(10)
    others = digits_uint8(30)[10:20]  # the next ten digits: mostly other classes
    from ncsn_ray.evaluate.digits import classify

    same = (classify(originals)[0] == classify(others)[0]).astype(float)
    completions = np.stack([originals, others], axis=1)  # one copy, one other digit per image
    scores = inpainting_scores(InpaintingSet(originals, np.zeros((10, 8, 8), dtype=bool), completions))
    assert scores["inpaint_label_agreement"] == pytest.approx((1 + same.mean()) / 2)
    assert scores["inpaint_unknown_share"] == 1.0


def test_one_completion_per_image_has_no_diversity():
    originals = digits_uint8(3)
    scores = inpainting_scores(InpaintingSet(originals, _half(3), originals[:, None]))
    assert scores["inpaint_diversity"] is None and "inpaint_diversity" not in inpaint_quality.metrics_of(scores)
    assert "n/a" in inpaint_quality.summary_line(scores)


@pytest.fixture(scope="module")
def inpainted(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(tiny run, dataset, an inpainting set of 4 digits x 2 by the tiny run's Euler sampler)."""
    root = tmp_path_factory.mktemp("inpaint-quality")
    run = make_tiny_run(root / "run")
    data = root / "data"
    write_dataset(Storage.from_uri(str(data)), digits_uint8(4), shard_size=4)
    out = root / "inpaint"
    inpaint.run(InpaintOptions(data=str(data), checkpoint=str(run), out=str(out), mask="center", samples_per_image=2,
                               shard_size=4, batch_size=8, overrides=["sampling.method=euler"]), log=quiet)
    return run, data, out


@pytest.mark.timeout(240)
def test_evaluate_scores_an_inpainting_set_as_the_job_did(inpainted, capsys):
    _, _, out = inpainted
    by_job = Storage.from_uri(str(out)).read_json("_scores.json")
    assert by_job["metrics"]["inpaint_known_change"] == 0 and by_job["nfe_per_sample"] == 2  # 3 levels: 2 Euler steps
    (out / "_scores.json").unlink()
    assert load_job("evaluate").main(["--samples", str(out), "--metrics", "inpaint"]) == 0
    assert "label agreement" in capsys.readouterr().out
    by_evaluate = Storage.from_uri(str(out)).read_json("_scores.json")
    assert by_evaluate["metrics"] == by_job["metrics"] and by_evaluate["samples_per_image"] == 2


@pytest.mark.timeout(240)
def test_metrics_and_sets_of_the_other_kind_are_refused(inpainted, tmp_path, capsys):
    run, _, out = inpainted
    evaluate = load_job("evaluate")
    assert evaluate.main(["--samples", str(out), "--metrics", "digits"]) == 2
    assert "is an inpainting set" in capsys.readouterr().err
    generated = tmp_path / "generated"
    write_sample_set(Storage.from_uri(str(generated)), digits_uint8(4), shard_size=4)
    assert evaluate.main(["--samples", str(generated), "--metrics", "inpaint"]) == 2
    assert "--metrics inpaint scores an inpainting set" in capsys.readouterr().err
    # generation into an inpainting folder is another job: refused, the folder untouched
    before = sorted(p.name for p in out.iterdir())
    assert load_job("generate").main(["--checkpoint", str(run), "--n", "4", "--out", str(out)]) == 2
    assert "holds a different job" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
