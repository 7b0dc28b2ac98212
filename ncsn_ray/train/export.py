"""A weights file other tools load: the network of a checkpoint as ``safetensors``.

``safetensors`` holds tensors and a flat ``str -> str`` metadata map, and loading it executes
no code (unlike a pickle). What is written:

* tensors: the network's ``state_dict`` (the EMA weights by default when the checkpoint has
  them, ``--no-ema`` for the trained ones), contiguous, on the CPU, with this project's
  names (``ncsn_core.build_model(config)`` loads them as they are);
* metadata: ``format`` = ``ncsn-on-ray-weights``, ``version``, ``config`` (the run's config
  as JSON), ``sigmas`` (the noise ladder as JSON, sigma_1 first), ``weights`` (``ema`` or
  ``model``), ``step``, and ``source_sha256`` (of the checkpoint file exported).

``jobs/import_checkpoint.py --format safetensors`` reads such a file back into a run folder
that ``generate.py`` samples from (:func:`read_weights_file` is the reader).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import UserError, begin_work
from ..io.storage import Storage
from .checkpoints import read_checkpoint_bytes

__all__ = ["ExportOptions", "run", "read_weights_file", "WEIGHTS_FORMAT"]

WEIGHTS_FORMAT = "ncsn-on-ray-weights"
WEIGHTS_VERSION = 1
HEADER_LIMIT = 100 * 1024 * 1024  # a safetensors header above this is not one this project wrote


@dataclass(kw_only=True)
class ExportOptions:
    """``checkpoint``: a run folder (its newest checkpoint), a checkpoint folder or a ``.pt``
    file; ``out``: the ``.safetensors`` file to write; ``ema``: the EMA weights (None: when
    the checkpoint has them)."""

    checkpoint: str
    out: str
    ema: bool | None = None
    endpoint_url: str | None = None


def run(options: ExportOptions, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the weights file; returns ``{"out", "weights", "tensors", "parameters", "step"}``."""
    from safetensors.torch import save

    from ncsn_core import load_checkpoint

    if not options.out.endswith(".safetensors"):
        raise UserError(f"--out {options.out}: name the file *.safetensors")
    data, location = read_checkpoint_bytes(options.checkpoint, endpoint_url=options.endpoint_url)
    checkpoint = load_checkpoint(data, name=location.uri)
    if options.ema and checkpoint.ema_state is None:
        raise UserError(f"{location.uri} holds no EMA weights; export the trained ones with --no-ema")
    use_ema = checkpoint.ema_state is not None and options.ema is not False
    state = checkpoint.ema_state if use_ema else checkpoint.model_state
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    metadata = {
        "format": WEIGHTS_FORMAT,
        "version": str(WEIGHTS_VERSION),
        "config": json.dumps(checkpoint.config.to_dict(), sort_keys=True),
        "sigmas": json.dumps([float(s) for s in checkpoint.sigmas.tolist()]),
        "weights": "ema" if use_ema else "model",
        "step": str(checkpoint.step),
        "source_sha256": hashlib.sha256(data).hexdigest(),
    }
    out_folder, _, name = options.out.rpartition("/")
    out = Storage.from_uri(out_folder or ".", endpoint_url=options.endpoint_url)
    begin_work()
    out.write_bytes(name, save(tensors, metadata=metadata))
    parameters = sum(t.numel() for t in tensors.values())
    log(f"[export] {location.uri} (step {checkpoint.step}, {'EMA' if use_ema else 'trained'} weights): "
        f"{len(tensors)} tensors, {parameters:,} values -> {out.uri_of(name)}")
    return {"out": out.uri_of(name), "weights": metadata["weights"], "tensors": len(tensors),
            "parameters": parameters, "step": checkpoint.step}


def read_weights_file(data: bytes, uri: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file's bytes; :class:`UserError` naming ``uri``
    if they are not one. No code in the file is executed (safetensors stores no code)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if len(data) < 8:
        raise UserError(f"{uri}: not a safetensors file (only {len(data)} bytes)")
    header_size = int.from_bytes(data[:8], "little")
    if header_size > min(HEADER_LIMIT, len(data) - 8):
        raise UserError(f"{uri}: not a safetensors file (a header of {header_size} bytes)")
    try:
        header = json.loads(data[8:8 + header_size])
        tensors = load(data)
    except (ValueError, SafetensorError) as err:
        raise UserError(f"{uri}: not a readable safetensors file ({err})") from err
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        metadata = {}
    return tensors, metadata
