"""What every job shares for talking to the user: the log function's type and time formatting."""

from __future__ import annotations

import math
from typing import Callable

__all__ = ["Log", "format_seconds"]

Log = Callable[[str], None]  # one progress line to the user (``print`` by default)


def format_seconds(seconds: float) -> str:
    """``1h02m03s`` / ``2m03s``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
