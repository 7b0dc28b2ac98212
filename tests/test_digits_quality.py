"""The offline digits metric (ncsn_ray.evaluate.digits, jobs/evaluate.py --metrics digits).

Checked against sets whose answer is known: real digits score near the floor, a Gaussian
fitted to the pixels and uniform noise score far above it, in that order; copies of
training images are flagged as near copies; a set of one class has that class's share 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ncsn_ray.evaluate import digits as dq
from ncsn_ray.io.storage import Storage
from support.data import write_sample_set

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_calibration_orders_real_gaussian_and_uniform():
    rows = dq.calibration(256)
    fd = {name: row["digits_fd"] for name, row in rows.items()}
    assert fd["real"] < fd["gaussian"] / 2 < fd["uniform"] / 10, fd
    assert rows["real"]["digits_confidence"] > 0.95 > rows["gaussian"]["digits_confidence"]
    assert rows["real"]["digits_max_class_share"] < 0.15 < rows["uniform"]["digits_max_class_share"]
    assert rows["real"]["digits_near_copy_share"] < 0.05, "real digits are not copies of other digits"
    assert rows["real"]["n"] == rows["gaussian"]["n"] == 256


@pytest.mark.timeout(300)
def test_copies_of_training_images_are_near_copies_and_one_class_fills_its_share():
    images, labels = dq.digits_uint8()
    copies = dq.score(images[:100])
    assert copies["digits_near_copy_share"] == 1.0 and copies["digits_median_nearest_training_distance"] == 0.0
    threes = dq.score(images[labels == 3][:60])
    assert threes["digits_max_class_share"] > 0.95 and threes["digits_class_shares"][3] > 0.95
    noisy = np.clip(images[:100].astype(int) + np.random.default_rng(0).integers(-90, 90, images[:100].shape), 0, 255)
    assert dq.score(noisy.astype(np.uint8))["digits_near_copy_share"] < 0.5
    with pytest.raises(ValueError, match="8x8 grey"):
        dq.score(np.zeros((4, 16, 16), dtype=np.uint8))


@pytest.mark.timeout(300)
def test_evaluate_cli_digits_metric_offline_without_reference(tmp_path):
    images, _ = dq.digits_uint8()
    samples = tmp_path / "samples"
    write_sample_set(Storage.from_uri(str(samples)), images[200:328, ..., None], shard_size=64)
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "evaluate.py"), "--samples", str(samples),
                             "--metrics", "digits", "--no-ray", "--json"], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["metrics"]["digits_fd"] < 2.0 and scores["metrics"]["digits_confidence"] > 0.95
    assert set(scores["digits"]["calibration"]) == {"real", "gaussian", "uniform"}
    assert "calibration at n=128" in result.stdout and "uniform" in result.stdout
    assert json.loads((samples / "_scores.json").read_text())["metrics"] == scores["metrics"]
    needs_reference = subprocess.run([sys.executable, str(REPO / "jobs" / "evaluate.py"), "--samples", str(samples)],
                                     capture_output=True, text=True, timeout=240)
    assert needs_reference.returncode == 2 and "need --reference" in needs_reference.stderr
