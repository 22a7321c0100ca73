"""The typed values the store hands out: plain frozen dataclasses, never sqlite rows.

Conversations are trees, not lists. Every message has a parent (the message it answers or
follows; `None` for the first one) and siblings that share that parent are *versions* of the same
turn: a regenerated reply, or an edited user message. Exactly one sibling is *active*; following
active children from the root gives the transcript the user sees. Switching a version therefore
also switches everything said after it, which is how "edit and re-run" stays recoverable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Role(str, Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class MessageState(str, Enum):
    COMPLETE = "complete"
    STREAMING = "streaming"  # text is still arriving; `recover()` turns leftovers into INTERRUPTED
    INTERRUPTED = "interrupted"  # stopped early (cancel, crash, killed app); the text is kept


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    created_at: float  # seconds since the epoch, UTC
    updated_at: float
    system_prompt: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # per-conversation generation settings
    model_id: str | None = None


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    parent_id: int | None
    position: int  # 0-based depth in the conversation; versions of one turn share it
    role: Role
    content: str
    state: MessageState
    meta: dict[str, Any]  # tokens, tokens/s, ttft, finish reason ... as the runtime reports them
    created_at: float
    active: bool = True  # the version shown among its siblings
    version: int = 1  # 1-based, in creation order among siblings ("2 / 3" in the UI)
    version_count: int = 1


@dataclass(frozen=True)
class ConversationSnapshot:
    """A whole conversation with every version of every message, parents before children.

    What `delete_conversation` returns so that `restore` can undo it with the same ids, and what
    JSON export and import are built on.
    """

    conversation: Conversation
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    title: str
    message_id: int  # may be an inactive version: `switch_version(message_id)` reveals it
    snippet: str
