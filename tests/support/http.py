"""One HTTP request's status, for checks of the test clusters' APIs (token authentication)."""

from __future__ import annotations

import urllib.error
import urllib.request

__all__ = ["http_status"]


def http_status(
    url: str, *, headers: dict[str, str] | None = None, method: str = "GET", timeout: float = 5.0
) -> int:
    """The HTTP status of one request (0 when nothing answers)."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0

