"""Running the gateway: in the foreground (the CLI) or on a background thread (tests, benchmarks, the demo)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` until the block ends; yields its base URL (`port=0` picks a free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the gateway failed to start")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_until_ready(
    url: str, *, timeout_s: float = 300, alive: Callable[[], bool] = lambda: True, path: str = "/healthz"
) -> None:
    """Poll a server's `path` (a gateway's /healthz) until it answers 200; fail early if `alive()` says its
    process has died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}{path}").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if not alive():
            raise RuntimeError(f"the gateway at {url} exited before it was ready")
        time.sleep(0.2)
    raise TimeoutError(f"the gateway at {url} was not ready after {timeout_s} s")
