"""The engine's HTTP server: one ASGI app on uvicorn, run as a task in the engine's own event loop.

Contract:

- :meth:`HttpServer.start` binds the address itself (so a port in use is a one-line
  :class:`~engine.errors.ListenError`, never uvicorn's ``sys.exit``), then serves in a task; port 0 picks
  a free port (:attr:`HttpServer.port`). Signals stay the engine's: uvicorn's own signal capture is off.
- TLS when ``http_tls`` is set; with its ``ca_file`` clients may present a certificate, which the app
  sees in the ASGI TLS extension (``engine.api.tls``).
- No access log: a request line can carry what a sender put in a query string.
- :meth:`HttpServer.stop` stops taking connections and lets requests in progress (their commits
  included) finish for ``shutdown_grace_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from engine.api.tls import ClientCertProtocol, server_context
from engine.errors import ListenError
from engine.settings import HttpTLSSettings

__all__ = ["HttpServer"]

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers (the engine owns SIGINT/SIGTERM)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """Serves one ASGI app on ``host:port`` inside the running event loop."""

    def __init__(
        self,
        app: Any,
        *,
        host: str,
        port: int,
        tls: HttpTLSSettings | None = None,
        max_connections: int = 1000,
        shutdown_grace_s: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self._tls = tls
        context = server_context(tls) if tls is not None else None
        self.config = uvicorn.Config(
            app,
            http=ClientCertProtocol,
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            limit_concurrency=max_connections,
            timeout_graceful_shutdown=max(1, round(shutdown_grace_s)),
            ssl_context_factory=(lambda config, default: context) if context is not None else None,
        )
        self._server = _Server(self.config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    async def start(self) -> None:
        """Bind and start serving; :class:`ListenError` (one line) when the address cannot be had."""
        self._socket = _bind(self.host, self.port)
        self.port = self._socket.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="http-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise ListenError(f"HTTP server on {self.host}:{self.port} did not start")
            await asyncio.sleep(0.01)
        log.info("HTTP server listening on %s://%s:%d", self.scheme, self.host, self.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._task = None
            if self._socket is not None:
                self._socket.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it a
    # response written as head then body waits for the client's delayed ACK (measured: 44 ms per request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = (
            "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or type(exc).__name__).lower()
        )
        raise ListenError(f"HTTP server cannot listen on {host}:{port}: {why}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock
