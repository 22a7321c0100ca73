"""A tool's answer as text for the model's context, cut to a cap before it gets there.

A server may answer with megabytes (a file, a web page, a database dump). The model's context is
a few thousand tokens, and every character of a result is paid for in it, so the text is cut at
`MAX_RESULT_CHARS` with a note saying how much was left out; images and other binary blocks are
named, never pasted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_RESULT_CHARS = 16_000  # about 4k tokens: half of SmolLM2's context, a small share of a big model's


@dataclass(frozen=True)
class ToolText:
    text: str  # what goes into the conversation (cut, with a note when it was)
    is_error: bool
    chars: int  # the full length before the cut
    truncated: bool


def block_text(block: Any) -> str:
    """One content block as text: text as it is, binary content named by type and size."""
    kind = getattr(block, "type", "")
    if kind == "text":
        return str(getattr(block, "text", ""))
    if kind in ("image", "audio"):
        data = str(getattr(block, "data", ""))
        return f"[{kind} {getattr(block, 'mime_type', '')}, {len(data) * 3 // 4:,} bytes, not shown]"
    if kind == "resource_link":
        return f"[resource {getattr(block, 'name', '')}: {getattr(block, 'uri', '')}]"
    if kind == "resource":
        resource = getattr(block, "resource", None)
        text = getattr(resource, "text", None)
        if isinstance(text, str):
            return text
        return f"[resource {getattr(resource, 'uri', '')} ({getattr(resource, 'mime_type', None) or 'binary'}), not shown]"
    return f"[{kind or 'unknown'} content, not shown]"


def tool_text(result: Any, *, cap: int = MAX_RESULT_CHARS) -> ToolText:
    """A `CallToolResult`'s content as capped text; ``structured_content`` stands in when a server
    sends no content blocks."""
    parts = [block_text(b) for b in getattr(result, "content", None) or []]
    if not parts and getattr(result, "structured_content", None) is not None:
        parts = [json.dumps(result.structured_content, ensure_ascii=False)]
    return capped("\n".join(parts), is_error=bool(getattr(result, "is_error", False)), cap=cap)


def capped(text: str, *, is_error: bool = False, cap: int = MAX_RESULT_CHARS) -> ToolText:
    if len(text) <= cap:
        return ToolText(text, is_error, len(text), False)
    note = f"\n[result cut: {cap:,} of {len(text):,} characters shown]"
    return ToolText(text[:cap] + note, is_error, len(text), True)
