"""Where the runtime's `server.start` gets its HTTP server from, without importing it.

The HTTP server (`app.server`) is a client of the runtime; the process that owns the engine still
runs it, as its *front*. The process's entry point (`app.__main__.install_http_front`) hands the
front's factory over here, and this module is kept free of heavy imports, because the entry point
calls it before the CLI has pointed library loggers at its log file (a library imported earlier
would keep writing to the terminal).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from app.runtime.client import RuntimeClient
from app.runtime.protocol import ErrorKind, RuntimeFailure


class RunningFront(Protocol):
    """A started HTTP front: where it listens, how full its queue is, and how to stop it."""

    url: str

    def status(self) -> dict[str, Any]: ...  # {"running", "url", "port", "queue": {"used", "limit"}}

    def public_config(self) -> dict[str, Any]: ...  # the settings it runs with, without the key

    def stop(self) -> None: ...


class Front(Protocol):
    """What serves HTTP for this process (`app.server.front.HttpFront`); it keeps its request log
    across restarts."""

    def check(self, options: dict[str, Any]) -> dict[str, Any]:
        """The saved settings with ``options`` over them, refused in words when unsafe (a
        non-loopback address without a key...) before anything is loaded."""
        ...

    def start(self, client: RuntimeClient, settings: dict[str, Any]) -> RunningFront: ...

    def log_since(self, seq: int) -> list[dict[str, Any]]: ...


_front_factory: Callable[[], Front] | None = None


def use_front(factory: Callable[[], Front]) -> None:
    """Called once by the process's entry point (app/__main__.py; the tests' conftest) with the
    HTTP server's front, so that `server.start` can start it without the runtime importing it."""
    global _front_factory
    _front_factory = factory


def make() -> Front:
    """A new front from the factory handed over (one per server service: it keeps the request log)."""
    if _front_factory is None:
        raise RuntimeFailure(ErrorKind.INTERNAL, "This process has no HTTP server (app.server was not handed to the runtime).")
    return _front_factory()
