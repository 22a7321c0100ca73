"""MCP server definitions: the settings' ``mcp_servers`` entries and the ``mcp.json`` shape.

LM Studio, Cursor and Claude Desktop share one file shape::

    {"mcpServers": {"name": {"command": "...", "args": [...], "env": {...}}
                            | {"url": "https://...", "headers": {...}}}}

Hearth keeps each server as one flat entry in its settings (``{"name", "command", "args", "env"}``
or ``{"name", "url", "headers"}``) plus ``confirmed``: a server imported from a file runs a command
someone else wrote, so it stays unconfirmed until a person has seen that command and said yes
(the studio's dialog, the CLI's prompt or ``--allow-tools``). Pure data: no SDK import, so the
settings loader can check entries with `entry_problem`.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,48}$")


class McpConfigError(ValueError):
    """An mcp.json file or an entry that cannot be used; the message names the server and field."""


@dataclass(frozen=True)
class ServerConfig:
    """One MCP server: a command run over stdio, or a Streamable HTTP URL."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    confirmed: bool = False  # a person saw the command (or URL) and allowed it to run

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"

    def display(self) -> str:
        """What a person confirms: the command line as a shell would read it, or the URL.
        Environment values are not shown (they often hold keys); their names are."""
        if self.command is None:
            return str(self.url)
        line = shlex.join([self.command, *self.args])
        if self.env:
            line = f"{' '.join(f'{k}=…' for k in sorted(self.env))} {line}"
        return line

    def key(self) -> str:
        """Identity of what runs: a changed command or URL is another server (restarted, asked again)."""
        return json.dumps([self.name, self.command, list(self.args), self.env, self.url, self.headers], sort_keys=True)

    def to_entry(self) -> dict[str, Any]:
        """The settings' flat entry (`from_entry` reads it back)."""
        entry: dict[str, Any] = {"name": self.name}
        if self.command is not None:
            entry.update(command=self.command, args=list(self.args), env=dict(self.env))
        else:
            entry.update(url=self.url, headers=dict(self.headers))
        entry["confirmed"] = self.confirmed
        return entry

    def with_confirmed(self, confirmed: bool = True) -> ServerConfig:
        return ServerConfig(self.name, self.command, self.args, dict(self.env), self.url, dict(self.headers), confirmed)


def entry_problem(entry: Any) -> str | None:
    """None when ``entry`` is a usable settings entry, else what is wrong (for the settings loader)."""
    try:
        from_entry(entry)
    except McpConfigError as exc:
        return str(exc)
    return None


def from_entry(entry: Any, *, name: str | None = None, confirmed: bool | None = None) -> ServerConfig:
    """A `ServerConfig` from a flat settings entry or one ``mcpServers`` value (``name`` given)."""
    if not isinstance(entry, dict):
        raise McpConfigError(f"server {name or '?'}: must be an object, not {type(entry).__name__}")
    name = name if name is not None else entry.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise McpConfigError(f"server name {name!r} must be 1-48 letters, digits, '_', '-' or '.'")
    where = f"server {name}"
    known = {"name", "command", "args", "env", "url", "headers", "confirmed", "type", "transport", "disabled"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise McpConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    command, url = entry.get("command"), entry.get("url")
    if (command is None) == (url is None):
        raise McpConfigError(f"{where}: needs either a command (stdio) or a url (Streamable HTTP), not {'both' if command else 'neither'}")
    args = entry.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise McpConfigError(f"{where}: args must be a list of texts")
    env, headers = entry.get("env") or {}, entry.get("headers") or {}
    for label, mapping in (("env", env), ("headers", headers)):
        if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
            raise McpConfigError(f"{where}: {label} must be an object of texts")
    if command is not None and (not isinstance(command, str) or not command.strip()):
        raise McpConfigError(f"{where}: command must be a non-empty text")
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        raise McpConfigError(f"{where}: url must start with http:// or https://")
    if command is not None and headers:
        raise McpConfigError(f"{where}: headers are for a url server, not a command")
    if url is not None and (args or env):
        raise McpConfigError(f"{where}: args and env are for a command, not a url server")
    flag = entry.get("confirmed", False) if confirmed is None else confirmed
    if not isinstance(flag, bool):
        raise McpConfigError(f"{where}: confirmed must be true or false")
    return ServerConfig(name, command, tuple(args), dict(env), url, dict(headers), flag)


def parse_mcp_json(text: str | bytes) -> list[ServerConfig]:
    """The servers of an ``mcp.json`` file, all unconfirmed (their commands are someone else's).

    Raises McpConfigError naming the first problem; a file with no servers is one too."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise McpConfigError(f"not a JSON file: {exc}") from None
    servers = raw.get("mcpServers") if isinstance(raw, dict) else None
    if not isinstance(servers, dict):
        raise McpConfigError('expected an object with "mcpServers": {"name": {"command", "args", "env"} or {"url", "headers"}}')
    if not servers:
        raise McpConfigError('"mcpServers" lists no server')
    found = []
    for name, entry in servers.items():
        if isinstance(entry, dict) and entry.get("disabled") is True:
            continue  # Claude Desktop and Cursor keep switched-off servers in the file
        found.append(from_entry({k: v for k, v in entry.items() if k not in ("type", "transport", "disabled")}
                                if isinstance(entry, dict) else entry, name=name, confirmed=False))
    return found


def merge(existing: list[ServerConfig], imported: list[ServerConfig]) -> list[ServerConfig]:
    """``existing`` plus ``imported``; an imported server replaces one of the same name, and stays
    confirmed only if what it runs did not change."""
    by_name = {s.name: s for s in existing}
    for server in imported:
        old = by_name.get(server.name)
        keep = old is not None and old.confirmed and old.key() == server.key()
        by_name[server.name] = server.with_confirmed(keep)
    return list(by_name.values())
