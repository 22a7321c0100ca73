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


class PartKind(str, Enum):
    """What a message part records beside a message's text (schema version 4).

    The data of each kind is a JSON object; the keys below are what Hearth writes and reads,
    and a part may carry more:

    - SOURCE: a document chunk the model was given for this reply: `n` (the number [n] markers
      in the reply refer to), `collection`, `file`, `page` and/or `line` (1-based, None when the
      format has none), `text`, `score`, and `whole` (true when the whole document went in).
    - TOOL_CALL: a call the model asked for, in the OpenAI shape: `id`, `name`, `arguments`
      (a JSON string).
    - TOOL_RESULT: what a tool answered: `tool_call_id`, `name`, `content`, `is_error`.
    """

    SOURCE = "source"
    TOOL_CALL = "tool_call"
    TOOL_RESULT = "tool_result"


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
class MessagePart:
    """One part of a message: `seq` orders a message's parts (0-based, in the order added)."""

    message_id: int
    seq: int
    kind: PartKind
    data: dict[str, Any]


@dataclass(frozen=True)
class ConversationSnapshot:
    """A whole conversation with every version of every message, parents before children.

    What `delete_conversation` returns so that `restore` can undo it with the same ids, and what
    JSON export and import are built on.
    """

    conversation: Conversation
    messages: tuple[Message, ...]
    parts: tuple[MessagePart, ...] = ()  # of any version, by message id then seq


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    title: str
    message_id: int  # may be an inactive version: `switch_version(message_id)` reveals it
    snippet: str
