"""An S3 API on loopback that can go away and come back (moto's ``ThreadedMotoServer``, a
test dependency): the object-store outages of the reliability tests and ``benchmarks/chaos.py``."""

from __future__ import annotations

import socket

__all__ = ["RestartableS3"]


class RestartableS3:
    """A moto S3 server on a fixed loopback port that can be stopped and started again; its
    contents survive a restart (moto keeps them in this process), as a real store's would."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
