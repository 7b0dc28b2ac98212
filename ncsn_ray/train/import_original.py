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
import json
import pickle
import zipfile
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ncsn_core import build_model, config_from_dict, geometric_sigmas, load_config
from ncsn_core.checkpoint import checkpoint_bytes
from ncsn_core.original_ncsn import to_project_names

from .. import configs
from .checkpoints import list_checkpoints
from ..errors import UserError, begin_work
from ..io.layout import CHECKPOINT_FILE, STEP_FILE
from ..io.storage import Storage

__all__ = ["ImportOptions", "run", "FORMATS"]

# format -> the model.kind its config must have (safetensors: any; the file names its config)
FORMATS = {"ncsn": "ncsn", "ncsnv2": "ncsnv2", "safetensors": None}


@dataclass(kw_only=True)
class ImportOptions:
    """``format``: the checkpoint's origin (``ncsn``: ermongroup/ncsn); ``config``: this
    project's YAML describing the same network and noise ladder; ``source``: the file's URI;
    ``out``: the run folder to create; ``step``: the step to record (default: Adam's step
    count in the file's optimiser state, else 0)."""

    format: str = "ncsn"
    config: str | None = None  # required except for safetensors files written by jobs/export.py
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
    """Write ``<out>/checkpoint_<step>/checkpoint.pt`` from an original checkpoint or a
    safetensors weights file; a summary."""
    if options.format not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, got {options.format!r}")
    if options.step is not None and options.step < 0:
        raise UserError(f"step must be non-negative, got {options.step}")
    source = Storage.from_uri(options.source, endpoint_url=options.endpoint_url)
    if options.format == "safetensors":
        return _import_safetensors(options, source, log)
    kind = FORMATS[options.format]
    if options.config is None:
        raise UserError(f"--config is needed for {options.format} checkpoints (the network and noise ladder)")
    config = load_config(configs.resolve(options.config))
    if config.model.kind != kind or config.has_auto():
        raise UserError(f"{options.config}: {options.format} checkpoints need a config with model.kind: {kind} and "
                        "no auto values (the ladder of the checkpoint)")
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
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    return _write_run(options, source, config, sigmas, model, ema, step, log)


def _import_safetensors(options: ImportOptions, source: Storage, log: Callable[[str], None]) -> dict[str, Any]:
    """A weights file of ``jobs/export.py`` (or any safetensors file with this project's
    tensor names and a ``--config``): the config and the ladder come from its metadata
    unless ``--config`` is given."""
    from .export import read_weights_file

    tensors, metadata = read_weights_file(source.read_bytes(), source.uri)
    if options.config is not None:
        config, described_by = load_config(configs.resolve(options.config)), options.config
    elif "config" in metadata:
        try:
            config = config_from_dict(json.loads(metadata["config"]), f"{source.uri} (metadata)")
        except ValueError as err:
            raise UserError(f"{source.uri}: the config in its metadata is unusable ({err})") from err
        described_by = "the config in its metadata"
    else:
        raise UserError(f"{source.uri} carries no config in its metadata; give --config for the network it holds")
    if config.has_auto():
        raise UserError(f"{described_by}: auto values left; give the resolved config (the one the run trained with)")
    model = build_model(config)
    _check_against(model, tensors, source.uri, described_by)
    model.load_state_dict(tensors)
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    if "sigmas" in metadata and options.config is None:
        try:
            recorded = torch.tensor(json.loads(metadata["sigmas"]), dtype=sigmas.dtype)
        except (ValueError, TypeError) as err:
            raise UserError(f"{source.uri}: the sigmas in its metadata are unusable ({err})") from err
        if recorded.shape != sigmas.shape:
            raise UserError(f"{source.uri}: {recorded.numel()} sigmas in its metadata, "
                            f"{config.noise.num_levels} in its config")
        sigmas = recorded
    recorded_step = metadata.get("step", "0")
    step = options.step if options.step is not None else (int(recorded_step) if recorded_step.isdigit() else 0)
    return _write_run(options, source, config, sigmas, model, None, step, log)


def _write_run(options: ImportOptions, source: Storage, config, sigmas: torch.Tensor, model: torch.nn.Module,
               ema: torch.nn.Module | None, step: int, log: Callable[[str], None]) -> dict[str, Any]:
    out = Storage.from_uri(options.out, endpoint_url=options.endpoint_url)
    if list_checkpoints(out):
        raise UserError(f"{out.uri} already holds checkpoints; import into a new run folder")
    folder = f"checkpoint_{step:08d}"
    begin_work()
    out.write_bytes(f"{folder}/{CHECKPOINT_FILE}",
                    checkpoint_bytes(model=model, config=config, sigmas=sigmas, ema=ema, step=step))
    out.write_bytes(f"{folder}/{STEP_FILE}", f"{step}\n".encode())
    tensors = len(model.state_dict())
    parameters = sum(t.numel() for t in model.parameters())
    log(f"[import] {source.uri}: {tensors} tensors ({parameters:,} parameters), step {step}"
        f"{', with EMA' if ema is not None else ''} -> {out.uri_of(folder)}/{CHECKPOINT_FILE}")
    return {"out": out.uri, "checkpoint": out.uri_of(f"{folder}/{CHECKPOINT_FILE}"), "step": step,
            "tensors": tensors, "parameters": parameters}
