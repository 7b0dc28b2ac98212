"""A weights file other tools load: ``jobs/export.py`` writes a run's network as safetensors,
``jobs/import_checkpoint.py --format safetensors`` reads it back into a run that samples."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ncsn_core import build_model, config_from_dict, geometric_sigmas, load_checkpoint, save_checkpoint
from ncsn_ray.io.storage import Storage
from ncsn_ray.train.checkpoints import list_checkpoints
from support.data import TINY_RUN_CONFIG
from support.jobs import load_job


def _run_with_ema(folder: Path) -> Path:
    """A run folder whose checkpoint has different trained and EMA weights (step 5)."""
    config = config_from_dict(TINY_RUN_CONFIG)
    torch.manual_seed(3)
    model = build_model(config)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in ema.parameters():
            tensor.add_(0.05 * torch.randn_like(tensor))
    sigmas = geometric_sigmas(1.0, 0.01, 3)
    save_checkpoint(folder / "checkpoint_00000005" / "checkpoint.pt", model=model, config=config, sigmas=sigmas,
                    ema=ema, step=5)
    return folder


def _outputs(checkpoint_file: Path, *, use_ema: bool) -> torch.Tensor:
    ckpt = load_checkpoint(checkpoint_file)
    network = ckpt.build_model(use_ema=use_ema)
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        return network(x, torch.tensor([0, 1, 2, 1]))


@pytest.mark.parametrize("ema", [None, False])
def test_export_then_import_computes_the_same_function(tmp_path, ema, capsys):
    run = _run_with_ema(tmp_path / "run")
    out = tmp_path / "weights.safetensors"
    flags = [] if ema is None else ["--no-ema"]
    assert load_job("export").main(["--checkpoint", str(run), "--out", str(out), *flags]) == 0
    metadata_weights = "ema" if ema is None else "model"

    # Other tools read it with safetensors alone: this project's names, the run's config.
    tensors = load_file(str(out))
    with open(out, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    metadata = header["__metadata__"]
    assert metadata["weights"] == metadata_weights and metadata["step"] == "5"
    assert json.loads(metadata["config"])["model"]["ngf"] == TINY_RUN_CONFIG["model"]["ngf"]
    assert len(json.loads(metadata["sigmas"])) == 3
    assert set(tensors) == set(build_model(config_from_dict(TINY_RUN_CONFIG)).state_dict())

    imported = tmp_path / "imported"
    assert load_job("import_checkpoint").main(["--format", "safetensors", "--in", str(out), "--out", str(imported)]) == 0
    [(step, name)] = list_checkpoints(Storage.from_uri(str(imported)))
    assert step == 5
    original = _outputs(run / "checkpoint_00000005" / "checkpoint.pt", use_ema=ema is None)
    again = _outputs(imported / name / "checkpoint.pt", use_ema=True)
    assert torch.equal(original, again), "the imported network computes the same outputs"
    other = _outputs(run / "checkpoint_00000005" / "checkpoint.pt", use_ema=ema is not None)
    assert not torch.equal(original, other), "EMA and trained weights differ, so the choice was tested"


def test_a_file_that_does_not_match_its_config_names_the_first_mismatch_and_writes_nothing(tmp_path, capsys):
    run = _run_with_ema(tmp_path / "run")
    out = tmp_path / "weights.safetensors"
    assert load_job("export").main(["--checkpoint", str(run), "--out", str(out)]) == 0
    tensors = load_file(str(out))
    key = sorted(k for k in tensors if k.endswith("weight") and tensors[k].dim() == 4)[0]
    tensors[key] = torch.zeros(*tensors[key].shape[:-1], tensors[key].shape[-1] + 1)
    with open(out, "rb") as f:
        metadata = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    capsys.readouterr()
    imported = tmp_path / "imported"
    code = load_job("import_checkpoint").main(["--format", "safetensors", "--in", str(bad), "--out", str(imported)])
    err = capsys.readouterr().err
    assert code == 2 and key in err and "Traceback" not in err, err
    assert not imported.exists()


def test_files_that_are_not_safetensors_are_refused_without_being_executed(tmp_path, capsys):
    class Boom:
        def __reduce__(self):
            return (Path("/nonexistent-ncsn-marker").touch, ())

    pickled = tmp_path / "evil.safetensors"
    pickled.write_bytes(pickle.dumps({"weight": Boom()}))
    code = load_job("import_checkpoint").main(["--format", "safetensors", "--in", str(pickled),
                                                "--out", str(tmp_path / "imported")])
    assert code == 2 and "not a safetensors file" in capsys.readouterr().err
    assert not Path("/nonexistent-ncsn-marker").exists() and not (tmp_path / "imported").exists()

    run = tmp_path / "run"
    _run_with_ema(run)
    assert load_job("export").main(["--checkpoint", str(run), "--out", str(tmp_path / "w.pt")]) == 2
    assert "*.safetensors" in capsys.readouterr().err
