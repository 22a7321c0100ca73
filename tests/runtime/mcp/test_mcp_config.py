"""MCP servers in the settings and from the mcp.json shape LM Studio, Cursor and Claude Desktop use."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from app import settings
from app.runtime.mcp.config import McpConfigError, ServerConfig, from_entry, merge, parse_mcp_json
from app.runtime.mcp.naming import ToolInfo, openai_tools

MCP_JSON = {
    "mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/home/me/notes dir"],
                  "env": {"TOKEN": "s3cret"}},
        "remote": {"url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer abc"}},
        "old": {"command": "old-server", "disabled": True},
    }
}


def test_an_mcp_json_file_imports_unconfirmed() -> None:
    servers = parse_mcp_json(json.dumps(MCP_JSON))
    assert [(s.name, s.transport, s.confirmed) for s in servers] == [("files", "stdio", False), ("remote", "http", False)]
    files, remote = servers
    assert files.args == ("-y", "@modelcontextprotocol/server-filesystem", "/home/me/notes dir")
    # what a person confirms: the command as a shell reads it, env names but never their values
    assert files.display() == "TOKEN=… npx -y @modelcontextprotocol/server-filesystem '/home/me/notes dir'"
    assert remote.display() == "https://mcp.example.com/mcp" and remote.headers == {"Authorization": "Bearer abc"}
    assert [from_entry(s.to_entry()) for s in servers] == servers  # the settings' flat entry round-trips


@pytest.mark.parametrize(("raw", "words"), [
    ("not json", "not a JSON file"),
    ('{"servers": {}}', '"mcpServers"'),
    ('{"mcpServers": {}}', "lists no server"),
    ('{"mcpServers": {"x": {"command": "a", "url": "http://b"}}}', "not both"),
    ('{"mcpServers": {"x": {}}}', "not neither"),
    ('{"mcpServers": {"x": {"command": "a", "args": "-v"}}}', "args must be a list of texts"),
    ('{"mcpServers": {"x": {"url": "ftp://b"}}}', "must start with http"),
    ('{"mcpServers": {"bad name!": {"command": "a"}}}', "server name"),
    ('{"mcpServers": {"x": {"command": "a", "cwd": "/"}}}', "unknown field(s) cwd"),
])
def test_a_bad_mcp_json_names_its_problem(raw: str, words: str) -> None:
    with pytest.raises(McpConfigError) as raised:
        parse_mcp_json(raw)
    assert words in str(raised.value)


def test_reimporting_keeps_a_confirmation_only_for_the_same_command() -> None:
    same = ServerConfig("a", "run-a", confirmed=True)
    changed = ServerConfig("b", "run-b", confirmed=True)
    merged = merge([same, changed], [ServerConfig("a", "run-a"), ServerConfig("b", "run-b", ("--evil",)), ServerConfig("c", "run-c")])
    assert [(s.name, s.confirmed) for s in merged] == [("a", True), ("b", False), ("c", False)]


def test_the_settings_check_every_server_on_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "settings.json"
    good = [ServerConfig("files", "npx", ("-y", "fs"), {"TOKEN": "s3cret"}, confirmed=True).to_entry()]
    settings.save(settings.Settings(mcp_servers=good), path)
    loaded = settings.load(path)
    assert loaded.mcp_servers == good
    assert "s3cret" not in repr(loaded) and "TOKEN" in repr(loaded)  # env values hold tokens

    for bad in ({"name": "x", "command": "a", "args": "-v"}, "npx", {"name": "x"}, [good[0], good[0]]):
        value = bad if isinstance(bad, list) else [bad]
        path.write_text(json.dumps({"schema_version": 2, "mcp_servers": value, "theme": "dark"}), encoding="utf-8")
        with caplog.at_level(logging.WARNING, logger="app.settings"):
            loaded = settings.load(path)
        assert loaded.mcp_servers == [] and loaded.theme == "dark"  # one bad field falls back, the rest loads
        assert "mcp_servers must" in caplog.text
        caplog.clear()
    path.write_text(json.dumps({"schema_version": 2, "mcp_servers": {"files": {}}}), encoding="utf-8")
    assert settings.load(path).mcp_servers == []


def test_tools_of_two_servers_get_unique_function_names() -> None:
    tools = [ToolInfo("web", "search", "Search the web.", {"type": "object", "properties": {"q": {"type": "string"}}}),
             ToolInfo("docs", "search", "Search my notes.", {}),
             ToolInfo("docs", "read.file", "Read a file.", {"type": "object"})]
    offered, named = openai_tools(tools)
    assert list(named) == ["web__search", "docs__search", "read_file"]
    assert offered[1] == {"type": "function", "function": {"name": "docs__search", "description": "Search my notes.",
                                                           "parameters": {"type": "object", "properties": {}}}}
    assert named["read_file"].name == "read.file"
