"""A stdio MCP server for the tests, written with the official SDK: tools that work, crash, hang,
fail and answer with a megabyte. Run as ``python mcp_server.py [stdio|http PORT]``; ``HEARTH_TEST_TOOLS=a,b`` offers only those tools."""

from __future__ import annotations

import os
import sys
import time

from mcp.server.mcpserver import MCPServer

server = MCPServer("hearth-test-tools")


@server.tool()
def add(a: int, b: int) -> str:
    """Add two whole numbers and return their sum."""
    return str(a + b)


@server.tool()
def weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny and 21 degrees in {city}."


@server.tool()
def crash() -> str:
    """Ends the server's process in the middle of the call."""
    print("about to crash: tool asked the process to exit", file=sys.stderr, flush=True)
    os._exit(3)


@server.tool()
def fail() -> str:
    """Raises an exception inside the tool."""
    raise RuntimeError("the tool broke")


@server.tool()
def hang() -> str:
    """Never answers (sleeps an hour)."""
    time.sleep(3600)
    return "late"


@server.tool()
def big() -> str:
    """Answers with one megabyte of text."""
    return "x" * 1_048_576


if __name__ == "__main__":
    only = os.environ.get("HEARTH_TEST_TOOLS")  # e.g. "weather": offer only these (a model then cannot pick "hang")
    if only:
        for tool in ("add", "weather", "crash", "fail", "hang", "big"):
            if tool not in only.split(","):
                server.remove_tool(tool)
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
