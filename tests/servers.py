"""A real geopin server for the tests: uvicorn in a thread, on a socket bound to 127.0.0.1 here (no race for
the port, never another interface)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn


class RunningServer:
    """`app` served on 127.0.0.1 until close(); `url` and an httpx `client` (with `headers`, e.g. a token)."""

    def __init__(self, app, headers: dict | None = None, start_timeout_s: float = 30) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        self.client = httpx.Client(base_url=self.url, timeout=60, headers=headers or {})

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
