"""Runs the API on uvicorn in a thread of the process that owns the engine; start and stop on demand.

(`app.server.front` is what the runtime's `server.start` calls to get here.)

The socket is bound here, before uvicorn starts, so that "address already in use" or "cannot
assign that address" comes back to the caller as a RuntimeFailure in words, not as a log line in
a thread (uvicorn exits the process on a bind error).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from app.runtime.client import RuntimeClient
from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.server.config import ServerConfig
from app.server.queue import RequestLog, Slots

log = logging.getLogger(__name__)

START_TIMEOUT = 15.0


class RunningServer:
    def __init__(self, client: RuntimeClient, config: ServerConfig, request_log: RequestLog) -> None:
        import uvicorn

        from app.server.app import create_app

        config.validate()
        self.config = config
        self.slots = Slots(config.queue_limit)
        self._sock = _bind(config.host, config.port)
        self.port = int(self._sock.getsockname()[1])
        app = create_app(client, config, request_log, self.slots)
        # log_config=None: uvicorn's loggers go through this process's own logging (the worker's
        # stdout is the protocol); the request log is Hearth's own (middleware).
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2, ws="none")
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hearth-api-server", daemon=True)
        self._thread.start()
        waited = 0.0
        while not self._server.started and self._thread.is_alive() and waited < START_TIMEOUT:
            self._thread.join(0.02)
            waited += 0.02
        if not self._server.started:
            self.stop()
            raise RuntimeFailure(ErrorKind.INTERNAL, f"The API server did not start: {self._error or 'timed out'}")
        log.info("API server listening on %s", self.url)

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # SystemExit included: uvicorn exits on some start-up errors
            self._error = exc
            log.exception("the API server stopped with an error")

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        try:
            self._sock.close()
        except OSError:
            log.exception("closing the API server's socket")

    def public_config(self) -> dict[str, Any]:
        return self.config.public()

    def status(self) -> dict[str, Any]:
        return {"running": self._thread.is_alive(), "url": self.url, "port": self.port, "queue": {"used": self.slots.used, "limit": self.slots.limit}}


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Port {port} on {host} is already in use. Choose another port, or stop the program using it.") from None
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
    return sock
