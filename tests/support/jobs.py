"""The jobs' command-line modules (``ncsn_ray.cli.<job>``), to call their ``main(argv)`` in-process."""

from __future__ import annotations

import importlib
from types import ModuleType


def load_job(name: str) -> ModuleType:
    """``ncsn_ray.cli.<name>``, the module behind ``jobs/<name>.py`` and ``ncsn-<command>``
    (its ``main(argv) -> exit code`` runs in this process)."""
    return importlib.import_module(f"ncsn_ray.cli.{name}")
