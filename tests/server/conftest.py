"""One in-process Hearth runtime with the API server on a free 127.0.0.1 port, shared by a module.

`hearth serve` is `server.start` on an InProcessClient; these fixtures do the same, with the real
SmolLM2 loaded once (2k context, to keep the tests light), and restart only the HTTP side when a
test needs other server settings (the model stays loaded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
import threading
from typing import Any

import pytest

from app.runtime.inprocess import InProcessClient

SMALL = {"max_tokens": 48, "queue_limit": 32}


@dataclass
class Served:
    client: InProcessClient
    url: str
    model: str
    restart: Callable[..., str]  # new server settings -> the new base URL

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def log(self) -> list[dict[str, Any]]:
        return list(self.client.call("server.log", {"since": 0})["entries"])


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    client = InProcessClient()
    try:
        loaded = client.call("engine.load", {"prefs": {"context_length": 2048}})

        def restart(**options: Any) -> str:
            client.call("server.stop")
            served.url = client.call("server.start", {"port": 0, **SMALL, **options})["url"]
            return served.url

        served = Served(client, "", loaded["model"]["id"], restart)
        restart()
        yield served
    finally:
        client.call("server.stop")
        client.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll until ``predicate()`` is truthy (the server's log is written by its own threads)."""
    import time

    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        pause.wait(0.02)
