"""The HTTP server as this process's front: what `server.start` starts, handed to the runtime by
the process's entry point (`app.__main__.install_http_front`, through `app.runtime.fronts.use_front`),
so that the runtime never imports the server and the server only talks to a client.

The front owns the request log, so the Server page's log survives a restart of the server.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from app.runtime.client import RuntimeClient
from app.server.config import ServerConfig
from app.server.queue import RequestLog
from app.server.runner import RunningServer


class HttpFront:
    def __init__(self) -> None:
        self.log = RequestLog()

    def check(self, options: dict[str, Any]) -> dict[str, Any]:
        config = ServerConfig.from_settings(options)  # refuses a non-loopback address without a key
        settings = asdict(config)
        settings["cors_origins"] = list(config.cors_origins)
        return settings

    def start(self, client: RuntimeClient, settings: dict[str, Any]) -> RunningServer:
        values = dict(settings)
        values["cors_origins"] = tuple(values.get("cors_origins") or ())
        return RunningServer(client, ServerConfig(**values), self.log)

    def log_since(self, seq: int) -> list[dict[str, Any]]:
        return self.log.since(seq)

