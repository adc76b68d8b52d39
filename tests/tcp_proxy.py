"""A loopback TCP proxy a test puts in front of a shared server (Postgres, RabbitMQ, a webhook
receiver) to take it away from the code under test without touching the server itself, which other
tests and people use.

``down()`` is an outage: every connection through the proxy is cut and new ones are reset at once
(like a refused connect) until ``up()``. ``cut()`` drops the open connections only (a network blip,
a server restart): new connections go through.

    proxy = TcpProxy(5432)                          # or TcpProxy(port, host="127.0.0.1")
    url = proxy.replace_port("postgresql://postgres@127.0.0.1:5432/db")
    proxy.down(); ...; proxy.up()
    proxy.close()

Also a context manager.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.accepted = 0  # connections passed through
        self.refused = 0  # connections reset while down
        self.cuts = 0
        self._down = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name=f"tcp-proxy-{self.port}").start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_down(self) -> bool:
        return self._down.is_set()

    def replace_port(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (user, path and query kept)."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit((parts.scheme, f"{userinfo}127.0.0.1:{self.port}", *parts[2:]))

    def down(self) -> None:
        """Cut every connection and refuse new ones until ``up()``."""
        self._down.set()
        self.cut()

    def up(self) -> None:
        self._down.clear()

    def cut(self) -> None:
        """Drop every open connection; new ones go through (unless the proxy is down)."""
        with self._lock:
            self.cuts += 1
            socks, self._socks = self._socks, []
        self._hang_up(*socks)

    def close(self) -> None:
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self.is_down:
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                self.accepted += 1
                self._socks += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _reset(self, client: socket.socket) -> None:
        # RST instead of FIN: the client's connect (or first read) fails at once, as with a refusal.
        with contextlib.suppress(OSError):
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        with self._lock:
            self.refused += 1

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._hang_up(src, dst)

    @staticmethod
    def _hang_up(*socks: socket.socket) -> None:
        # shutdown() before close(): the pump of the other direction may be blocked in recv() on one of
        # these, and on Linux close() alone neither wakes it nor sends the FIN.
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
