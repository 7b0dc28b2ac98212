"""What the ``jobs/*.py`` launchers share: the job's ``main`` from the installed package, or a
clear message (exit 2, nothing started) when the package is not installed in this Python."""

from __future__ import annotations

import importlib
import sys
from typing import Callable


def main_of(job: str) -> Callable[[], int]:
    """``ncsn_ray.cli.<job>.main``; exits 2 naming the install command when ncsn_ray is missing."""
    try:
        return importlib.import_module(f"ncsn_ray.cli.{job}").main
    except ModuleNotFoundError as err:
        if err.name not in ("ncsn_ray", "ncsn_core"):
            raise
        print(f"[{job}] error: the ncsn_ray package is not installed in this Python ({sys.executable}); from the "
              "repository root run: pip install -c requirements/constraints.txt -e .", file=sys.stderr)
        sys.exit(2)
