"""The paper's toy experiment (jobs/toy.py): both the paper's ladder and the authors' code's
recover the 1/5 : 4/5 mode weights where plain Langevin dynamics does not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_toy_job_reproduces_the_mode_weights_with_both_ladders(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "toy.py"), "--out", str(tmp_path), "--n", "1280",
                             "--ssm-steps", "50", "--json"], capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr
    weights = json.loads(result.stdout.strip().splitlines()[-1])
    assert weights["exact"] == pytest.approx(0.2, abs=0.03)
    assert weights["annealed"] == pytest.approx(0.2, abs=0.04), "the paper's ladder (sigma 10 -> 0.1)"
    assert weights["annealed_original"] == pytest.approx(0.2, abs=0.04), "the authors' code (sigma 20 -> 1)"
    assert abs(weights["langevin"] - 0.2) > 0.15, "plain Langevin gets the weights wrong"
    assert (tmp_path / "fig3_langevin_vs_annealed.png").is_file() and (tmp_path / "fig2_score_estimation.png").is_file()
