"""The job scripts in ``jobs/`` as modules, to call their ``main(argv)`` in-process."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def load_job(name: str) -> ModuleType:
    """``jobs/<name>.py`` loaded as a module (its ``main(argv) -> exit code`` runs in this process)."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
