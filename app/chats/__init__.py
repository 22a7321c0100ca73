"""The conversation store: every chat Hearth has had, in one SQLite file.

Qt-free and torch-free (standard library only) so that the GUI process can own it and a worker
crash never touches it. The studio opens it with `open_history(paths().chats_db)`, which moves a
damaged file aside, salvages it and keeps daily backups (`opening`, `salvage`, `backups`);
`ChatStore(path)` is the store itself; see `store` for the operations and `schema` for durability
choices.
"""

from __future__ import annotations

from app.chats.errors import (
    ChatImportError,
    ChatStoreError,
    DatabaseDamaged,
    DatabaseUnreadable,
    InvalidOperation,
    NotFound,
    SchemaTooNew,
)
from app.chats.models import (
    Conversation,
    ConversationSnapshot,
    Message,
    MessagePart,
    MessageState,
    PartKind,
    Role,
    SearchHit,
)
from app.chats.opening import open_history
from app.chats.schema import SCHEMA_VERSION
from app.chats.store import ChatStore

__all__ = [
    "SCHEMA_VERSION",
    "ChatImportError",
    "ChatStore",
    "ChatStoreError",
    "Conversation",
    "ConversationSnapshot",
    "DatabaseDamaged",
    "DatabaseUnreadable",
    "InvalidOperation",
    "Message",
    "MessagePart",
    "MessageState",
    "NotFound",
    "PartKind",
    "Role",
    "SchemaTooNew",
    "SearchHit",
    "open_history",
]
