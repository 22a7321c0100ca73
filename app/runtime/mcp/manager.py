"""The running MCP servers of one worker: started when first needed, stopped with the worker.

The SDK is asyncio/anyio and a session lives inside the task that opened it, so the manager owns
one event loop on a thread of its own, and each server one task that holds its `mcp.Client` open
until it is stopped. Worker threads (the service's handlers) hand coroutines to that loop and
wait for them.

What a server does wrong stays a message about that server, and the rest goes on:

- it cannot be started, or does not finish MCP's handshake within `start_timeout_s`: listed as a
  problem, the other servers' tools are still offered;
- a tool does not answer within `call_timeout_s`: the call's result is an error that says so (the
  SDK sends the server a cancel); the server stays up for its other tools;
- the process dies: the call's result is an error with the tail of its stderr; the next use
  starts it again;
- a tool answers with megabytes: cut to `results.MAX_RESULT_CHARS` before it reaches the context.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from app.runtime.mcp.config import ServerConfig
from app.runtime.mcp.naming import ToolInfo
from app.runtime.mcp.results import MAX_RESULT_CHARS, ToolText, capped, tool_text

log = logging.getLogger(__name__)

T = TypeVar("T")
STDERR_TAIL = 600  # characters of a dead server's stderr quoted in its message
STDERR_LINES = 4  # ... from its last lines (what a dying process says last)


class McpNotConfirmed(ValueError):
    """A server whose command (or URL) no person has confirmed yet: it is never started."""

    def __init__(self, server: ServerConfig) -> None:
        super().__init__(f"MCP server {server.name!r} has not been confirmed to run: {server.display()}")
        self.server = server


@dataclass
class _Connection:
    config: ServerConfig
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    client: Any = None  # mcp.Client once the handshake is done
    task: asyncio.Task[None] | None = None
    errlog: IO[str] | None = None
    error: str | None = None  # why it stopped or never started
    tools: list[ToolInfo] | None = None

    @property
    def alive(self) -> bool:
        return self.client is not None and self.error is None and self.task is not None and not self.task.done()

    def stderr_tail(self) -> str:
        if self.errlog is None:
            return ""
        try:
            self.errlog.flush()
            self.errlog.seek(0)
            text = self.errlog.read()
        except (OSError, ValueError):
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return " / ".join(lines[-STDERR_LINES:])[-STDERR_TAIL:]


class McpManager:
    def __init__(self, *, start_timeout_s: float = 30.0, call_timeout_s: float = 60.0,
                 result_cap: int = MAX_RESULT_CHARS) -> None:
        self.start_timeout_s = start_timeout_s
        self.call_timeout_s = call_timeout_s
        self.result_cap = result_cap
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()
        self._conns: dict[str, _Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._failed: dict[str, str] = {}  # servers that stopped, and why (shown until they run again)
        self._closed = False

    # ---- called from worker threads -------------------------------------------------------------

    def submit(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run ``coro`` on the manager's loop; the returned future can be waited on or cancelled."""
        import concurrent.futures

        loop = self._ensure_loop()
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        return future  # type: ignore[return-value]

    def list_tools(self, servers: list[ServerConfig]) -> tuple[list[ToolInfo], dict[str, str]]:
        """Every tool of ``servers`` (started if needed), and ``{server: problem}`` for those that
        could not give theirs."""
        return self.submit(self.alist_tools(servers)).result()

    def call(self, server: ServerConfig, tool: str, arguments: dict[str, Any], *, timeout_s: float | None = None) -> ToolText:
        return self.submit(self.acall(server, tool, arguments, timeout_s=timeout_s)).result()

    def states(self) -> dict[str, dict[str, str]]:
        """``{name: {"state": "running" | "failed" | "starting", "message": ...}}`` of servers met so far."""
        found = {name: {"state": "stopped", "message": why} for name, why in list(self._failed.items())}
        for name, conn in list(self._conns.items()):
            state = "running" if conn.alive else "failed" if conn.error else "starting"
            found[name] = {"state": state, "message": conn.error or ""}
        return found

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop every server (the worker is exiting) and the loop."""
        with self._guard:
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop_all(), loop).result(timeout_s)
        except Exception:  # a server that will not stop must not keep the worker alive
            log.exception("MCP servers did not all stop cleanly")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._guard:
            if self._closed:
                raise RuntimeError("the MCP manager is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()
                    loop.close()

                self._thread = threading.Thread(target=run, name="hearth-mcp", daemon=True)
                self._thread.start()
                started.wait()
                self._loop = loop
            return self._loop

    # ---- on the loop ----------------------------------------------------------------------------

    async def alist_tools(self, servers: list[ServerConfig]) -> tuple[list[ToolInfo], dict[str, str]]:
        results = await asyncio.gather(*(self._tools_of(s) for s in servers), return_exceptions=True)
        tools: list[ToolInfo] = []
        problems: dict[str, str] = {}
        for server, found in zip(servers, results):
            if isinstance(found, BaseException):
                problems[server.name] = _words(found)
            else:
                tools.extend(found)
        return tools, problems

    async def _tools_of(self, server: ServerConfig) -> list[ToolInfo]:
        conn = await self._connected(server)
        if conn.tools is None:
            listed = await conn.client.list_tools()
            found = [ToolInfo(server.name, t.name, t.description or "", dict(t.input_schema or {})) for t in listed.tools]
            while listed.next_cursor:
                listed = await conn.client.list_tools(cursor=listed.next_cursor)
                found += [ToolInfo(server.name, t.name, t.description or "", dict(t.input_schema or {})) for t in listed.tools]
            conn.tools = found
        return list(conn.tools)

    async def acall(self, server: ServerConfig, tool: str, arguments: dict[str, Any], *, timeout_s: float | None = None) -> ToolText:
        """The tool's answer as capped text; every failure of the server is an error result whose
        text says what happened (the model and the person both read it)."""
        from mcp import MCPError
        from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        where = f"MCP server {server.name!r}"
        try:
            conn = await self._connected(server)
        except McpNotConfirmed:
            raise
        except Exception as exc:
            return capped(f"{where} could not start: {_words(exc)}", is_error=True)
        timeout = timeout_s if timeout_s is not None else self.call_timeout_s
        try:
            result = await conn.client.call_tool(tool, arguments, read_timeout_seconds=timeout)
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                return capped(f"Tool {tool!r} of {where} did not answer within {timeout:g} s; it was stopped.", is_error=True)
            if exc.code == CONNECTION_CLOSED or not conn.alive:
                await asyncio.sleep(0.2)  # let the reader see the process end, so stderr is complete
                conn.error = f"stopped while it ran {tool!r}"
                tail = conn.stderr_tail()
                await self._stop(conn)
                said = f" Its last words: {tail}" if tail else ""
                return capped(f"{where} stopped while it ran {tool!r} (it will be started again on the next call).{said}", is_error=True)
            return capped(f"{where} refused {tool!r}: {exc}", is_error=True)
        except Exception as exc:  # a malformed answer (validation), a transport error
            log.exception("MCP tool %s of %s failed", tool, server.name)
            return capped(f"{where} failed on {tool!r}: {_words(exc)}", is_error=True)
        return tool_text(result, cap=self.result_cap)

    async def _connected(self, server: ServerConfig) -> _Connection:
        if not server.confirmed:
            raise McpNotConfirmed(server)
        lock = self._locks.setdefault(server.name, asyncio.Lock())
        async with lock:
            conn = self._conns.get(server.name)
            if conn is not None and (conn.config.key() != server.key() or not conn.alive):
                await self._stop(conn)
                conn = None
            if conn is None:
                conn = _Connection(server)
                self._conns[server.name] = conn
                conn.task = asyncio.get_running_loop().create_task(self._serve(conn), name=f"mcp-{server.name}")
                try:
                    await asyncio.wait_for(conn.ready.wait(), self.start_timeout_s)
                except asyncio.TimeoutError:
                    conn.error = f"it did not finish MCP's start-up handshake within {self.start_timeout_s:g} s"
                if conn.error is not None:
                    error, tail = conn.error, conn.stderr_tail()
                    await self._stop(conn)
                    raise McpStartFailed(error + (f" (stderr: {tail})" if tail else ""))
                self._failed.pop(server.name, None)
            return conn

    async def _serve(self, conn: _Connection) -> None:
        """Hold the server's session open until `stop` is set; record why it ended."""
        from mcp import Client, Implementation

        try:
            async with AsyncExitStack() as stack:
                transport = await self._transport(conn, stack)
                client = Client(transport, client_info=Implementation(name="hearth", version="1"), cache=None)
                conn.client = await stack.enter_async_context(client)
                conn.ready.set()
                await conn.stop.wait()
        except asyncio.CancelledError:
            conn.error = conn.error or "stopped"
        except BaseException as exc:  # noqa: BLE001 - an ExceptionGroup from the SDK's task groups, too
            conn.error = conn.error or _words(exc)
            log.warning("MCP server %s ended: %s", conn.config.name, conn.error)
        finally:
            conn.error = conn.error or "stopped"
            conn.ready.set()

    async def _transport(self, conn: _Connection, stack: AsyncExitStack) -> Any:
        config = conn.config
        if config.command is not None:
            from mcp import StdioServerParameters
            from mcp.client.stdio import stdio_client

            conn.errlog = stack.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace"))
            params = StdioServerParameters(command=config.command, args=list(config.args), env=dict(config.env) or None)
            return stdio_client(params, errlog=conn.errlog)
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        http = await stack.enter_async_context(create_mcp_http_client(headers=dict(config.headers) or None))
        return streamable_http_client(str(config.url), http_client=http)

    async def _stop(self, conn: _Connection) -> None:
        conn.stop.set()
        task = conn.task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), 8)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                task.cancel()
            except Exception:  # already recorded in conn.error
                pass
        if self._conns.get(conn.config.name) is conn:
            del self._conns[conn.config.name]
            self._failed[conn.config.name] = conn.error or "stopped"

    async def _stop_all(self) -> None:
        await asyncio.gather(*(self._stop(c) for c in list(self._conns.values())), return_exceptions=True)


class McpStartFailed(RuntimeError):
    """A server that could not be started or did not finish the handshake."""


def _words(exc: BaseException) -> str:
    """An exception as a sentence; an ExceptionGroup by its innermost causes."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(_words(e) for e in exc.exceptions))
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"the command was not found ({exc.filename or text})"
    return text

