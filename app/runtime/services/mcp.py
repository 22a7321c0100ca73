"""MCP servers as protocol methods: ``mcp.servers``, ``mcp.tools``, ``mcp.call``, ``mcp.import``.

The studio and the CLI run the tool loop themselves (a chat answers with ``tool_calls``; the
person approves; ``mcp.call`` runs it; the result goes back into the next chat request), so a tool
runs only when a person's client asks for it. The HTTP API never sends these methods: a request
to ``/v1/chat/completions`` with ``tools`` gets the model's calls back and runs nothing.

Servers come from the settings' ``mcp_servers`` or, for ``hearth chat --mcp-config FILE``, from the
request's ``config`` (flat entries, `app.runtime.mcp.config`). A server nobody confirmed is never
started: asking for it is an ``invalid_params`` error that shows its command.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from typing import Any

from app.runtime.jobs import JobContext, MethodSpec, Mode
from app.runtime.mcp.config import McpConfigError, ServerConfig, from_entry
from app.runtime.protocol import ErrorKind, Method, RuntimeFailure

MCP_SERVERS = Method.MCP_SERVERS.value
MCP_TOOLS = Method.MCP_TOOLS.value
MCP_CALL = Method.MCP_CALL.value
MCP_IMPORT = Method.MCP_IMPORT.value


@dataclass(frozen=True)
class McpServersParams:
    config: list[dict[str, Any]] | None = None  # flat server entries; None = the settings' mcp_servers


@dataclass(frozen=True)
class McpServersResult:
    servers: list[dict[str, Any]]  # name, transport, display, confirmed, state, message


@dataclass(frozen=True)
class McpToolsParams:
    servers: list[str] = field(default_factory=list)  # names to use; empty = every confirmed server
    config: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class McpToolsResult:
    tools: list[dict[str, Any]]  # OpenAI function tools, ready for a chat's ``tools``
    functions: dict[str, dict[str, str]]  # function name -> {"server", "tool"}
    problems: dict[str, str]  # server -> why its tools are missing (the others are still offered)


@dataclass(frozen=True)
class McpCallParams:
    server: str
    tool: str  # the server's own name for the tool (``functions[name]["tool"]``)
    arguments: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None  # None = the manager's default (60 s)
    config: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class McpCallResult:
    text: str  # what goes back to the model, cut to the cap
    is_error: bool
    chars: int  # the whole answer's length before the cut
    truncated: bool


@dataclass(frozen=True)
class McpImportParams:
    text: str  # an mcp.json file's text
    existing: list[dict[str, Any]] | None = None  # the entries it is merged into; None = the settings'


@dataclass(frozen=True)
class McpImportResult:
    servers: list[dict[str, Any]]  # the merged entries, for the caller to save (the worker never writes settings)
    imported: list[str]  # names read from the file (all unconfirmed unless their command is unchanged)


class McpService:
    def __init__(self, manager: Any = None) -> None:
        self._manager = manager  # an McpManager; made when first needed (no SDK import before)

    @property
    def manager(self) -> Any:
        if self._manager is None:
            from app.runtime.mcp.manager import McpManager

            self._manager = McpManager()
        return self._manager

    def servers(self, params: McpServersParams) -> list[ServerConfig]:
        if params.config is not None:
            raw = params.config
        else:
            from app import settings as settings_module

            raw = settings_module.load().mcp_servers
        try:
            return [from_entry(entry) for entry in raw]
        except McpConfigError as exc:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"MCP servers: {exc}") from None

    def list_servers(self, params: McpServersParams, ctx: JobContext) -> McpServersResult:
        states = self._manager.states() if self._manager is not None else {}
        rows = []
        for server in self.servers(params):
            state = states.get(server.name, {"state": "stopped", "message": ""})
            rows.append({"name": server.name, "transport": server.transport, "display": server.display(),
                         "confirmed": server.confirmed, **state})
        return McpServersResult(rows)

    def _chosen(self, names: list[str], config: list[dict[str, Any]] | None) -> list[ServerConfig]:
        known = {s.name: s for s in self.servers(McpServersParams(config))}
        missing = [n for n in names if n not in known]
        if missing:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"no MCP server named {', '.join(map(repr, missing))} "
                                 f"(configured: {', '.join(known) or 'none'})")
        chosen = [known[n] for n in names] if names else [s for s in known.values() if s.confirmed]
        unconfirmed = [s for s in chosen if not s.confirmed]
        if unconfirmed:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "; ".join(
                f"MCP server {s.name!r} has not been confirmed to run: {s.display()}" for s in unconfirmed)
                + ". Confirm it in the studio, or pass --allow-tools to hearth chat.")
        return chosen

    def tools(self, params: McpToolsParams, ctx: JobContext) -> McpToolsResult:
        from app.runtime.mcp.naming import openai_tools

        chosen = self._chosen(params.servers, params.config)
        ctx.progress("starting MCP servers", done=0, total=len(chosen), unit="servers")
        found, problems = self._wait(self.manager.submit(self.manager.alist_tools(chosen)), ctx)
        offered, named = openai_tools(found)
        functions = {name: {"server": t.server, "tool": t.name} for name, t in named.items()}
        return McpToolsResult(offered, functions, problems)

    def call(self, params: McpCallParams, ctx: JobContext) -> McpCallResult:
        (server,) = self._chosen([params.server], params.config)
        timeout = params.timeout_s
        if timeout is not None and not 0 < timeout <= 3600:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'timeout_s' must be above 0 and at most 3600")
        ctx.progress("running tool", message=f"{params.tool} on {server.name}")
        out = self._wait(self.manager.submit(self.manager.acall(server, params.tool, dict(params.arguments), timeout_s=timeout)), ctx)
        return McpCallResult(out.text, out.is_error, out.chars, out.truncated)

    @staticmethod
    def _wait(future: concurrent.futures.Future[Any], ctx: JobContext) -> Any:
        """The coroutine's result; a cancel of the request cancels it on the manager's loop."""
        while True:
            try:
                return future.result(timeout=0.1)
            except concurrent.futures.TimeoutError:
                if ctx.cancelled:
                    future.cancel()
                    ctx.check("the tool call was cancelled")

    def import_json(self, params: McpImportParams, ctx: JobContext) -> McpImportResult:
        """Read an mcp.json and merge it into the servers: nothing runs, nothing is saved here."""
        from app.runtime.mcp.config import merge, parse_mcp_json

        try:
            imported = parse_mcp_json(params.text)
        except McpConfigError as exc:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"This is not an mcp.json Hearth can read: {exc}") from None
        existing = self.servers(McpServersParams(params.existing))
        return McpImportResult([s.to_entry() for s in merge(existing, imported)], [s.name for s in imported])

    def methods(self) -> list[MethodSpec[Any, Any]]:
        return [
            MethodSpec(MCP_SERVERS, McpServersParams, McpServersResult, Mode.QUICK, self.list_servers),
            MethodSpec(MCP_TOOLS, McpToolsParams, McpToolsResult, Mode.BACKGROUND, self.tools),
            MethodSpec(MCP_CALL, McpCallParams, McpCallResult, Mode.BACKGROUND, self.call),
            MethodSpec(MCP_IMPORT, McpImportParams, McpImportResult, Mode.QUICK, self.import_json),
        ]

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
