"""Digests that say whether two training states are bit-identical (used by the resumption
tests and by ``benchmarks/chaos.py``): SHA-256 over every tensor with its key path."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

__all__ = ["tensors_digest", "training_state_digests"]


def tensors_digest(value: Any) -> str:
    """SHA-256 over every tensor in a (nested) state dict, with its key path: equal digests
    mean bit-identical weights, EMA or optimiser state."""
    import torch

    h = hashlib.sha256()

    def visit(path: str, item: Any) -> None:
        if isinstance(item, dict):
            for key in sorted(item, key=str):
                visit(f"{path}/{key}", item[key])
        elif isinstance(item, (list, tuple)):
            for index, element in enumerate(item):
                visit(f"{path}/{index}", element)
        elif torch.is_tensor(item):
            h.update(path.encode())
            h.update(item.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(f"{path}={item!r}".encode())

    visit("", value)
    return h.hexdigest()


def training_state_digests(checkpoint: Path | str | bytes) -> dict[str, str]:
    """``{"model", "ema", "optimizer"}`` digests of a checkpoint (a file or its bytes)."""
    from ncsn_core import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    return {"model": tensors_digest(ckpt.model_state), "ema": tensors_digest(ckpt.ema_state),
            "optimizer": tensors_digest(ckpt.optimizer_state)}
