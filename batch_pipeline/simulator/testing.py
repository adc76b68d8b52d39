"""Run the simulator inside another program's process, e.g. from a pytest fixture.

with simulator_in_thread(SimulatorSettings(freeze_clock=True)) as sim:
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test")
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from .app import create_app
from .settings import SimulatorSettings


class ThreadedServer:
    """uvicorn serving ``app`` on a free local port in a daemon thread."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1") -> None:
        self.app = app
        # Bind before starting so the port is known and cannot be taken in between.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.base_url = f"{self.url}/v1"
        config = uvicorn.Config(app, log_config=None, log_level="warning", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self, timeout: float = 15.0) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"simulator on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@contextmanager
def simulator_in_thread(settings: SimulatorSettings | None = None) -> Iterator[ThreadedServer]:
    """A running simulator for the duration of the ``with`` block."""
    server = ThreadedServer(create_app(settings)).start()
    try:
        yield server
    finally:
        server.stop()
