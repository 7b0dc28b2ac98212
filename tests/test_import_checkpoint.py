"""Importing the original NCSN code's checkpoints (jobs/import_checkpoint.py).

The published files cannot be downloaded here, so each test builds one in the original
format: the project's network with random weights, renamed to the original code's names by
the documented mapping (ncsn_core.original_ncsn), wrapped as DataParallel would (``module.``
prefix) and saved as ``[state_dict, optimizer_state_dict]``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ncsn_core import NCSN, load_checkpoint
from ncsn_core.original_ncsn import to_original_names, to_project_names
from ncsn_ray.train.checkpoints import list_checkpoints
from ncsn_ray.io.storage import Storage
from support.jobs import load_job

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"name": "orig", "data": {"dataset": "digits", "image_size": 8, "channels": 1},
          "model": {"ngf": 8}, "noise": {"sigma_max": 1.0, "sigma_min": 0.01, "num_levels": 10}}


def original_file(folder: Path, ngf: int = 8, steps: int = 7) -> tuple[Path, NCSN]:
    torch.manual_seed(1)
    network = NCSN(1, 10, ngf)
    with torch.no_grad():
        for tensor in network.parameters():
            tensor.add_(0.1 * torch.randn_like(tensor))
    optimizer = torch.optim.Adam(network.parameters())
    network(torch.rand(2, 1, 8, 8), torch.tensor([0, 1])).sum().backward()
    for _ in range(steps):
        optimizer.step()
    state = {f"module.{key}": value for key, value in to_original_names(network.state_dict()).items()}
    assert any(".1_1_norm." in key for key in state) and "module.normalizer.embed.weight" in state
    path = folder / "checkpoint.pth"
    torch.save([state, optimizer.state_dict()], path)
    return path, network


def write_config(folder: Path, **model) -> Path:
    config = {**CONFIG, "model": {**CONFIG["model"], **model}}
    path = folder / "orig.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_mapping_round_trips_every_name():
    state = NCSN(3, 10, 4).state_dict()
    original = to_original_names(state)
    assert len(original) == len(state) == 173
    assert "refine1.adapt_convs.0.1_1_norm.embed.weight" in original  # the deepest block is refine1 there
    assert to_project_names({f"module.{k}": v for k, v in original.items()}).keys() == state.keys()


@pytest.mark.timeout(120)
def test_imported_run_holds_the_same_tensors_and_computes_the_same_function(tmp_path):
    source, network = original_file(tmp_path)
    out = tmp_path / "runs" / "orig"
    assert load_job("import_checkpoint").main(["--config", str(write_config(tmp_path)), "--in", str(source),
                                               "--out", str(out)]) == 0
    assert [step for step, _ in list_checkpoints(Storage.from_uri(str(out)))] == [7], "Adam's step count is kept"
    imported = load_checkpoint(out / "checkpoint_00000007" / "checkpoint.pt")
    assert imported.ema_state is None and imported.config.model.ngf == 8
    for key, tensor in network.state_dict().items():
        assert torch.equal(imported.model_state[key], tensor), key
    x, level = torch.rand(3, 1, 8, 8), torch.tensor([0, 4, 9])
    with torch.no_grad():
        assert torch.equal(imported.build_model()(x, level), network.eval()(x, level))


@pytest.mark.timeout(120)
def test_a_file_that_does_not_match_the_config_names_the_tensor_and_shapes(tmp_path):
    source, _ = original_file(tmp_path, ngf=8)
    out = tmp_path / "runs" / "orig"
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "import_checkpoint.py"), "--config",
                             str(write_config(tmp_path, ngf=16)), "--in", str(source), "--out", str(out)],
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "begin_conv.weight is (8, 1, 3, 3) in the file, (16, 1, 3, 3) in the network" in result.stderr
    assert not out.exists()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "import_checkpoint.py"), "--config",
                             str(write_config(tmp_path)), "--in", str(junk), "--out", str(out)],
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 2 and "not a readable checkpoint file" in result.stderr
