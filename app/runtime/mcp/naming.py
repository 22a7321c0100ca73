"""MCP tools as OpenAI function tools, with names that stay unique across servers.

OpenAI function names are 1-64 of ``[A-Za-z0-9_-]``. A tool keeps its own name when no other
chosen server has one like it (what the model reads is then what the server's author wrote); two
servers that both have ``search`` give ``web__search`` and ``docs__search``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

_BAD = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class ToolInfo:
    server: str
    name: str  # the server's own name for the tool
    description: str
    parameters: dict[str, Any]  # its input JSON schema

    def to_dict(self) -> dict[str, Any]:
        return {"server": self.server, "name": self.name, "description": self.description, "parameters": self.parameters}


def _clean(text: str) -> str:
    return _BAD.sub("_", text)[:64] or "tool"


def function_names(tools: list[ToolInfo]) -> dict[str, ToolInfo]:
    """The function name each tool is offered under -> the tool."""
    counts = Counter(_clean(t.name) for t in tools)
    named: dict[str, ToolInfo] = {}
    for tool in tools:
        name = _clean(tool.name)
        if counts[name] > 1 or name in named:
            name = _clean(f"{tool.server}__{tool.name}")
        base, n = name, 2
        while name in named:  # still taken (odd names that clean to the same text)
            name = f"{base[:60]}_{n}"
            n += 1
        named[name] = tool
    return named


def openai_tools(tools: list[ToolInfo]) -> tuple[list[dict[str, Any]], dict[str, ToolInfo]]:
    """``(tools for ChatParams, function name -> tool)``."""
    named = function_names(tools)
    offered = []
    for name, tool in named.items():
        schema = tool.parameters if isinstance(tool.parameters, dict) and tool.parameters else {"type": "object", "properties": {}}
        offered.append({"type": "function", "function": {"name": name, "description": tool.description, "parameters": schema}})
    return offered, named
