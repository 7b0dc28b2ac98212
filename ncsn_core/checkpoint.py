"""Checkpoint files: model weights, EMA weights, noise ladder and config, saved together.

Format (a ``torch.save`` dict of tensors and Python primitives only, so that loading works
with ``torch.load(..., weights_only=True)``)::

    format:     "ncsn-checkpoint"
    version:    1
    config:     Config.to_dict()
    sigmas:     (L,) float32 tensor, descending
    model:      state_dict of the score network
    ema:        state_dict of the EMA network, or None
    optimizer:  optimizer state_dict, or None (training resume only)
    step:       optimiser steps taken
    digest:     SHA-256 hex digest over the weights, sigmas and config

Loading checks the digest (a tampered file fails), that the config describes the stored
weights, and that the stored sigmas are the ladder the config implies.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.nn as nn

from .config import Config, ConfigError, config_from_dict
from .model import build_model
from .wrappers import unwrap_model
from .noise import geometric_sigmas

__all__ = ["CheckpointError", "Checkpoint", "save_checkpoint", "load_checkpoint", "checkpoint_bytes"]

FORMAT = "ncsn-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which file and why."""


@dataclass
class Checkpoint:
    config: Config
    sigmas: torch.Tensor
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None
    optimizer_state: dict[str, Any] | None
    step: int

    def build_model(self, *, use_ema: bool = True, device: torch.device | str = "cpu") -> nn.Module:
        """The network with the EMA weights (if present and ``use_ema``), in eval mode."""
        model = build_model(self.config)
        state = self.ema_state if (use_ema and self.ema_state is not None) else self.model_state
        model.load_state_dict(state)
        return model.to(device).eval()


def _digest(payload: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(payload["config"], sort_keys=True).encode())
    h.update(str(payload["step"]).encode())
    for name in ("sigmas",):
        h.update(payload[name].detach().cpu().contiguous().numpy().tobytes())
    for group in ("model", "ema"):
        state = payload[group]
        if state is None:
            h.update(b"none")
            continue
        for key in sorted(state):
            h.update(key.encode())
            tensor = state[key].detach().cpu().contiguous()
            h.update(str(tensor.dtype).encode())
            h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def _check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"refusing to save a checkpoint: {what} tensor {key!r} is not finite")


def checkpoint_bytes(
    *,
    model: nn.Module,
    config: Config,
    sigmas: torch.Tensor,
    ema: nn.Module | dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
) -> bytes:
    """Serialise a checkpoint to bytes (see the module docstring for the format).

    Raises :class:`CheckpointError` if any weight is NaN or infinite: a checkpoint with
    non-finite weights is never written.
    """
    model_state = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
    _check_finite(model_state, "model")
    ema_state = None
    if ema is not None:
        raw = ema if isinstance(ema, dict) else unwrap_model(ema).state_dict()
        ema_state = {k: v.detach().cpu() for k, v in raw.items()}
        _check_finite(ema_state, "EMA")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "sigmas": sigmas.detach().cpu().to(torch.float32),
        "model": model_state,
        "ema": ema_state,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
    }
    payload["digest"] = _digest(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_checkpoint(path: str | os.PathLike | BinaryIO, **kwargs: Any) -> None:
    """Write :func:`checkpoint_bytes` to a local path (atomically: temp file, then rename) or a binary file object."""
    data = checkpoint_bytes(**kwargs)
    if hasattr(path, "write"):
        path.write(data)  # type: ignore[union-attr]
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_checkpoint(source: str | os.PathLike | BinaryIO | bytes, *, name: str | None = None) -> Checkpoint:
    """Load and verify a checkpoint with ``torch.load(..., weights_only=True)``.

    ``source`` is a local path, a binary file object or the raw bytes; ``name`` is used in
    error messages (defaults to the path).
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<checkpoint>")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"{label}: checkpoint not found") from err
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        raise CheckpointError(f"{label}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{label}: not an NCSN checkpoint (missing format marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{label}: unsupported checkpoint version {payload.get('version')!r}")
    missing = {"config", "sigmas", "model", "ema", "step", "digest"} - set(payload)
    if missing:
        raise CheckpointError(f"{label}: checkpoint lacks {', '.join(sorted(missing))}")
    if _digest(payload) != payload["digest"]:
        raise CheckpointError(f"{label}: checksum mismatch: the checkpoint was modified or corrupted")
    try:
        config = config_from_dict(payload["config"], f"{label} (embedded config)")
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    expected = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    sigmas = payload["sigmas"]
    if sigmas.shape != expected.shape or not torch.allclose(sigmas, expected, rtol=1e-5):
        raise CheckpointError(f"{label}: stored sigmas do not match the noise ladder of the embedded config")
    model = build_model(config)
    for group in ("model", "ema"):
        state = payload[group]
        if state is None:
            continue
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = str(err).splitlines()[:3]
            raise CheckpointError(
                f"{label}: the {group} weights do not match the embedded config "
                f"(model {config.model.kind}, ngf={config.model.ngf}, channels={config.data.channels}, "
                f"levels={config.noise.num_levels}): {' '.join(first)}"
            ) from err
    return Checkpoint(
        config=config,
        sigmas=sigmas,
        model_state=payload["model"],
        ema_state=payload["ema"],
        optimizer_state=payload.get("optimizer"),
        step=int(payload["step"]),
    )
