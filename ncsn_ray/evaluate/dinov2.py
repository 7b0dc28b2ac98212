"""DINOv2 ViT-B/14 for FD-DINOv2 (``--metrics fd-dinov2``), through torch-fidelity's extractor.

torch-fidelity 0.4 builds the network with ``torch.hub.load("facebookresearch/dinov2",
"dinov2_vitb14")``: the hub repository's code (``$TORCH_HOME/hub/facebookresearch_dinov2_main/``)
and its weights (``$TORCH_HOME/hub/checkpoints/dinov2_vitb14_pretrain.pth``). With the
internet both download on first use. Offline, as for the Inception weights: ``--dinov2-weights
PATH_OR_URI`` puts the weights file into the hub cache of each node that needs it, and the
code folder must already be in the hub cache (copy ``$TORCH_HOME/hub/facebookresearch_dinov2_main``
from a machine that ran the metric once); when either is missing and cannot be downloaded the
error names both. Loading runs the hub repository's code: only use a copy you trust.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..io.storage import Storage, StorageError
from .weights import FidelityError

__all__ = ["HUB_REPO", "WEIGHTS_FILE", "hub_paths", "place_weights", "load_dinov2_extractor_kwargs", "check_dinov2"]

HUB_REPO = "facebookresearch/dinov2"
WEIGHTS_FILE = "dinov2_vitb14_pretrain.pth"
WEIGHTS_URL = f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/{WEIGHTS_FILE}"


def hub_paths() -> tuple[Path, Path]:
    """``(code folder, weights file)`` in this process's torch hub cache."""
    hub = Path(torch.hub.get_dir())
    return hub / "facebookresearch_dinov2_main", hub / "checkpoints" / WEIGHTS_FILE


def place_weights(weights: str | None, endpoint_url: str | None = None) -> None:
    """Copy ``weights`` (a path or URI of ``dinov2_vitb14_pretrain.pth``) into the hub cache."""
    if not weights:
        return
    _, target = hub_paths()
    if target.is_file():
        return
    try:
        data = Storage.from_uri(weights, endpoint_url=endpoint_url).read_bytes("")
    except StorageError as err:
        raise FidelityError(f"DINOv2 weights {weights}: cannot read ({err})") from err
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(target)


def _missing_message(err: Exception) -> str:
    code, weights = hub_paths()
    return (f"fd-dinov2 cannot load DINOv2 ViT-B/14 ({type(err).__name__}: {err}). It needs torch hub's "
            f"{HUB_REPO} code in {code} and its weights {weights.name} in {weights.parent}: on a machine with the "
            f"internet run  python -c \"import torch; torch.hub.load('{HUB_REPO}', 'dinov2_vitb14')\"  and copy "
            f"$TORCH_HOME/hub (facebookresearch_dinov2_main and checkpoints/{WEIGHTS_FILE}) here, or pass "
            f"--dinov2-weights PATH_OR_URI for the weights ({WEIGHTS_URL})")


def load_dinov2_extractor_kwargs(spec: Any) -> dict[str, Any]:
    """Prepare this node for torch-fidelity's DINOv2 extractor (weights into the hub cache,
    the hub code present); the keyword arguments ``create_feature_extractor`` takes."""
    place_weights(spec.weights, spec.endpoint_url)
    return {}


def check_dinov2(weights: str | None, endpoint_url: str | None) -> None:
    """In the driver, before any work: DINOv2 loads here (downloading what is missing), else
    a :class:`FidelityError` naming the files to provide."""
    place_weights(weights, endpoint_url)
    try:
        from torch_fidelity.utils import create_feature_extractor

        create_feature_extractor("dinov2-vit-b-14", ["dinov2"], cuda=False, verbose=False)
    except Exception as err:  # URLError, HTTPError, FileNotFoundError, RuntimeError from torch.hub ...
        raise FidelityError(_missing_message(err)) from None
