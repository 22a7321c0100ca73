"""The MCP client through the protocol, against a real stdio server written with the official SDK
(tests/data/mcp_server.py): tools listed and called; a tool that crashes its server, one that hangs,
one that answers a megabyte and one that raises each give a clear result and the rest goes on."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.runtime.inprocess import InProcessClient
from app.runtime.mcp.results import MAX_RESULT_CHARS
from app.runtime.protocol import RuntimeFailure

SERVER = Path(__file__).resolve().parents[2] / "data" / "mcp_server.py"


def stdio_entry(name: str = "tools", *, confirmed: bool = True) -> dict[str, Any]:
    return {"name": name, "command": sys.executable, "args": [str(SERVER)], "env": {}, "confirmed": confirmed}


def server_processes() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if str(SERVER) in child.cmdline():
                found.append(child)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def client() -> Iterator[InProcessClient]:
    c = InProcessClient()
    yield c
    c.close()


def test_tools_are_listed_called_and_every_failure_is_a_clear_result(client: InProcessClient) -> None:
    config = [stdio_entry(), {"name": "missing", "command": "/nonexistent/mcp-server", "confirmed": True}]
    listed = client.call("mcp.tools", {"config": config})
    names = {t["function"]["name"] for t in listed["tools"]}
    assert {"add", "weather", "crash", "fail", "hang", "big"} <= names
    add = next(t for t in listed["tools"] if t["function"]["name"] == "add")["function"]
    assert add["parameters"]["properties"].keys() == {"a", "b"} and "sum" in add["description"]
    assert listed["functions"]["add"] == {"server": "tools", "tool": "add"}
    assert "missing" in listed["problems"] and "not found" in listed["problems"]["missing"]  # the rest goes on

    def call(tool: str, **extra: Any) -> dict[str, Any]:
        return client.call("mcp.call", {"server": "tools", "tool": tool, "config": config, **extra})

    assert call("add", arguments={"a": 2, "b": 40}) == {"text": "42", "is_error": False, "chars": 2, "truncated": False, "status": "done"}

    raised = call("fail")
    assert raised["is_error"] and "fail" in raised["text"]

    big = call("big")  # a megabyte is cut before it can reach a context
    assert big["chars"] == 1_048_576 and big["truncated"] and not big["is_error"]
    assert MAX_RESULT_CHARS < len(big["text"]) < MAX_RESULT_CHARS + 200
    assert big["text"].endswith(f"[result cut: {MAX_RESULT_CHARS:,} of 1,048,576 characters shown]")

    hung = call("hang", timeout_s=1)
    assert hung["is_error"] and hung["text"] == "Tool 'hang' of MCP server 'tools' did not answer within 1 s; it was stopped."
    assert call("add", arguments={"a": 1, "b": 2})["text"] == "3"  # the same server still answers

    crashed = call("crash")
    assert crashed["is_error"] and "stopped while it ran 'crash'" in crashed["text"]
    assert "about to crash" in crashed["text"]  # the tail of its stderr says why
    states = {s["name"]: s for s in client.call("mcp.servers", {"config": config})["servers"]}
    assert states["tools"]["state"] == "stopped" and "stopped while it ran" in states["tools"]["message"]
    assert call("add", arguments={"a": 5, "b": 5})["text"] == "10"  # started again on the next call
    assert client.call("mcp.servers", {"config": config})["servers"][0]["state"] == "running"


def test_a_server_nobody_confirmed_never_starts(client: InProcessClient) -> None:
    config = [stdio_entry(confirmed=False)]
    with pytest.raises(RuntimeFailure, match=r"'tools' has not been confirmed to run: .*mcp_server\.py") as raised:
        client.call("mcp.tools", {"servers": ["tools"], "config": config})
    assert raised.value.kind.value == "invalid_params"
    with pytest.raises(RuntimeFailure, match="not been confirmed"):
        client.call("mcp.call", {"server": "tools", "tool": "add", "config": config})
    assert client.call("mcp.tools", {"config": config})["tools"] == []  # "every confirmed server": none
    assert server_processes() == []
    with pytest.raises(RuntimeFailure, match="no MCP server named 'other'"):
        client.call("mcp.call", {"server": "other", "tool": "add", "config": config})


def test_servers_stop_with_the_runtime() -> None:
    client = InProcessClient()
    try:
        client.call("mcp.tools", {"config": [stdio_entry()]})
        running = server_processes()
        assert len(running) == 1
    finally:
        client.close()
    gone, alive = psutil.wait_procs(running, timeout=10)
    assert alive == []


def test_the_servers_come_from_the_settings(client: InProcessClient) -> None:
    from app import settings

    saved = settings.load()
    try:
        settings.save(settings.Settings(mcp_servers=[stdio_entry("from-settings")]))
        listed = client.call("mcp.servers")["servers"]
        assert [(s["name"], s["transport"], s["confirmed"], s["state"]) for s in listed] == [("from-settings", "stdio", True, "stopped")]
        assert listed[0]["display"].endswith("mcp_server.py")
        result = client.call("mcp.call", {"server": "from-settings", "tool": "weather", "arguments": {"city": "Oslo"}})
        assert result["text"] == "Sunny and 21 degrees in Oslo."
    finally:
        settings.save(saved)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_streamable_http_server(client: InProcessClient) -> None:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), "http", str(port)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:  # wait for it to listen (a connect, not a sleep-and-hope)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the HTTP MCP server did not start"
                time.sleep(0.1)
        config = [{"name": "web", "url": f"http://127.0.0.1:{port}/mcp", "headers": {"X-Test": "1"}, "confirmed": True}]
        listed = client.call("mcp.tools", {"config": config})
        assert listed["problems"] == {} and "add" in listed["functions"]
        result = client.call("mcp.call", {"server": "web", "tool": "add", "arguments": {"a": 20, "b": 22}, "config": config})
        assert result["text"] == "42"
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_http_api_has_no_way_to_start_a_server_or_run_a_tool() -> None:
    """The API returns the model's tool calls to its client and runs none: no module of app/server
    names an mcp method or imports the MCP client."""
    import ast

    bad = []
    for path in (Path(__file__).resolve().parents[3] / "app" / "server").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("mcp."):
                bad.append(f"{path.name}:{node.lineno} {node.value}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                bad += [f"{path.name}:{node.lineno} imports {n}" for n in names if "mcp" in n]
    assert bad == []


def test_an_mcp_json_is_read_and_merged_but_nothing_runs_or_is_saved(client: InProcessClient) -> None:
    existing = [stdio_entry("tools"), {"name": "web", "url": "https://example.com/mcp", "confirmed": True}]
    text = json.dumps({"mcpServers": {"tools": {"command": sys.executable, "args": [str(SERVER)]},
                                      "web": {"url": "https://example.com/other"}, "new": {"command": "new-server"}}})
    merged = client.call("mcp.import", {"text": text, "existing": existing})
    assert merged["imported"] == ["tools", "web", "new"]
    assert [(s["name"], s["confirmed"]) for s in merged["servers"]] == [("tools", True), ("web", False), ("new", False)]
    assert server_processes() == []
    with pytest.raises(RuntimeFailure, match="not an mcp.json Hearth can read: not a JSON file"):
        client.call("mcp.import", {"text": "{", "existing": []})
