"""What a user sees: the default training (shortened) and a small generation print their own
progress, no Python traceback, and no line repeated more than three times.

Both run as a user runs them (``python jobs/train.py``, ``python jobs/generate.py``, each
starting its own embedded Ray instance), with stdout and stderr captured together.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ncsn_core.config import load_config
from ncsn_ray.io.storage import Storage
from ncsn_ray.train.tracking import read_events

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
WORKER_PREFIX = re.compile(r"^\((?P<name>[^)]*?) pid=[^)]*\)\s*")
PROJECT_LINE = re.compile(r"^\[(train|generate|ray)\] |^(preparing|shard \d+/\d+|done:|digits:)")
MAX_FOREIGN_LINES = 8  # Ray's own start-up lines (token auth, dashboard URL) and a few one-off notices

pytestmark = [pytest.mark.ray]


def run_job(args: list[str], cwd: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    text = ANSI.sub("", result.stdout + result.stderr)
    assert result.returncode == 0, text[-4000:]
    return [line for line in text.splitlines() if line.strip()]


def check_lines(lines: list[str], job: str) -> list[str]:
    """Assert no traceback and no repeats; return the lines that are not the project's."""
    text = "\n".join(lines)
    assert "Traceback" not in text, f"{job} printed a traceback:\n{text[-4000:]}"
    normalised = [WORKER_PREFIX.sub("", re.sub(r"^\S+ \S+\t", "", line)) for line in lines]
    repeated = {line: n for line, n in collections.Counter(normalised).items() if n > 3}
    assert not repeated, f"{job} repeated lines: {repeated}"
    return [line for line in normalised if not PROJECT_LINE.search(line)]


@pytest.mark.timeout(1200)
def test_default_training_and_generation_print_progress_and_no_noise(tmp_path, digits_local):
    runs = tmp_path / "runs"
    train = run_job([str(REPO / "jobs" / "train.py"), "--steps", "4", "--checkpoint-every", "4",
                     "--data", str(digits_local), "--storage", str(runs)], cwd=tmp_path)
    foreign = check_lines(train, "jobs/train.py")
    assert any("[train] step 4/4" in line for line in train), "\n".join(train)
    assert any("[train] done at step 4" in line for line in train)
    assert len(foreign) <= MAX_FOREIGN_LINES, "\n".join(foreign)
    # tracked by default: TensorBoard scalars and the preview grid in the run folder
    events = read_events(Storage.from_uri(str(runs / "digits" / "tensorboard")))
    assert {"loss", "images_per_s", "learning_rate"} <= set(events) and 4 in events["loss"]
    assert events["samples"][4].startswith(b"\x89PNG")

    generate = run_job([str(REPO / "jobs" / "generate.py"), "--n", "8", "--checkpoint", str(runs / "digits")],
                       cwd=tmp_path)  # the default's own sampler (35 network evaluations per sample)
    foreign = check_lines(generate, "jobs/generate.py")
    progress = [line for line in generate if re.search(r"\[generate\] \d+/8 samples", line)]
    assert progress and "8/8 samples (100.0%)" in progress[-1]
    assert any("[generate] done: 8 samples" in line for line in generate)
    assert len(foreign) <= MAX_FOREIGN_LINES, "\n".join(foreign)
    # Ray Data's notes on the settings the job chose are not the user's concern
    assert not [line for line in foreign if "Progress bars disabled" in line or "execution finished in" in line], \
        "\n".join(foreign)
    manifest = json.loads((tmp_path / "runs" / "samples" / "digits" / "_manifest.json").read_text())
    assert manifest["sampler"]["method"] == "edm" and manifest["nfe_per_sample"] == 35
    sampling = load_config(REPO / "ncsn_ray" / "configs" / "digits.yaml").sampling
    assert any(f"edm on 18 edm sigmas, churn={sampling.churn:g}" in line and "35 NFE/sample" in line
               for line in generate), "\n".join(generate)
