"""Remote engines: a second Hearth runtime uses the served one as an OpenAI-compatible model source."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from app import settings as settings_module
from app.runtime.backends import remote
from app.runtime.inprocess import InProcessClient
from app.runtime.protocol import ErrorKind, EventKind, RuntimeFailure, Sampling

from .conftest import Served


@pytest.fixture
def endpoint_in_settings(served: Served) -> Iterator[str]:
    """The served Hearth as the remote endpoint "box" in the person's settings (restored after)."""
    saved = settings_module.load()
    changed = settings_module.Settings.from_dict(saved.to_dict())
    changed.remote_endpoints = [{"name": "box", "url": served.url, "api_key": None}]
    settings_module.save(changed)
    try:
        yield f"remote:box/{served.model}"
    finally:
        settings_module.save(saved)


def test_the_remote_backend_streams_a_chat_from_another_hearth(served: Served) -> None:
    backend = remote.RemoteBackend(remote.Endpoint.from_dict({"name": "box", "url": served.url}), served.model)
    pieces: list[str] = []
    done = backend.chat([{"role": "user", "content": "Name a fruit."}], Sampling(max_tokens=6, temperature=0, stop=("\n\n",)), on_token=pieces.append, is_cancelled=lambda: False)
    assert len(pieces) > 1 and done.text == "".join(pieces)
    assert done.finish_reason in ("stop", "length") and 0 < done.completion_tokens <= 6 and done.prompt_tokens > 0


def test_remote_models_are_in_the_library_and_chat_through_the_runtime(served: Served, endpoint_in_settings: str) -> None:
    other = InProcessClient()  # a second runtime: its engine thread waits on the network, the first one serves
    try:
        rows = other.call("models.list")["models"]
        row = next((r for r in rows if r["id"] == endpoint_in_settings), [r["id"] for r in rows])
        assert isinstance(row, dict) and row["format"] == "remote" and row["fit"]["fits"], row
        events = list(other.stream("chat", {"model": endpoint_in_settings, "messages": [{"role": "user", "content": "Hello!"}], "sampling": {"max_tokens": 5}}))
        tokens = [e.data["text"] for e in events if e.event is EventKind.TOKEN]
        result = events[-1].data
        assert len(tokens) > 1 and result["text"] == "".join(tokens) and result["model"] == endpoint_in_settings
        assert other.call("engine.status")["loaded"] is False  # nothing was loaded for it
    finally:
        other.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _NotAnApi(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>hello</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_refused_connections_timeouts_and_bad_answers_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = remote.Endpoint.from_dict({"name": "gone", "url": f"http://127.0.0.1:{_free_port()}"})
    with pytest.raises(RuntimeFailure, match="refused the connection") as failure:
        remote.list_models(refused)
    assert failure.value.kind is ErrorKind.REMOTE_FAILED
    row = remote.library_rows([refused])[0]
    assert not row["fit"]["fits"] and "refused" in row["fit"]["summary"]

    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        monkeypatch.setattr(remote, "READ_TIMEOUT", 0.3)
        mute = remote.Endpoint.from_dict({"name": "mute", "url": f"http://127.0.0.1:{silent.getsockname()[1]}"})
        with pytest.raises(RuntimeFailure, match="did not answer in time"):
            remote.RemoteBackend(mute, "m").chat([{"role": "user", "content": "hi"}], Sampling(), on_token=lambda t: None, is_cancelled=lambda: False)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotAnApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        html = remote.Endpoint.from_dict({"name": "web", "url": f"http://127.0.0.1:{server.server_address[1]}"})
        with pytest.raises(RuntimeFailure, match="did not answer with JSON"):
            remote.list_models(html)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
