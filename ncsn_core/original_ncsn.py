"""Names of the original NCSN code's weights (ermongroup/ncsn, ``CondRefineNetDilated``) and
this project's :class:`~ncsn_core.model.NCSN`: the two are the same function for the same
weights (same layers, same numerics), under other names.

The authors published checkpoints written as ``torch.save([score.state_dict(),
optimizer.state_dict()], "checkpoint.pth")`` with the network wrapped in ``DataParallel``,
so every key starts with ``module.``. The mapping, original -> project:

====================================================  ===============================================
original                                              project
====================================================  ===============================================
``begin_conv.*``, ``end_conv.*``                      same
``normalizer.embed.weight``                           ``end_norm.embed.weight``
``res{k}.{j}.normalize1`` / ``normalize2``            ``res{k}.{j}.norm1`` / ``norm2``
``res{k}.{j}.conv1|conv2|shortcut`` (incl. ``.conv``)  same
``refine{i}.*``                                       ``refine{5-i}.*`` (the original counts from the deepest)
``...adapt_convs.{n}.{b}_{s}_norm|conv``              ``...adapt.{n}.norms|convs.{b-1}.{s-1}``
``...output_convs.{b}_{s}_norm|conv``                 ``...output.norms|convs.{b-1}.{s-1}``
``...msf.*``, ``...crp.norms|convs.*``                same
====================================================  ===============================================

Both directions are plain renames; shapes are unchanged. Only the names the project's
network has are produced; anything else is reported by the caller.
"""

from __future__ import annotations

import re

import torch

__all__ = ["to_project_names", "to_original_names", "strip_data_parallel"]

_RCU = re.compile(r"^(?P<head>.*\.)(?P<kind>adapt_convs\.\d+|output_convs)\.(?P<b>\d+)_(?P<s>\d+)_(?P<what>norm|conv)\.(?P<tail>.+)$")
_RCU_PROJECT = re.compile(r"^(?P<head>.*\.)(?P<kind>adapt\.\d+|output)\.(?P<what>norms|convs)\.(?P<b>\d+)\.(?P<s>\d+)\.(?P<tail>.+)$")
_REFINE = re.compile(r"^refine(?P<i>[1-4])\.")
_RES_NORM = re.compile(r"^(?P<head>res\d\.\d\.)normalize(?P<n>[12])\.")
_RES_NORM_PROJECT = re.compile(r"^(?P<head>res\d\.\d\.)norm(?P<n>[12])\.")


def strip_data_parallel(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix ``DataParallel`` / DDP put on every key (if all have it)."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module."):]: value for key, value in state.items()}
    return dict(state)


def _rename_original(key: str) -> str:
    key = _REFINE.sub(lambda m: f"refine{5 - int(m.group('i'))}.", key)
    if key.startswith("normalizer."):
        return "end_norm." + key[len("normalizer."):]
    key = _RES_NORM.sub(lambda m: f"{m.group('head')}norm{m.group('n')}.", key)
    match = _RCU.match(key)
    if match:
        kind = match.group("kind").replace("adapt_convs", "adapt").replace("output_convs", "output")
        what = "norms" if match.group("what") == "norm" else "convs"
        return (f"{match.group('head')}{kind}.{what}.{int(match.group('b')) - 1}.{int(match.group('s')) - 1}."
                f"{match.group('tail')}")
    return key


def _rename_project(key: str) -> str:
    key = _REFINE.sub(lambda m: f"refine{5 - int(m.group('i'))}.", key)
    if key.startswith("end_norm."):
        return "normalizer." + key[len("end_norm."):]
    key = _RES_NORM_PROJECT.sub(lambda m: f"{m.group('head')}normalize{m.group('n')}.", key)
    match = _RCU_PROJECT.match(key)
    if match:
        kind = match.group("kind").replace("adapt", "adapt_convs").replace("output", "output_convs")
        what = "norm" if match.group("what") == "norms" else "conv"
        return (f"{match.group('head')}{kind}.{int(match.group('b')) + 1}_{int(match.group('s')) + 1}_{what}."
                f"{match.group('tail')}")
    return key


def to_project_names(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original ``CondRefineNetDilated`` state dict (``module.`` prefix or not) under this
    project's names."""
    return {_rename_original(key): value for key, value in strip_data_parallel(original).items()}


def to_original_names(project: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This project's NCSN state dict under the original code's names (no ``module.`` prefix)."""
    return {_rename_project(key): value for key, value in project.items()}
