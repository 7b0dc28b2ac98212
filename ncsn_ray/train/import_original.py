"""Import the authors' published NCSN and NCSNv2 checkpoints as a training run of this project.

The original repositories saved their networks wrapped in ``DataParallel`` (keys start with
``module.``):

* ``ncsn`` (ermongroup/ncsn; MNIST, CIFAR-10, CelebA): ``torch.save([score.state_dict(),
  optimizer.state_dict()], "checkpoint.pth")``. No EMA was kept.
* ``ncsnv2`` (ermongroup/ncsnv2; CIFAR-10, CelebA, ...): ``[score.state_dict(),
  optimizer.state_dict(), epoch, step, ema_helper.state_dict()]``, the last (the EMA of the
  parameters) when EMA was on.

``run(ImportOptions(...))`` (behind ``jobs/import_checkpoint.py``) reads such a file with
``torch.load(..., weights_only=True)``, renames its tensors (:mod:`ncsn_core.original_ncsn`),
checks every name and shape against the network the given config describes, and writes a
checkpoint of this project's format into ``<out>/checkpoint_<step>/``, which
``jobs/generate.py --checkpoint <out>`` and ``jobs/evaluate.py`` then use like any training run.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ncsn_core import build_model, geometric_sigmas, load_config
from ncsn_core.checkpoint import checkpoint_bytes
from ncsn_core.original_ncsn import to_project_names

from .checkpoints import list_checkpoints
from ..errors import UserError, begin_work
from ..io.layout import CHECKPOINT_FILE, STEP_FILE
from ..io.storage import Storage

__all__ = ["ImportOptions", "run", "FORMATS"]

FORMATS = {"ncsn": "ncsn", "ncsnv2": "ncsnv2"}  # format -> the model.kind its config must have


@dataclass(kw_only=True)
class ImportOptions:
    """``format``: the checkpoint's origin (``ncsn``: ermongroup/ncsn); ``config``: this
    project's YAML describing the same network and noise ladder; ``source``: the file's URI;
    ``out``: the run folder to create; ``step``: the step to record (default: Adam's step
    count in the file's optimiser state, else 0)."""

    format: str = "ncsn"
    config: str
    source: str
    out: str
    step: int | None = None
    endpoint_url: str | None = None


@dataclass
class OriginalCheckpoint:
    """What an original file holds: network state (original names), optimiser state, the step
    it recorded (NCSNv2) and the EMA of the parameters (NCSNv2, when kept)."""

    state: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    step: int | None = None
    ema: dict[str, torch.Tensor] | None = None


def _read_original(data: bytes, uri: str) -> OriginalCheckpoint:
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as err:
        raise UserError(f"{uri}: not a readable checkpoint file ({type(err).__name__}: {err})") from err
    if isinstance(payload, (list, tuple)) and payload and isinstance(payload[0], dict):
        found = OriginalCheckpoint(payload[0])
        if len(payload) > 1 and isinstance(payload[1], dict):
            found.optimizer = payload[1]
        if len(payload) > 3 and isinstance(payload[3], int):
            found.step = payload[3]
        if len(payload) > 4 and isinstance(payload[4], dict):
            found.ema = payload[4]
        return found
    if isinstance(payload, dict) and payload and all(torch.is_tensor(v) for v in payload.values()):
        return OriginalCheckpoint(payload)
    raise UserError(f"{uri}: expected [state_dict, optimizer_state_dict, ...] as the original code saves, "
                    f"found a {type(payload).__name__}")


def _adam_step(optimizer: dict[str, Any] | None) -> int:
    steps = [int(s["step"]) for s in (optimizer or {}).get("state", {}).values() if isinstance(s, dict) and "step" in s]
    return max(steps) if steps else 0


def _check_against(model: torch.nn.Module, state: dict[str, torch.Tensor], uri: str, config_path: str) -> None:
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise UserError(f"{uri} does not match {config_path}: the network needs {key} {tuple(tensor.shape)}, "
                            "which the file lacks")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise UserError(f"{uri} does not match {config_path}: {key} is {tuple(state[key].shape)} in the file, "
                            f"{tuple(tensor.shape)} in the network the config describes (check model.ngf, "
                            "data.channels, noise.num_levels)")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise UserError(f"{uri} does not match {config_path}: the file has {extra[0]} "
                        f"{tuple(state[extra[0]].shape)}, which the network has no place for")


def run(options: ImportOptions, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write ``<out>/checkpoint_<step>/checkpoint.pt`` from an original checkpoint; a summary."""
    if options.format not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, got {options.format!r}")
    kind = FORMATS[options.format]
    if options.step is not None and options.step < 0:
        raise UserError(f"step must be non-negative, got {options.step}")
    config = load_config(options.config)
    if config.model.kind != kind or config.has_auto():
        raise UserError(f"{options.config}: {options.format} checkpoints need a config with model.kind: {kind} and "
                        "no auto values (the ladder of the checkpoint)")
    source = Storage.from_uri(options.source, endpoint_url=options.endpoint_url)
    original = _read_original(source.read_bytes(), source.uri)
    state = to_project_names(original.state)
    model = build_model(config)
    _check_against(model, state, source.uri, options.config)
    model.load_state_dict(state)
    ema = None
    if original.ema is not None:  # parameters only; buffers (the ladder) come from the network
        ema_model = build_model(config)
        ema_state = {**dict(model.named_buffers()), **to_project_names(original.ema)}
        _check_against(ema_model, ema_state, f"{source.uri} (EMA)", options.config)
        ema_model.load_state_dict(ema_state)
        ema = ema_model
    step = options.step if options.step is not None else (original.step or _adam_step(original.optimizer))
    out = Storage.from_uri(options.out, endpoint_url=options.endpoint_url)
    if list_checkpoints(out):
        raise UserError(f"{out.uri} already holds checkpoints; import into a new run folder")
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    folder = f"checkpoint_{step:08d}"
    begin_work()
    out.write_bytes(f"{folder}/{CHECKPOINT_FILE}",
                    checkpoint_bytes(model=model, config=config, sigmas=sigmas, ema=ema, step=step))
    out.write_bytes(f"{folder}/{STEP_FILE}", f"{step}\n".encode())
    parameters = sum(t.numel() for t in model.parameters())
    log(f"[import] {source.uri}: {len(state)} tensors ({parameters:,} parameters), step {step}"
        f"{', with EMA' if ema is not None else ''} -> {out.uri_of(folder)}/{CHECKPOINT_FILE}")
    return {"out": out.uri, "checkpoint": out.uri_of(f"{folder}/{CHECKPOINT_FILE}"), "step": step,
            "tensors": len(state), "parameters": parameters}
