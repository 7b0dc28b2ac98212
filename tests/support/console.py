"""Small helpers every job test uses: a silent log function and an environment that makes
every download fail at once."""

from __future__ import annotations

__all__ = ["quiet", "DEAD_PROXY"]

# A proxy on a closed loopback port: every download attempt fails at once, internet or not.
DEAD_PROXY = {"HTTP_PROXY": "http://127.0.0.1:1", "HTTPS_PROXY": "http://127.0.0.1:1", "http_proxy": "http://127.0.0.1:1",
              "https_proxy": "http://127.0.0.1:1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def quiet(_msg: str) -> None:
    """A ``log`` function that prints nothing."""
